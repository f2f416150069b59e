//! Issue 11, end to end with the real daemon on the real primary + standby: low-traffic windows
//! (`schedule`) and the steps that run once a job is completed and verified (`then`).
//!
//! Waits are polls with deadlines. "Nothing happened" is asserted on every poll up to the moment
//! something is allowed to happen (a window opening), never after a bare sleep.

mod common;

use std::time::Duration;

use chrono::{DateTime, DurationRound, Timelike, Utc};
use std::io::{Read, Write};

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use common::daemon::{Daemon, JobsDir, cli, wait_state};
use common::{TestDb, cluster};

/// Deadline for a job to finish. Generous: 2 cores shared with other test binaries.
const DEADLINE: Duration = Duration::from_secs(90);

async fn database(setup: &str) -> (TestDb, PgPool) {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(AssertSqlSafe(setup.to_string())).execute(&pool).await.unwrap_or_else(|e| panic!("setup: {e}"));
    (db, pool)
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `pgbackfill status --json` for one job.
fn status_json(url: &str, name: &str) -> serde_json::Value {
    let out = cli(url, &["status", "--json", name]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "status failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status --json: {e}:\n{text}"));
    v["jobs"].as_array().and_then(|a| a.first()).cloned().unwrap_or_else(|| panic!("no status for {name}:\n{text}"))
}

/// `pgbackfill status` as a person reads it.
fn status_text(url: &str) -> String {
    let out = cli(url, &["status"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ----- schedule -----

#[tokio::test]
async fn outside_its_window_a_job_writes_nothing_and_starts_when_the_window_opens() {
    let (db, pool) = database(
        "CREATE TABLE s (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO s (id) SELECT generate_series(1, 300);",
    )
    .await;
    // Windows have minute granularity: the next minute boundary at least 20 s away opens the
    // window, read on Berlin's wall clock (the day named, so day names are exercised too).
    let now = Utc::now();
    let mut opens: DateTime<Utc> =
        now.duration_trunc(chrono::Duration::minutes(1)).unwrap() + chrono::Duration::minutes(1);
    if opens - now < chrono::Duration::seconds(20) {
        opens += chrono::Duration::minutes(1);
    }
    let tz = chrono_tz::Europe::Berlin;
    let (from, to) = (opens.with_timezone(&tz), (opens + chrono::Duration::minutes(30)).with_timezone(&tz));
    let window =
        format!("{} {:02}:{:02}-{:02}:{:02}", from.format("%a"), from.hour(), from.minute(), to.hour(), to.minute());
    let jobs = JobsDir::new();
    jobs.write(
        "s",
        &format!(
            "name: sched\ntable: s\nset:\n  n: n + 1\nbatch:\n  size: 50\n  min_size: 1\n\
             schedule:\n  timezone: Europe/Berlin\n  windows: [\"{window}\"]\n"
        ),
    );
    let port = free_port();
    let daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &format!("127.0.0.1:{port}")]);
    wait_state(&pool, "sched", "running", Duration::from_secs(15), Some(&daemon)).await;

    // Held, and saying until when, with nothing written on any poll before the window opens.
    let expected = format!("the next opens at {}", from.format("%Y-%m-%d %H:%M %Z"));
    let mut said_so = false;
    while Utc::now() < opens - chrono::Duration::milliseconds(500) {
        assert_eq!(count(&pool, "SELECT count(*) FROM s WHERE n <> 0").await, 0, "wrote outside its window");
        let written = count(
            &pool,
            "SELECT coalesce(sum(rows_updated), 0)::int8 + count(*) FILTER (WHERE cursor IS NOT NULL) \
             FROM pgbackfill.ranges WHERE job = 'sched'",
        )
        .await
        .max(0);
        assert_eq!(written, 0, "the cursor moved outside the window");
        if !said_so {
            let s = status_json(&db.url, "sched");
            if let Some(reason) = s["held_by"].as_str() {
                assert_eq!(s["state"], "held", "{s}");
                assert!(reason.contains("outside its schedule windows"), "{reason}");
                assert!(reason.contains(&expected), "`{expected}` not in `{reason}`");
                let text = status_text(&db.url);
                assert!(text.contains(&expected), "{text}");
                let metrics = scrape(port);
                assert!(metrics.contains(r#"pgbackfill_throttled{job="sched",reason="schedule"} 1"#), "{metrics}");
                said_so = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(said_so, "status never said the job is outside its window; log:\n{}", daemon.log());

    // The window opens: the job runs to completion.
    wait_state(&pool, "sched", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM s WHERE n = 1").await, 300);
    let first_batch: DateTime<Utc> = sqlx::query_scalar("SELECT started_at FROM pgbackfill.jobs WHERE name = 'sched'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let finished: DateTime<Utc> = sqlx::query_scalar("SELECT finished_at FROM pgbackfill.jobs WHERE name = 'sched'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(first_batch < opens, "planned while held (planning only reads)");
    assert!(finished >= opens, "finished at {finished}, before the window opened at {opens}");
}

// ----- then -----

/// `t(id, c)` with `rows` rows whose `c` is NULL: the job sets it and then makes it NOT NULL.
const TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY, c text, d text);
     INSERT INTO t (id) SELECT generate_series(1, 200);";

fn then_spec(name: &str, then: &str, extra: &str) -> String {
    format!(
        "name: {name}\ntable: t\nset:\n  c: \"'x'\"\nwhere: c IS NULL\nbatch:\n  size: 50\n  min_size: 1\n\
         then_lock_timeout: 1s\nthen:\n{then}{extra}"
    )
}

/// `(step, state, attempts, detail)` of a job's steps, in order.
async fn steps(pool: &PgPool, job: &str) -> Vec<(String, String, i32, Option<String>)> {
    sqlx::query_as("SELECT step, state, attempts, detail FROM pgbackfill.steps WHERE job = $1 ORDER BY step_no")
        .bind(job)
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

/// Polls until `f` holds for the job's steps; panics with them and the daemon log after `deadline`.
async fn wait_steps<F>(pool: &PgPool, job: &str, deadline: Duration, daemon: &Daemon, what: &str, f: F)
where
    F: Fn(&[(String, String, i32, Option<String>)]) -> bool,
{
    let start = std::time::Instant::now();
    loop {
        let s = steps(pool, job).await;
        if f(&s) {
            return;
        }
        if start.elapsed() > deadline {
            panic!("{what}: not reached within {deadline:?}; steps: {s:#?}\nlog:\n{}", daemon.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_of<'a>(s: &'a [(String, String, i32, Option<String>)], step: &str) -> Option<&'a str> {
    s.iter().find(|r| r.0 == step).map(|r| r.1.as_str())
}

/// `(attnotnull, helper constraints left)` for column `c` of `t`.
async fn not_null_and_helpers(pool: &PgPool, column: &str) -> (bool, i64) {
    let not_null: bool =
        sqlx::query_scalar("SELECT attnotnull FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = $1")
            .bind(column)
            .fetch_one(pool)
            .await
            .unwrap();
    let helpers =
        count(pool, "SELECT count(*) FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'c'").await;
    (not_null, helpers)
}

const ALL_FOUR: [&str; 4] =
    ["not_null(c):add_check", "not_null(c):validate_check", "not_null(c):set_not_null", "not_null(c):drop_check"];

#[tokio::test]
async fn not_null_ends_with_the_column_not_null_and_no_helper_left() {
    let (db, pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    jobs.write("nn", &then_spec("nn", "  - not_null: c\n", ""));
    // --exit-when-done waits for the steps too: the daemon exits 0 only once they are all done.
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    let status = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "daemon exited with {status}; log:\n{}", daemon.log());
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE c = 'x'").await, 200);
    assert_eq!(not_null_and_helpers(&pool, "c").await, (true, 0), "c NOT NULL and no helper check left");
    let s = steps(&pool, "nn").await;
    let names: Vec<&str> = s.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ALL_FOUR);
    assert!(s.iter().all(|r| r.1 == "done" && r.2 == 1), "{s:#?}");
    let text = status_text(&db.url);
    assert!(text.contains("then not_null(c):add_check") && text.contains("not_null(c):drop_check"), "{text}");
    let json = status_json(&db.url, "nn");
    assert_eq!(json["steps"].as_array().map(Vec::len), Some(4), "{json}");
    assert_eq!(json["steps"][3]["state"], "done", "{json}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /metrics` over plain HTTP/1.0; the body.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// An open transaction that has read `t`: it holds ACCESS SHARE on it until committed. The backfill's
/// UPDATEs and VALIDATE do not conflict with that; ADD CONSTRAINT and SET NOT NULL do.
async fn reader_holding_t(url: &str) -> PgConnection {
    let mut a = PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM t").execute(&mut a).await.expect("BEGIN; SELECT");
    a
}

#[tokio::test]
async fn a_conflicting_lock_makes_the_step_retry_and_nobody_queues_behind_it_longer_than_the_lock_timeout() {
    let (db, pool) = database(TABLE).await;
    let mut a = reader_holding_t(&db.url).await;
    let port = free_port();
    let jobs = jobs_with("lk");
    let daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &format!("127.0.0.1:{port}")]);

    // The backfill runs (row locks only); ADD CONSTRAINT waits 1 s for its lock, gives up, retries.
    wait_steps(&pool, "lk", DEADLINE, &daemon, "add_check retried", |s| {
        s.first().is_some_and(|r| r.2 >= 2 && r.3.as_deref().is_some_and(|d| d.contains("not granted within 1s")))
    })
    .await;
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE c = 'x'").await, 200, "the backfill itself ran");
    let text = status_text(&db.url);
    let line = text.lines().find(|l| l.contains("not_null(c):add_check")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("attempts)") && line.contains("not granted within 1s"), "{text}");
    let metrics = scrape(port);
    let waiting = r#"pgbackfill_step_state{job="lk",step="not_null(c):add_check",state="waiting"} 1"#;
    let running = r#"pgbackfill_step_state{job="lk",step="not_null(c):add_check",state="running"} 1"#;
    assert!(metrics.contains(waiting) || metrics.contains(running), "{metrics}");

    // A third session: whenever the DDL is queued for its lock, a plain SELECT queues behind it, but
    // only until the DDL's lock timeout (1 s) ends its wait; session A holds its lock all along.
    let mut c = PgConnection::connect(&db.url).await.expect("connect");
    let mut waits: Vec<Duration> = Vec::new();
    let start = std::time::Instant::now();
    while waits.iter().filter(|w| **w > Duration::from_millis(200)).count() < 2 {
        assert!(start.elapsed() < DEADLINE, "never saw the DDL queued; waits {waits:?}; log:\n{}", daemon.log());
        let queued = count(
            &pool,
            "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted",
        )
        .await;
        if queued == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let t0 = std::time::Instant::now();
        sqlx::query("SELECT count(*) FROM t").execute(&mut c).await.expect("third session's SELECT");
        waits.push(t0.elapsed());
    }
    let longest = waits.iter().max().copied().unwrap_or_default();
    assert!(
        longest < Duration::from_millis(2500),
        "a session waited {longest:?} behind the DDL (lock timeout 1s): {waits:?}"
    );

    // Session A ends: the steps go through.
    sqlx::raw_sql("COMMIT").execute(&mut a).await.expect("COMMIT");
    wait_steps(&pool, "lk", DEADLINE, &daemon, "all steps done", |s| s.len() == 4 && s.iter().all(|r| r.1 == "done"))
        .await;
    assert_eq!(not_null_and_helpers(&pool, "c").await, (true, 0));
    eprintln!("third session waits behind the queued DDL: {waits:?}");
}

/// A jobs directory with one job: backfill `c`, then `not_null: c`.
fn jobs_with(name: &str) -> JobsDir {
    let jobs = JobsDir::new();
    jobs.write(name, &then_spec(name, "  - not_null: c\n", ""));
    jobs
}

#[tokio::test]
async fn after_kill_9_between_steps_the_job_resumes_at_the_right_step() {
    // The helper check is already there (as if a previous run added it): step 1 finds it and does
    // nothing. Session A's ACCESS SHARE lets VALIDATE through and holds SET NOT NULL.
    let (db, pool) = database(&format!(
        "{TABLE}\nALTER TABLE t ADD CONSTRAINT pgbackfill_c_not_null CHECK (c IS NOT NULL) NOT VALID;"
    ))
    .await;
    let mut a = reader_holding_t(&db.url).await;
    let jobs = jobs_with("k9");
    let mut first = Daemon::start(&db.url, jobs.path(), &[]);
    wait_steps(&pool, "k9", DEADLINE, &first, "validate done, SET NOT NULL waiting", |s| {
        state_of(s, ALL_FOUR[1]) == Some("done") && s.get(2).is_some_and(|r| r.2 >= 1 && r.1 == "waiting")
    })
    .await;
    let finished = |pool: PgPool| async move {
        let rows: Vec<(String, i32, chrono::DateTime<Utc>)> = sqlx::query_as(
            "SELECT step, attempts, finished_at FROM pgbackfill.steps WHERE job = 'k9' AND state = 'done' ORDER BY step_no",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows
    };
    let before = finished(pool.clone()).await;
    first.kill9();
    let attempts_before = steps(&pool, "k9").await[2].2;

    let second = Daemon::start(&db.url, jobs.path(), &[]);
    wait_steps(&pool, "k9", DEADLINE, &second, "the new daemon retries SET NOT NULL", |s| {
        s.get(2).is_some_and(|r| r.2 > attempts_before)
    })
    .await;
    assert_eq!(finished(pool.clone()).await, before, "a finished step ran again");
    sqlx::raw_sql("COMMIT").execute(&mut a).await.expect("COMMIT");
    wait_steps(&pool, "k9", DEADLINE, &second, "all steps done", |s| s.len() == 4 && s.iter().all(|r| r.1 == "done"))
        .await;
    let after = finished(pool.clone()).await;
    assert_eq!(after[..2], before[..], "steps 1 and 2 were not repeated");
    assert_eq!((before[0].1, before[1].1), (0, 1), "step 1 found its check already there; step 2 ran once");
    let s = steps(&pool, "k9").await;
    assert!(s[0].3.as_deref().is_some_and(|d| d.contains("already exists")), "{s:#?}");
    assert_eq!(not_null_and_helpers(&pool, "c").await, (true, 0));
}

#[tokio::test]
async fn a_step_that_cannot_succeed_fails_with_the_database_message_and_a_fix_and_resume_retries_it() {
    // `d` is never set by the job, so its rows stay NULL and VALIDATE must fail.
    let (db, pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    jobs.write("fl", &then_spec("fl", "  - not_null: c\n  - not_null: d\n", ""));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    let status = daemon.wait_exit(DEADLINE);
    assert!(!status.success(), "a failed step is not success; log:\n{}", daemon.log());
    let s = steps(&pool, "fl").await;
    let states: Vec<&str> = s.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(states, ["done", "done", "done", "done", "done", "failed", "pending", "pending"], "{s:#?}");
    let detail = s[5].3.clone().unwrap_or_default();
    assert!(detail.contains("is violated by some row"), "PostgreSQL's message: {detail}");
    assert!(detail.contains(r#"WHERE "d" IS NULL"#) && detail.contains("pgbackfill resume fl"), "a fix: {detail}");
    // The table is as valid as before: c is done, d still nullable, its data untouched.
    assert!(not_null_and_helpers(&pool, "c").await.0, "c is NOT NULL");
    assert!(!not_null_and_helpers(&pool, "d").await.0, "d is still nullable");
    assert_eq!(count(&pool, "SELECT count(*) FROM t WHERE d IS NULL").await, 200);
    let text = status_text(&db.url);
    assert!(text.contains("failed") && text.contains("fix:"), "{text}");

    // Fix the rows, resume: the failed step and the rest run.
    sqlx::query("UPDATE t SET d = 'y'").execute(&pool).await.unwrap();
    let out = cli(&db.url, &["resume", "fl"]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    let status = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "exit {status}; log:\n{}", daemon.log());
    assert_eq!(not_null_and_helpers(&pool, "d").await, (true, 0));
}

#[tokio::test]
async fn check_validates_then_against_the_catalog() {
    let (db, pool) = database(&format!(
        "{TABLE}
         ALTER TABLE t ADD COLUMN e text NOT NULL DEFAULT '';
         ALTER TABLE t ADD CONSTRAINT t_valid CHECK (id > 0);
         ALTER TABLE t ADD CONSTRAINT t_not_yet CHECK (id > 0) NOT VALID;"
    ))
    .await;
    let jobs = JobsDir::new();
    let file = jobs.write(
        "ck",
        &then_spec(
            "ck",
            "  - not_null: nope\n  - not_null: e\n  - validate_constraint: missing\n  - validate_constraint: t_valid\n\
             \x20 - validate_constraint: t_not_yet\n  - not_null: c\n",
            "",
        ),
    );
    let out = cli(&db.url, &["check", &file.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    for (field, message) in [
        ("then[0]", r#"column "nope" does not exist"#),
        ("then[1]", r#"column "e" is already NOT NULL"#),
        ("then[2]", r#"constraint "missing" does not exist"#),
        ("then[3]", r#"constraint "t_valid" is already valid"#),
    ] {
        assert!(text.lines().any(|l| l.contains(&format!(": {field}: ")) && l.contains(message)), "{field}: {text}");
    }
    assert!(!text.contains("then[4]") && !text.contains("then[5]"), "{text}");

    // A role that may update the table but does not own it: ALTER TABLE would fail.
    let role = format!("r_{}", db.name);
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE ROLE {role} LOGIN; GRANT SELECT, UPDATE ON t TO {role}")))
        .execute(&pool)
        .await
        .unwrap();
    let url = format!("postgres://{role}@127.0.0.1:{}/{}", cluster().await.primary_port(), db.name);
    let file = jobs.write("ck", &then_spec("ck", "  - not_null: c\n", ""));
    let out = cli(&url, &["check", &file.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text.lines().find(|l| l.contains(": then: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(&format!("role {role} does not own table \"public\".\"t\" (its owner is postgres)")),
        "{line}"
    );
    assert!(line.contains(&format!(r#"GRANT "postgres" TO "{role}""#)) && line.contains("OWNER TO"), "{line}");
}

#[tokio::test]
async fn then_steps_run_only_inside_the_schedule_windows() {
    // The window is open now and closes at the next minute boundary at least 25 s away. The job
    // completes inside it; session A's lock keeps the first step retrying until the window closes.
    let (db, pool) = database(TABLE).await;
    let mut a = reader_holding_t(&db.url).await;
    let now = Utc::now();
    let mut closes: DateTime<Utc> =
        now.duration_trunc(chrono::Duration::minutes(1)).unwrap() + chrono::Duration::minutes(1);
    if closes - now < chrono::Duration::seconds(25) {
        closes += chrono::Duration::minutes(1);
    }
    let opened = closes - chrono::Duration::minutes(10);
    let window = format!("{:02}:{:02}-{:02}:{:02}", opened.hour(), opened.minute(), closes.hour(), closes.minute());
    let jobs = JobsDir::new();
    jobs.write("win", &then_spec("win", "  - not_null: c\n", &format!("schedule:\n  windows: [\"{window}\"]\n")));
    let daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_state(&pool, "win", "completed", DEADLINE, Some(&daemon)).await;
    wait_steps(&pool, "win", DEADLINE, &daemon, "add_check retrying", |s| s.first().is_some_and(|r| r.2 >= 1)).await;
    assert!(Utc::now() < closes, "the test machine is too slow for this window");

    // The window closes while A still holds its lock: the step's next try finds the window closed.
    // (A try that started inside the window may wait out its lock timeout, like a batch in flight.)
    // Retries back off up to 30 s, so the hold shows within that (and a lock timeout) of the close.
    let until_closed = (closes - Utc::now()).to_std().unwrap_or_default();
    wait_steps(&pool, "win", until_closed + Duration::from_secs(60), &daemon, "held by the schedule", |s| {
        s.first().is_some_and(|r| r.3.as_deref().is_some_and(|d| d.contains("outside its schedule windows")))
    })
    .await;
    assert!(Utc::now() >= closes);
    // A lets go: only the schedule now stands between the step and its lock.
    sqlx::raw_sql("COMMIT").execute(&mut a).await.expect("COMMIT");
    // The runner re-records the hold every few seconds: across two such rounds after the release
    // (not a sleep), the step neither ran nor tried.
    let updated = || async {
        let at: chrono::DateTime<Utc> =
            sqlx::query_scalar("SELECT updated_at FROM pgbackfill.steps WHERE job = 'win' AND step_no = 0")
                .fetch_one(&pool)
                .await
                .unwrap();
        at
    };
    let attempts = steps(&pool, "win").await[0].2;
    let mut rounds = vec![updated().await];
    let start = std::time::Instant::now();
    while rounds.len() < 3 {
        assert!(start.elapsed() < DEADLINE, "the runner stopped re-checking its hold; log:\n{}", daemon.log());
        let s = steps(&pool, "win").await;
        assert_eq!((s[0].1.as_str(), s[0].2), ("waiting", attempts), "a step ran outside the window: {s:#?}");
        assert!(s[0].3.as_deref().is_some_and(|d| d.contains("outside its schedule windows")), "{s:#?}");
        assert_eq!(not_null_and_helpers(&pool, "c").await, (false, 0));
        let at = updated().await;
        if rounds.last() != Some(&at) {
            rounds.push(at);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = status_text(&db.url);
    assert!(text.contains("held: outside its schedule windows"), "{text}");
}
