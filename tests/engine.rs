//! The batch engine and the supervisor, end to end: the real `pgbackfill run` binary against the
//! real primary + streaming standby, each test in its own database with its own jobs directory.
//!
//! Every test checks the rows themselves, not only what the daemon says about them: jobs use
//! `set: {n: n + 1}` on rows starting at `n = 0`, so "every row exactly once" is `all n = 1`.
//! Waits are polls with deadlines, never sleeps; "nothing changed" is shown by state (the job's
//! row and cursors) across rounds of the daemon's own activity, not by a fixed window.

mod common;

use std::process::ExitStatus;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use common::daemon::{Daemon, JobsDir, cli, daemon_ticks, wait_state};
use common::{TestDb, cluster, wait_until};

/// Deadline for a job (or a daemon) to finish. Generous: 2 cores shared with other test binaries.
const DEADLINE: Duration = Duration::from_secs(90);
/// Deadline for a state change the daemon reacts to within a scan or a batch.
const REACT: Duration = Duration::from_secs(30);

/// A fresh database with `setup` applied.
async fn database(setup: &str) -> (TestDb, PgPool) {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(AssertSqlSafe(setup.to_string())).execute(&pool).await.unwrap_or_else(|e| panic!("setup: {e}"));
    (db, pool)
}

/// `(n, rows with that n)` over a table, ascending: `[(1, N)]` means every row updated exactly once.
async fn histogram(pool: &PgPool, table: &str) -> Vec<(i32, i64)> {
    sqlx::query_as(AssertSqlSafe(format!("SELECT n, count(*) FROM {table} GROUP BY n ORDER BY n")))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("histogram of {table}: {e}"))
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A job as the progress table records it, ranges summed.
#[derive(Debug, Clone)]
struct JobInfo {
    state: String,
    rows_updated: i64,
    rows_scanned: i64,
    leftover_rows: Option<i64>,
    last_error: Option<String>,
    ranges: i64,
    ranges_done: i64,
    /// Ranges some daemon currently holds.
    owned: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    paused_seconds: f64,
}

/// `None` before the daemon created the progress schema or registered the job.
async fn job(pool: &PgPool, name: &str) -> Option<JobInfo> {
    type Row = (String, i64, i64, Option<i64>, Option<String>, i64, i64, i64, chrono::DateTime<chrono::Utc>, f64);
    let row: Option<Row> = sqlx::query_as(
        "SELECT j.state, coalesce(sum(r.rows_updated), 0)::int8, coalesce(sum(r.rows_scanned), 0)::int8, \
         j.leftover_rows, j.last_error, count(r.range_no), count(r.range_no) FILTER (WHERE r.done), \
         count(r.owner), j.created_at, j.paused_seconds \
         FROM pgbackfill.jobs j LEFT JOIN pgbackfill.ranges r ON r.job = j.name WHERE j.name = $1 GROUP BY j.name",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    row.map(|r| JobInfo {
        state: r.0,
        rows_updated: r.1,
        rows_scanned: r.2,
        leftover_rows: r.3,
        last_error: r.4,
        ranges: r.5,
        ranges_done: r.6,
        owned: r.7,
        created_at: r.8,
        paused_seconds: r.9,
    })
}

async fn job_now(pool: &PgPool, name: &str) -> JobInfo {
    job(pool, name).await.unwrap_or_else(|| panic!("job {name} is not in the progress table"))
}

/// Wait until the job has updated at least `rows` rows.
async fn wait_progress(pool: &PgPool, name: &str, rows: i64, daemon: &Daemon) {
    let start = std::time::Instant::now();
    loop {
        let j = job(pool, name).await;
        if j.as_ref().is_some_and(|j| j.rows_updated >= rows) {
            return;
        }
        if start.elapsed() > REACT {
            panic!("job {name} did not update {rows} rows within {REACT:?} (now {j:?}); log:\n{}", daemon.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until no daemon holds any range of the job: its workers have stopped writing.
async fn wait_released(pool: &PgPool, name: &str, daemon: &Daemon) {
    let start = std::time::Instant::now();
    loop {
        let j = job(pool, name).await;
        if j.as_ref().is_some_and(|j| j.owned == 0) {
            return;
        }
        if start.elapsed() > REACT {
            panic!("job {name} still holds ranges after {REACT:?} ({j:?}); log:\n{}", daemon.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The job stands still, shown by state rather than by a sleep: across several rounds of the
/// daemon's own activity ([`daemon_ticks`]: its lag polls, gate decisions and scans), the job's
/// state row, every range's cursor, owner and epoch, and the rows changed in `table` stay exactly
/// as they were. Returns the rows changed (`n <> 0`).
async fn assert_still(pool: &PgPool, name: &str, table: &str) -> i64 {
    let snapshot = || async {
        let ranges: (String, Option<String>, i64) = sqlx::query_as(
            "SELECT j.state, string_agg(format('%s/%s/%s/%s', r.range_no, r.cursor, r.owner, r.epoch), ' ' \
             ORDER BY r.range_no), coalesce(sum(r.rows_updated), 0)::int8 \
             FROM pgbackfill.jobs j LEFT JOIN pgbackfill.ranges r ON r.job = j.name WHERE j.name = $1 GROUP BY j.state",
        )
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("state of {name}: {e}"));
        (ranges, count(pool, &format!("SELECT count(*) FROM {table} WHERE n <> 0")).await)
    };
    let before = snapshot().await;
    for round in 0..5 {
        daemon_ticks(pool, 2, REACT).await;
        let now = snapshot().await;
        assert_eq!(now, before, "job {name} moved (after {} rounds of daemon activity)", round + 1);
    }
    before.1
}

/// Wait for the daemon to exit by itself. The wait blocks this test's (single-threaded) runtime,
/// which is fine: nothing else of the test needs to run meanwhile.
fn exit_of(daemon: &mut Daemon) -> ExitStatus {
    daemon.wait_exit(DEADLINE)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_cli(url: &str, args: &[&str]) -> String {
    let out = cli(url, args);
    assert!(
        out.status.success(),
        "pgbackfill {args:?} failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// `pgbackfill status --json` for one job.
fn status_json(url: &str, name: &str) -> serde_json::Value {
    let text = run_cli(url, &["status", "--json", name]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status --json: {e}:\n{text}"));
    v["jobs"].as_array().and_then(|a| a.first()).cloned().unwrap_or_else(|| panic!("no status for {name}:\n{text}"))
}

/// A job spec: `n = n + 1` on `table`, batches of `size` rows, plus any further YAML lines.
fn spec(name: &str, table: &str, size: i64, extra: &str) -> String {
    format!(
        "name: {name}\ntable: {table}\nset:\n  n: n + 1\nbatch:\n  size: {size}\n  min_size: 1\n{}",
        extra.trim_start_matches('\n')
    )
}

/// A slow job (5 rows a batch, 100ms apart) for tests that act while it runs.
fn slow(name: &str, table: &str) -> String {
    spec(name, table, 5, "  pause: 100ms\n")
}

// ----- 1. keys of every shape -----

#[tokio::test]
async fn composite_text_timestamptz_and_uuid_keys_update_every_row_exactly_once() {
    // A collation where case and accents sort differently from bytes, when the server has ICU.
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    let icu: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu')")
        .fetch_one(&pool)
        .await
        .unwrap();
    let collate = if icu { r#"COLLATE "und-x-icu""# } else { "" };
    let setup = format!(
        r#"
        CREATE TABLE items (order_id uuid, line_no int, n int NOT NULL DEFAULT 0, PRIMARY KEY (order_id, line_no));
        INSERT INTO items (order_id, line_no)
            SELECT o, l FROM (SELECT gen_random_uuid() AS o FROM generate_series(1, 60)) s, generate_series(-2, 2) l;

        CREATE TABLE words (w text {collate} PRIMARY KEY, n int NOT NULL DEFAULT 0);
        -- Mixed case, accents, ß/ss, CJK, emoji, and characters that need quoting in a text[] cursor.
        INSERT INTO words (w)
            SELECT s || CASE WHEN g = 0 THEN '' ELSE g::text END
            FROM unnest(ARRAY['a', 'A', 'b', 'B', 'é', 'É', 'e', 'E', 'ß', 'ss', 'Straße', 'strasse', 'ü', 'Ü',
                              'z', 'Z', '日本', '😀', '', ' ', 'a b', 'a,b', '"q"', '{{x}}', 'NULL', '\',
                              'x''y', 'Ωmega', 'ωmega', 'ǅ']) s,
                 generate_series(0, 9) g
            ON CONFLICT DO NOTHING;

        CREATE TABLE events (at timestamptz PRIMARY KEY, n int NOT NULL DEFAULT 0);
        -- Microseconds, a DST change in most zones, BC, and ±infinity: every text form must round-trip.
        INSERT INTO events (at)
            SELECT '2024-03-30 23:00:00.123456+00'::timestamptz + g * interval '7 minutes 0.000001 seconds'
            FROM generate_series(0, 296) g;
        INSERT INTO events (at) VALUES ('infinity'), ('-infinity'), ('0044-03-15 12:00:00.5+00 BC'),
            ('2024-03-31 01:00:00.999999+00');

        CREATE TABLE tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), n int NOT NULL DEFAULT 0);
        INSERT INTO tokens (n) SELECT 0 FROM generate_series(1, 300);
        "#
    );
    sqlx::raw_sql(AssertSqlSafe(setup)).execute(&pool).await.unwrap();
    if icu {
        // The walk must follow the column's collation, which here differs from byte order.
        let icu_order: Vec<String> =
            sqlx::query_scalar("SELECT w FROM words ORDER BY w").fetch_all(&pool).await.unwrap();
        let byte_order: Vec<String> =
            sqlx::query_scalar(r#"SELECT w FROM words ORDER BY w COLLATE "C""#).fetch_all(&pool).await.unwrap();
        assert_ne!(icu_order, byte_order, "the test data must be collation-sensitive");
    }
    let tables = ["items", "words", "events", "tokens"];
    let mut sizes = Vec::new();
    for t in tables {
        sizes.push(count(&pool, &format!("SELECT count(*) FROM {t}")).await);
    }
    assert!(sizes.iter().all(|&s| s >= 250), "{sizes:?}");

    let jobs = JobsDir::new();
    // Several ranges too: their boundaries are key values of each type, sampled in key order.
    jobs.write("items", &spec("items", "items", 7, "key: [order_id, line_no]\nconcurrency: 3\n"));
    jobs.write("words", &spec("words", "words", 7, "concurrency: 3\n"));
    jobs.write("events", &spec("events", "events", 7, "concurrency: 2\n"));
    jobs.write("tokens", &spec("tokens", "tokens", 7, ""));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    let status = exit_of(&mut daemon);
    assert_eq!(status.code(), Some(0), "all jobs completed; log:\n{}", daemon.log());

    for (t, size) in tables.iter().zip(sizes) {
        assert_eq!(histogram(&pool, t).await, vec![(1, size)], "table {t}");
        let j = job_now(&pool, t).await;
        assert_eq!(j.state, "completed", "{t}: {j:?}");
        assert_eq!((j.rows_updated, j.rows_scanned), (size, size), "{t}: {j:?}");
        assert!(j.last_error.is_none(), "{t}: {j:?}");
        assert_eq!(j.ranges > 1, *t != "tokens", "{t}: {j:?}");
    }
}

// ----- 2. sparse keys, several ranges -----

#[tokio::test]
async fn sparse_keys_split_into_ranges_and_every_row_is_done() {
    let (db, pool) = database(
        "CREATE TABLE sparse (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO sparse (id) SELECT g FROM generate_series(1, 100) g
             UNION ALL SELECT 1000000000 + g FROM generate_series(0, 100) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("sparse", &spec("sparse", "sparse", 7, "concurrency: 3\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());

    assert_eq!(histogram(&pool, "sparse").await, vec![(1, 201)]);
    let j = job_now(&pool, "sparse").await;
    assert_eq!(j.state, "completed");
    assert!(j.ranges > 1, "sparse keys with concurrency 3 must be planned as several ranges: {j:?}");
    assert_eq!(j.ranges_done, j.ranges);
    assert_eq!(j.rows_updated, 201);
    // The ranges tile the key space: each starts where the previous one ends, the last at the max key.
    let ranges: Vec<(Option<Vec<String>>, Vec<String>, i64)> = sqlx::query_as(
        "SELECT lower_bound, upper_bound, rows_updated FROM pgbackfill.ranges WHERE job = 'sparse' ORDER BY range_no",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(ranges[0].0, None);
    for w in ranges.windows(2) {
        assert_eq!(w[1].0.as_ref(), Some(&w[0].1), "{ranges:?}");
    }
    assert_eq!(ranges.last().unwrap().1, vec!["1000000100".to_string()]);
    assert!(ranges.iter().all(|r| r.2 > 0), "quantile boundaries give every range work: {ranges:?}");
}

// ----- 3, 4. nothing to do -----

#[tokio::test]
async fn an_empty_table_completes() {
    let (db, pool) = database("CREATE TABLE empty (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);").await;
    let jobs = JobsDir::new();
    jobs.write("empty", &spec("empty", "empty", 7, "concurrency: 2\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
    let j = job_now(&pool, "empty").await;
    assert_eq!((j.state.as_str(), j.rows_updated, j.ranges), ("completed", 0, 0), "{j:?}");
}

#[tokio::test]
async fn a_where_matching_nothing_completes_without_changing_a_row() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 200) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("nothing", &spec("nothing", "t", 7, "where: n < 0\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
    assert_eq!(histogram(&pool, "t").await, vec![(0, 200)]);
    let j = job_now(&pool, "nothing").await;
    assert_eq!(j.state, "completed");
    assert_eq!((j.rows_updated, j.rows_scanned, j.leftover_rows), (0, 200, Some(0)), "{j:?}");
}

// ----- 5. a row lock ahead of the cursor -----

#[tokio::test]
async fn a_row_lock_ahead_makes_batches_retry_on_lock_timeout_until_released() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 200) g;",
    )
    .await;
    // Another session holds row 150 before the job starts: the job reaches it mid-way.
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SET application_name = 'row-holder'").execute(&mut holder).await.unwrap();
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut holder).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM t WHERE id = 150 FOR UPDATE").execute(&mut *tx).await.unwrap();

    let jobs = JobsDir::new();
    jobs.write("locked", &spec("locked", "t", 10, "timeouts:\n  lock: 200ms\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_until(REACT, "a lock_timeout retry recorded in last_error", || async {
        job(&pool, "locked").await.and_then(|j| j.last_error).is_some_and(|e| e.contains("lock_timeout"))
    })
    .await;
    // A few more failed attempts; the job must neither complete nor skip the locked slice.
    wait_until(REACT, "several lock_timeout retries in the log", || async {
        daemon.log().matches("lock_timeout").count() >= 3
    })
    .await;
    let j = job_now(&pool, "locked").await;
    assert_eq!(j.state, "running", "{j:?}");
    // Nothing at or past the locked row is done, and what is done is a prefix (nothing skipped).
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE id >= 150 AND n <> 0").await, 0);
    let done = count(&pool, "SELECT count(*) FROM t WHERE n = 1").await;
    assert!(done > 0, "the slices before the locked row were done");
    assert_eq!(count(&pool, &format!("SELECT count(*) FROM t WHERE id <= {done} AND n = 1")).await, done);
    let shown = run_cli(&db.url, &["status", "locked"]);
    assert!(shown.contains("lock_timeout"), "status shows the retry cause:\n{shown}");
    // ... and who holds the lock: pid, application, how long its transaction has been open.
    assert!(shown.contains(&format!("blocked by pid {holder_pid}, application \"row-holder\"")), "{shown}");
    assert!(shown.contains("idle in transaction, transaction open"), "{shown}");

    tx.rollback().await.unwrap();
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
    assert_eq!(histogram(&pool, "t").await, vec![(1, 200)]);
    let j = job_now(&pool, "locked").await;
    assert_eq!((j.state.as_str(), j.rows_updated), ("completed", 200), "{j:?}");
    assert_eq!(j.last_error, None, "a retried error that went away is not shown on a completed job");
    let _ = holder.close().await;
}

// ----- 6, 8. a permanent error fails one job, not the others -----

#[tokio::test]
async fn a_permanent_error_fails_its_job_while_another_completes() {
    let (db, pool) = database(
        "CREATE TABLE a (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO a (id) SELECT g FROM generate_series(1, 100) g;
         CREATE TABLE b (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO b (id) SELECT g FROM generate_series(1, 300) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("a", "name: divide\ntable: a\nset:\n  n: n / 0\nbatch:\n  size: 7\n  min_size: 1\n");
    jobs.write("b", &spec("fine", "b", 7, ""));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(exit_of(&mut daemon).code(), Some(1), "a failed job: non-zero; log:\n{}", daemon.log());

    let a = job_now(&pool, "divide").await;
    assert_eq!(a.state, "failed", "{a:?}");
    assert!(a.last_error.as_deref().is_some_and(|e| e.contains("division by zero")), "{a:?}");
    assert_eq!(histogram(&pool, "a").await, vec![(0, 100)], "the failed batch rolled back");
    let b = job_now(&pool, "fine").await;
    assert_eq!((b.state.as_str(), b.rows_updated), ("completed", 300), "{b:?}");
    assert_eq!(histogram(&pool, "b").await, vec![(1, 300)]);

    let text = run_cli(&db.url, &["status"]);
    let line = text.lines().find(|l| l.starts_with("divide ")).unwrap_or_else(|| panic!("no divide line:\n{text}"));
    assert!(line.contains("failed") && text.contains("last error: division by zero"), "{text}");
    assert!(!text.contains("at line"), "no server source positions in errors:\n{text}");
    let json = status_json(&db.url, "divide");
    assert_eq!(json["state"], "failed", "{json}");
    assert!(json["last_error"].as_str().is_some_and(|e| e.contains("division by zero")), "{json}");
    assert!(daemon.log().contains("divide (failed)"), "the exit names the failed job:\n{}", daemon.log());
}

#[tokio::test]
async fn a_job_failed_on_a_check_constraint_resumes_once_the_cause_is_fixed() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0, CONSTRAINT small CHECK (id < 100 OR n = 0));
         INSERT INTO t (id) SELECT g FROM generate_series(1, 200) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("checked", &spec("checked", "t", 7, ""));
    // Without --exit-when-done: the daemon must still be there when the job is resumed.
    let mut daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_state(&pool, "checked", "failed", DEADLINE, Some(&daemon)).await;
    // The failed range is given back (a range kept here would be renewed forever, never resumed).
    wait_released(&pool, "checked", &daemon).await;
    let j = job_now(&pool, "checked").await;
    assert!(j.last_error.as_deref().is_some_and(|e| e.contains("small")), "names the constraint: {j:?}");
    // Every slice before the violating row was done, nothing at or after it.
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE id >= 100 AND n <> 0").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE n = 1").await, j.rows_updated);

    sqlx::query("ALTER TABLE t DROP CONSTRAINT small").execute(&pool).await.unwrap();
    assert!(run_cli(&db.url, &["resume", "checked"]).contains("checked: running"));
    wait_state(&pool, "checked", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(histogram(&pool, "t").await, vec![(1, 200)], "exactly once across the failure");
    let j = job_now(&pool, "checked").await;
    assert_eq!((j.rows_updated, j.last_error.as_deref()), (200, None), "{j:?}");
    daemon.terminate();
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
}

// ----- 7, 8. operator control from the CLI -----

#[tokio::test]
async fn pause_stops_writing_and_resume_finishes_the_job() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 250) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("slow", &slow("slow", "t"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_progress(&pool, "slow", 10, &daemon).await;

    assert!(run_cli(&db.url, &["pause", "slow"]).contains("slow: paused"));
    wait_state(&pool, "slow", "paused", REACT, Some(&daemon)).await;
    // The job was paused before this instant and resumes after the resume command starts: at
    // least this long, whatever the machine's speed.
    let seen_paused = std::time::Instant::now();
    wait_released(&pool, "slow", &daemon).await;
    let before = assert_still(&pool, "slow", "t").await;
    assert!(before < 250, "paused before the end: {before}");
    assert_eq!(job_now(&pool, "slow").await.rows_updated, before);
    assert_eq!(status_json(&db.url, "slow")["state"], "paused");

    let paused_for = seen_paused.elapsed().as_secs_f64();
    assert!(run_cli(&db.url, &["resume", "slow"]).contains("slow: running"));
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
    assert_eq!(histogram(&pool, "t").await, vec![(1, 250)], "exactly once across the pause");
    let j = job_now(&pool, "slow").await;
    assert_eq!((j.state.as_str(), j.rows_updated), ("completed", 250));
    // 50 ms of slack for the two clocks (the database's and this process's).
    assert!(j.paused_seconds >= paused_for - 0.05, "time paused is accounted ({paused_for:.2}s seen): {j:?}");
}

#[tokio::test]
async fn cancel_ends_the_job_and_the_daemon_exits_non_zero() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 250) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("slow", &slow("slow", "t"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_progress(&pool, "slow", 10, &daemon).await;

    assert!(run_cli(&db.url, &["cancel", "slow"]).contains("slow: cancelled"));
    assert_eq!(exit_of(&mut daemon).code(), Some(1), "a cancelled job: non-zero; log:\n{}", daemon.log());
    let j = job_now(&pool, "slow").await;
    assert_eq!(j.state, "cancelled");
    let hist = histogram(&pool, "t").await;
    assert!(hist.iter().all(|(n, _)| *n == 0 || *n == 1), "{hist:?}");
    let done = count(&pool, "SELECT count(*) FROM t WHERE n = 1").await;
    assert_eq!(done, j.rows_updated);
    assert!(done < 250, "cancelled before the end");
    // The keyset walk went in order: done rows are a prefix.
    assert_eq!(count(&pool, &format!("SELECT count(*) FROM t WHERE id <= {done} AND n = 1")).await, done);
    // Cancelled is for good.
    let out = cli(&db.url, &["resume", "slow"]);
    assert!(!out.status.success(), "resuming a cancelled job must be refused");
}

#[tokio::test]
async fn reset_starts_the_job_over_with_fresh_progress() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 200) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("slow", &slow("slow", "t"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_progress(&pool, "slow", 10, &daemon).await;
    // Pause first so the rows done before the reset are known exactly.
    run_cli(&db.url, &["pause", "slow"]);
    wait_released(&pool, "slow", &daemon).await;
    let first = job_now(&pool, "slow").await;
    let done_before = count(&pool, "SELECT count(*) FROM t WHERE n = 1").await;
    assert_eq!(first.rows_updated, done_before);

    assert!(run_cli(&db.url, &["reset", "--yes", "slow"]).contains("starts over"));
    wait_until(REACT, "the job registered again", || async {
        job(&pool, "slow").await.is_some_and(|j| j.created_at > first.created_at)
    })
    .await;
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
    let j = job_now(&pool, "slow").await;
    assert_eq!(j.state, "completed");
    assert_eq!(j.rows_updated, 200, "counted again from 0, not {} + 200", done_before);
    // Started over from the first key: rows done before the reset were updated again.
    assert_eq!(histogram(&pool, "t").await, vec![(1, 200 - done_before), (2, done_before)]);
}

// ----- 9. verification -----

#[tokio::test]
async fn a_set_that_does_not_fix_the_where_is_reported_not_silently_done() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, flag boolean, other int);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 120) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write(
        "wrong",
        "name: wrong\ntable: t\nset:\n  other: '1'\nwhere: flag IS NULL\nbatch:\n  size: 7\n  min_size: 1\n",
    );
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    // The job ran to its end but did not do what `where` says: not a success for a pipeline.
    assert_eq!(exit_of(&mut daemon).code(), Some(1), "log:\n{}", daemon.log());
    assert!(daemon.log().contains("wrong (completed, 120 rows still match where)"), "{}", daemon.log());
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE other = 1").await, 120);
    let j = job_now(&pool, "wrong").await;
    assert_eq!((j.state.as_str(), j.rows_updated, j.leftover_rows), ("completed", 120, Some(120)), "{j:?}");
    let text = run_cli(&db.url, &["status"]);
    assert!(text.contains("still match"), "{text}");
    let json = status_json(&db.url, "wrong");
    assert_eq!(json["verified"], false, "{json}");
    assert_eq!(json["leftover_rows"], 120, "{json}");
    assert!(daemon.log().contains("still match"), "{}", daemon.log());
}

// ----- 10. a change of meaning is refused, a change of tuning accepted -----

#[tokio::test]
async fn changing_a_running_jobs_set_is_refused_and_tuning_is_accepted() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 300) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("job", &slow("meaning", "t"));
    // Without --exit-when-done: a refused job counts as ended, and this test goes on after it.
    let mut daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_progress(&pool, "meaning", 10, &daemon).await;

    jobs.write("job", &slow("meaning", "t").replace("n + 1", "n + 100"));
    wait_until(REACT, "the daemon to refuse the new meaning", || async {
        let log = daemon.log();
        log.contains("job `meaning`")
            && log.contains("already has progress")
            && log.contains("rename the job")
            && log.contains("pgbackfill reset meaning")
    })
    .await;
    wait_released(&pool, "meaning", &daemon).await;
    // No batch runs while the spec's meaning is refused.
    assert_still(&pool, "meaning", "t").await;
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE n > 1").await, 0, "the new `set` never ran");
    assert_eq!(job_now(&pool, "meaning").await.state, "running", "the job itself is left as it was");
    // ... but `status` does not call it running: it shows the refusal and its reason.
    let json = status_json(&db.url, "meaning");
    assert_eq!(json["state"], "refused", "{json}");
    assert!(json["refused"]["reason"].as_str().is_some_and(|r| r.contains("set changed")), "{json}");
    assert!(run_cli(&db.url, &["status"]).contains("refused since"), "text status shows the refusal");

    // Back to the recorded meaning, with a different batch size: accepted, and used.
    jobs.write("job", &spec("meaning", "t", 40, "  pause: 10ms\n"));
    wait_state(&pool, "meaning", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(histogram(&pool, "t").await, vec![(1, 300)]);
    let size: Option<i64> = sqlx::query_scalar("SELECT batch_size FROM pgbackfill.ranges WHERE job = 'meaning'")
        .fetch_one(&pool)
        .await
        .unwrap();
    // The throttle slows a job down by pausing between batches, never by resizing them.
    assert_eq!(size, Some(40), "the new batch size was used");
    daemon.terminate();
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "graceful shutdown; log:\n{}", daemon.log());
}

#[tokio::test]
async fn after_a_refused_meaning_change_reset_runs_the_new_meaning() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 100) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("job", &spec("remedy", "t", 30, ""));
    let daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_state(&pool, "remedy", "completed", DEADLINE, Some(&daemon)).await;
    let first = job_now(&pool, "remedy").await;

    jobs.write("job", &spec("remedy", "t", 30, "").replace("n + 1", "n + 10"));
    wait_until(REACT, "the daemon to refuse the new meaning", || async {
        daemon.log().contains("pgbackfill reset remedy")
    })
    .await;
    assert_eq!(histogram(&pool, "t").await, vec![(1, 100)], "a completed job is not re-run with a new meaning");
    run_cli(&db.url, &["reset", "--yes", "remedy"]);
    wait_until(DEADLINE, "the new meaning to run to completion", || async {
        job(&pool, "remedy").await.is_some_and(|j| j.created_at > first.created_at && j.state == "completed")
    })
    .await;
    assert_eq!(histogram(&pool, "t").await, vec![(11, 100)]);
}

#[tokio::test]
async fn a_tuning_change_while_running_restarts_workers_with_the_new_settings() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 400) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("job", &slow("tuned", "t"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_progress(&pool, "tuned", 10, &daemon).await;
    jobs.write("job", &spec("tuned", "t", 60, "  pause: 10ms\n"));
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
    assert!(daemon.log().contains("spec changed: restarting"), "{}", daemon.log());
    assert_eq!(histogram(&pool, "t").await, vec![(1, 400)]);
    let j = job_now(&pool, "tuned").await;
    assert_eq!((j.state.as_str(), j.rows_updated), ("completed", 400));
}

// ----- 11. the upper bound is fixed at start -----

#[tokio::test]
async fn rows_inserted_above_the_initial_max_key_are_left_to_the_application() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 200) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("bounded", &slow("bounded", "t"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_progress(&pool, "bounded", 5, &daemon).await;
    // The job is planned (it has progress): its upper bound is today's max key, 200. Rows written
    // from now on are the application's to fill (dual writes); the backfill must not chase them.
    sqlx::query("INSERT INTO t (id) SELECT g FROM generate_series(201, 260) g").execute(&pool).await.unwrap();
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());

    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE id <= 200 AND n = 1").await, 200);
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE id > 200 AND n = 0").await, 60);
    let upper: Vec<String> = sqlx::query_scalar("SELECT upper_bound FROM pgbackfill.ranges WHERE job = 'bounded'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(upper, vec!["200".to_string()]);
    assert_eq!(job_now(&pool, "bounded").await.rows_updated, 200);
}

// ----- 12, 8. a broken spec file does not stop the others -----

#[tokio::test]
async fn an_invalid_spec_file_does_not_stop_the_good_job() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 150) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("broken", "name: broken\ntable: [t\nset:\n  n: 1\n");
    jobs.write("good", &spec("good", "t", 7, ""));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(exit_of(&mut daemon).code(), Some(1), "an invalid spec: non-zero; log:\n{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("invalid spec") && log.contains("broken.yaml"), "{log}");
    assert_eq!(histogram(&pool, "t").await, vec![(1, 150)]);
    assert_eq!(job_now(&pool, "good").await.state, "completed");
    assert!(job(&pool, "broken").await.is_none());
}

// ----- control reaches workers held by the throttle; hopeless timeouts fail the job -----

/// A job held by the throttle (here: more standbys required than exist, so it never writes) still
/// obeys `pause` and `cancel` at once: its workers stop and release their ranges, and a daemon with
/// `--exit-when-done` exits instead of waiting forever on a worker that is parked on the gate.
#[tokio::test]
async fn pause_and_cancel_reach_a_throttled_job() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 100) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("held", &spec("held", "t", 10, "throttle:\n  min_replicas: 5\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_until(REACT, "the held job owns its range", || async {
        job(&pool, "held").await.is_some_and(|j| j.owned == 1)
    })
    .await;
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE n <> 0").await, 0, "a held job wrote");

    assert!(run_cli(&db.url, &["pause", "held"]).contains("held: paused"));
    wait_until(REACT, "the paused job's range released", || async {
        job(&pool, "held").await.is_some_and(|j| j.owned == 0)
    })
    .await;

    assert!(run_cli(&db.url, &["cancel", "held"]).contains("held: cancelled"));
    assert_eq!(exit_of(&mut daemon).code(), Some(1), "log:\n{}", daemon.log());
    let j = job_now(&pool, "held").await;
    assert_eq!((j.state.as_str(), j.owned, j.rows_updated), ("cancelled", 0, 0), "{j:?}");
}

/// A batch that exceeds `timeouts.statement` even at `batch.min_size` (a slow per-statement
/// trigger) is halved down to the minimum, retried a few times, then fails the job with a hint
/// instead of retrying forever behind a "running" state.
#[tokio::test]
async fn statement_timeouts_at_min_size_fail_the_job_with_a_hint() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 50) g;
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
         CREATE TRIGGER slow BEFORE UPDATE ON t FOR EACH STATEMENT EXECUTE FUNCTION slow();",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("slow", &spec("slow", "t", 8, "timeouts:\n  statement: 200ms\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(exit_of(&mut daemon).code(), Some(1), "log:\n{}", daemon.log());
    let j = job_now(&pool, "slow").await;
    assert_eq!((j.state.as_str(), j.rows_updated), ("failed", 0), "{j:?}");
    let error = j.last_error.unwrap_or_default();
    assert!(error.contains("batch.min_size") && error.contains("timeouts.statement"), "{error}");
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE n <> 0").await, 0);
}

/// Credentials never show: a password in the database URL (trust auth ignores it, so the job runs)
/// appears in no daemon log line, no `status` output (text or JSON), no `check` output and no
/// `/metrics` sample.
#[tokio::test]
async fn the_password_never_appears_in_logs_status_or_metrics() {
    const SECRET: &str = "Zq7-never-print-me";
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 50) g;",
    )
    .await;
    let url = db.url.replacen("postgres@", &format!("postgres:{SECRET}@"), 1);
    assert!(url.contains(SECRET), "{url}");
    let jobs = JobsDir::new();
    jobs.write("secret", &spec("secret", "t", 10, ""));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&url, jobs.path(), &["--metrics-addr", &addr]);
    wait_state(&pool, "secret", "completed", DEADLINE, Some(&daemon)).await;
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    assert!(metrics.contains("pgbackfill_rows_updated_total"), "{metrics}");
    daemon.terminate();
    assert_eq!(exit_of(&mut daemon).code(), Some(0));
    let outputs = [
        ("daemon log", daemon.log()),
        ("metrics", metrics),
        ("status", run_cli(&url, &["status"])),
        ("status --json", run_cli(&url, &["status", "--json"])),
        ("check", {
            let out = cli(&url, &["check", jobs.path().to_str().unwrap()]);
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        }),
    ];
    for (what, text) in outputs {
        assert!(!text.is_empty(), "{what} is empty");
        assert!(!text.contains(SECRET), "{what} shows the password:\n{text}");
    }
    // The log does name the database: host:port/database as user.
    assert!(daemon.log().contains("database=127.0.0.1:") && daemon.log().contains(" as postgres"), "{}", daemon.log());
}

// ----- issue 9: batches shrink while the application waits on their locks -----

/// The batch size the range row recorded for the last batch.
async fn last_batch_size(pool: &PgPool, job: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT batch_size FROM pgbackfill.ranges WHERE job = $1")
        .bind(job)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .flatten()
}

/// Another session keeps updating rows just ahead of the job's cursor, one short transaction at a
/// time, as an application touching recent rows would: it queues behind the batches' row locks, so
/// batches must shrink (halved per batch somebody waited on). Once it stops, the batches grow back
/// to their configured size. Every row is still updated exactly once.
#[tokio::test]
async fn batches_shrink_while_others_wait_on_their_locks_and_grow_back_after() {
    const SIZE: i64 = 2_000;
    let (db, pool) = database(
        "CREATE TABLE hot (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0, hits int NOT NULL DEFAULT 0);
         INSERT INTO hot (id) SELECT g FROM generate_series(1, 300000) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("hot", &spec("hot", "hot", SIZE, "  pause: 20ms\n"));
    let daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_until(REACT, "full-size batches", || async { last_batch_size(&pool, "hot").await == Some(SIZE) }).await;

    // The application: row `cursor + 20`, the next batch's, again and again.
    let stop = tokio_util::sync::CancellationToken::new();
    let app = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = sqlx::query(
                    "UPDATE hot SET hits = hits + 1 WHERE id = (SELECT coalesce(cursor[1]::int8, 0) + 20 \
                     FROM pgbackfill.ranges WHERE job = 'hot')",
                )
                .execute(&pool)
                .await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    wait_until(REACT, "batches shrunk to a quarter or less", || async {
        last_batch_size(&pool, "hot").await.is_some_and(|s| s <= SIZE / 4)
    })
    .await;
    let shrunk = last_batch_size(&pool, "hot").await;
    stop.cancel();
    app.await.unwrap();
    assert!(job_now(&pool, "hot").await.rows_updated < 300_000, "the job must still be running");

    wait_until(REACT, "batches back to their configured size", || async {
        last_batch_size(&pool, "hot").await == Some(SIZE)
    })
    .await;
    eprintln!("batch size: {SIZE} → {shrunk:?} while the app waited → {SIZE} after");
    wait_state(&pool, "hot", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(histogram(&pool, "hot").await, vec![(1, 300_000)]);
}

/// `throttle.max_rate` is a hard cap on rows per second, for the whole job (two ranges here).
#[tokio::test]
async fn max_rate_caps_rows_per_second() {
    let (db, pool) = database(
        "CREATE TABLE capped (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO capped (id) SELECT g FROM generate_series(1, 3000) g;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("capped", &spec("capped", "capped", 1000, "throttle:\n  max_rate: 1000\nconcurrency: 2\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
    let secs: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(r.updated_at) - min(j.started_at))::float8 \
         FROM pgbackfill.jobs j JOIN pgbackfill.ranges r ON r.job = j.name WHERE j.name = 'capped'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // 3,000 rows at 1,000 rows/s: the last batch commits after at least ~2 s of waiting.
    assert!(secs >= 1.8, "3,000 rows in {secs:.2}s is over max_rate 1000/s; log:\n{}", daemon.log());
    assert_eq!(histogram(&pool, "capped").await, vec![(1, 3000)]);
}

// ----- issue 9: a range worker's batches run on one backend -----

/// A database with `table` (`rows` rows of `n = 0`) whose every UPDATE statement records the
/// backend that ran it in `batch_backends (at, pid)`.
async fn database_noting_backends(table: &str, rows: i64) -> (TestDb, PgPool) {
    database(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO {table} (id) SELECT g FROM generate_series(1, {rows}) g;
         CREATE TABLE batch_backends (at timestamptz NOT NULL DEFAULT clock_timestamp(), pid int NOT NULL);
         CREATE FUNCTION public.note_backend() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO public.batch_backends (pid) VALUES (pg_backend_pid()); RETURN NULL; END $$;
         CREATE TRIGGER note_backend AFTER UPDATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION public.note_backend();"
    ))
    .await
}

#[tokio::test]
async fn consecutive_batches_of_a_range_run_on_one_connection() {
    // A statement-level trigger records the backend of every batch's UPDATE. The pool hands out
    // its idle connections in turn, so batches that each took one from it ran on several backends,
    // each with cold caches; the worker keeps its own between batches.
    let (db, pool) = database_noting_backends("onebackend", 600).await;
    let jobs = JobsDir::new();
    // 30 batches, and a lag poll every 200 ms: the controller and the supervisor use and return
    // pooled connections the whole time, so the pool has several idle ones to hand out.
    // No throttle: a loaded standby may lag, and a throttle hold may outlast the kept connection.
    jobs.write("onebackend", &spec("onebackend", "onebackend", 20, "  pause: 20ms\nthrottle: {max_lag: 1h}\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
    assert_eq!(histogram(&pool, "onebackend").await, vec![(1, 600)]);

    let batches = count(&pool, "SELECT count(*) FROM batch_backends").await;
    assert!(batches >= 30, "600 rows in batches of 20 are at least 30 UPDATEs, the trigger saw {batches}");
    let backends: Vec<(i32, i64)> =
        sqlx::query_as("SELECT pid, count(*) FROM batch_backends GROUP BY pid ORDER BY min(at)")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        backends.len(),
        1,
        "one range, no errors: every batch on the worker's connection; (pid, batches): {backends:?}"
    );
}

#[tokio::test]
async fn a_kept_connection_ended_between_batches_is_replaced_without_a_failed_batch() {
    // The worker keeps its connection between batches; when the server ends that session while
    // it is idle (a restart, pg_terminate_backend), the next batch must not fail on it.
    let (db, pool) = database_noting_backends("ended", 300).await;
    let jobs = JobsDir::new();
    // 30 batches 300 ms apart: the connection is kept (idle under a second) and idle nearly always.
    jobs.write("ended", &spec("ended", "ended", 10, "  pause: 300ms\nthrottle: {max_lag: 1h}\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    // End the worker's session three times, each while it waits between batches.
    let mut ended: Vec<i32> = Vec::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while ended.len() < 3 && std::time::Instant::now() < deadline {
        let pid: Option<i32> = sqlx::query_scalar(
            // CASE: AND does not fix the order its operands are evaluated in.
            "SELECT a.pid FROM pg_stat_activity a
             WHERE CASE WHEN a.pid = (SELECT pid FROM batch_backends ORDER BY at DESC LIMIT 1) AND a.state = 'idle'
                        THEN pg_terminate_backend(a.pid) ELSE false END",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(pid) = pid
            && !ended.contains(&pid)
        {
            ended.push(pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(exit_of(&mut daemon).code(), Some(0), "log:\n{}", daemon.log());
    assert_eq!(ended.len(), 3, "the worker's session was never idle to end: {ended:?}; log:\n{}", daemon.log());
    assert_eq!(histogram(&pool, "ended").await, vec![(1, 300)]);
    let log = daemon.log();
    assert!(!log.contains("batch failed"), "a session ended while idle made a batch fail:\n{log}");
    let j = job_now(&pool, "ended").await;
    assert_eq!((j.state.as_str(), j.rows_updated), ("completed", 300), "{j:?}");
}
