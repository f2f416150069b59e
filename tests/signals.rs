//! Operator signals, end to end: real signals to the real `pgbackfill run` binary, against the real
//! primary + streaming standby. Every verdict comes from the database (progress table, rows,
//! `pg_stat_activity`) or the exit status, never from the log.
//!
//! Jobs use `set: {n: n + 1}` on rows starting at `n = 0`, so "every row exactly once" is `all n = 1`.

mod common;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use common::daemon::{Daemon, JobsDir, cli};
use common::{TestDb, cluster, wait_until};

/// Deadline for a job (or a daemon) to finish. Generous: 2 cores shared with other test binaries.
const DEADLINE: Duration = Duration::from_secs(90);
/// Deadline for a state change the daemon reacts to within a scan or a batch.
const REACT: Duration = Duration::from_secs(30);

async fn database(setup: &str) -> (TestDb, PgPool) {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(AssertSqlSafe(setup.to_string())).execute(&pool).await.unwrap_or_else(|e| panic!("setup: {e}"));
    (db, pool)
}

fn rows(n: i64) -> String {
    format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, {n}) g;"
    )
}

/// `(n, rows with that n)`, ascending: `[(1, N)]` means every row updated exactly once.
async fn histogram(pool: &PgPool) -> Vec<(i32, i64)> {
    sqlx::query_as("SELECT n, count(*) FROM t GROUP BY n ORDER BY n").fetch_all(pool).await.expect("histogram")
}

async fn scalar<T>(pool: &PgPool, sql: &str) -> T
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    sqlx::query_scalar(AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// What the progress table says about job `name`: state, paused_via, paused_by, rows updated, the
/// cursors of its ranges, and how many ranges a daemon holds.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    state: String,
    paused_via: Option<String>,
    paused_by: Option<String>,
    rows_updated: i64,
    cursors: Vec<Option<Vec<String>>>,
    owned: i64,
}

async fn snapshot(pool: &PgPool, name: &str) -> Option<Snapshot> {
    type Row = (String, Option<String>, Option<String>, i64, Vec<String>, i64);
    // Cursors as text (arrays of arrays do not decode): one "{…}" or NULL per range.
    let row: Option<Row> = sqlx::query_as(
        "SELECT j.state, j.paused_via, j.paused_by, coalesce(sum(r.rows_updated), 0)::int8, \
         coalesce(array_agg(coalesce(r.cursor::text, 'NULL') ORDER BY r.range_no) FILTER (WHERE r.range_no IS NOT NULL), '{}'), \
         count(r.owner) \
         FROM pgbackfill.jobs j LEFT JOIN pgbackfill.ranges r ON r.job = j.name WHERE j.name = $1 GROUP BY j.name",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    row.map(|r| Snapshot {
        state: r.0,
        paused_via: r.1,
        paused_by: r.2,
        rows_updated: r.3,
        cursors: r.4.into_iter().map(|c| (c != "NULL").then(|| vec![c])).collect(),
        owned: r.5,
    })
}

/// Poll the job until `ok` holds; panics with the last snapshot and the daemon log.
async fn wait_job(pool: &PgPool, name: &str, what: &str, daemon: &Daemon, ok: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let start = Instant::now();
    loop {
        let s = snapshot(pool, name).await;
        if let Some(s) = s.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        if start.elapsed() > REACT {
            panic!("job {name}: {what} not reached within {REACT:?} (now {s:?}); log:\n{}", daemon.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job spec: `n = n + 1` on `t`, batches of `size` rows, plus further YAML lines.
fn spec(name: &str, size: i64, extra: &str) -> String {
    format!("name: {name}\ntable: t\nset:\n  n: n + 1\nbatch:\n  size: {size}\n  min_size: 1\n{extra}")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pgbackfill status --json NAME`'s job entry.
fn status_json(url: &str, name: &str) -> serde_json::Value {
    let out = cli(url, &["status", "--json", name]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("status JSON");
    v["jobs"][0].clone()
}

/// A free loopback port for a daemon's metrics endpoint.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// One scrape of `/metrics` (empty while the endpoint is not up).
fn scrape(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// SIGUSR1 pauses in the progress table (other daemons obey it), SIGUSR2 resumes; status and
/// metrics say who paused; a CLI pause says so too.
#[tokio::test]
async fn sigusr1_pauses_every_daemon_and_sigusr2_resumes() {
    let (db, pool) = database(&rows(400)).await;
    let jobs = JobsDir::new();
    jobs.write("slow", &spec("slow", 5, "  pause: 100ms\n"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut a = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &addr]);
    wait_job(&pool, "slow", "progress", &a, |s| s.rows_updated >= 10).await;

    a.signal("USR1");
    let paused =
        wait_job(&pool, "slow", "paused by the signal, ranges released", &a, |s| s.state == "paused" && s.owned == 0)
            .await;
    assert_eq!(paused.paused_via.as_deref(), Some("signal"), "{paused:?}");
    let by = paused.paused_by.clone().unwrap_or_default();
    assert!(by.starts_with("SIGUSR1 to daemon ") && by.contains(" at 20"), "{paused:?}");
    assert!(paused.rows_updated < 400, "paused before the end: {paused:?}");
    let status = status_json(&db.url, "slow");
    assert_eq!((status["state"].as_str(), status["paused_by"].as_str()), (Some("paused"), Some(by.as_str())));
    let text = stdout(&cli(&db.url, &["status", "slow"]));
    assert!(text.contains("(SIGUSR1 to daemon "), "{text}");
    wait_until(REACT, "pgbackfill_job_paused{by=signal} = 1", || async {
        scrape(port).contains("pgbackfill_job_paused{job=\"slow\",by=\"signal\"} 1")
    })
    .await;
    assert!(scrape(port).contains("pgbackfill_job_paused{job=\"slow\",by=\"cli\"} 0"));

    // A second daemon on the same jobs directory leaves the job alone.
    let mut b = Daemon::start(&db.url, jobs.path(), &[]);
    wait_until(REACT, "the second daemon connected", || async {
        scalar::<i64>(
            &pool,
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity \
             WHERE application_name LIKE 'pgbackfill %:%' AND datname = current_database()",
        )
        .await
            >= 2
    })
    .await;
    // Observation window: several polls, over more than ten of the daemons' scan intervals.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = snapshot(&pool, "slow").await.expect("job");
        assert_eq!(now, paused, "the job moved while paused; logs:\n{}\n---\n{}", a.log(), b.log());
    }
    assert_eq!(scalar::<i64>(&pool, "SELECT count(*) FROM t WHERE n <> 0").await, paused.rows_updated);

    a.signal("USR2");
    let resumed = wait_job(&pool, "slow", "rows changing again", &a, |s| {
        s.state == "running" && s.rows_updated > paused.rows_updated
    })
    .await;
    assert_eq!((resumed.paused_via, resumed.paused_by), (None, None));

    // The CLI records the role that paused.
    let out = cli(&db.url, &["pause", "slow"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let by_cli = wait_job(&pool, "slow", "paused by the CLI", &a, |s| s.state == "paused").await;
    assert_eq!(
        (by_cli.paused_via.as_deref(), by_cli.paused_by.as_deref()),
        (Some("cli"), Some("pgbackfill pause by postgres"))
    );
    // SIGUSR2 resumes any paused job, whoever paused it.
    a.signal("USR2");
    wait_job(&pool, "slow", "completed", &a, |s| s.state == "completed").await;
    assert_eq!(histogram(&pool).await, vec![(1, 400)], "exactly once across the pauses");
    for d in [&mut a, &mut b] {
        d.terminate();
        assert_eq!(d.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", d.log());
    }
}

/// SIGHUP rescans the jobs directory at once: with an hour between scans, only the signal can
/// explain a new job starting.
#[tokio::test]
async fn sighup_picks_up_a_new_spec_at_once() {
    let (db, pool) = database(&rows(50)).await;
    let jobs = JobsDir::new();
    jobs.write("first", &spec("first", 100, ""));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--scan-interval", "1h"]);
    wait_job(&pool, "first", "completed", &daemon, |s| s.state == "completed").await;

    jobs.write("second", &spec("second", 100, ""));
    daemon.signal("HUP");
    wait_job(&pool, "second", "completed", &daemon, |s| s.state == "completed").await;
    assert_eq!(histogram(&pool).await, vec![(2, 50)], "both jobs, each row once per job");
    daemon.terminate();
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());
}

/// SIGHUP re-reads DATABASE_URL_FILE: after a password rotation, new connections use the new URL.
#[tokio::test]
async fn sighup_rereads_a_rotated_url_file() {
    let (db, pool) = database(&rows(50)).await;
    // A role that must give its password (the test cluster trusts everyone else): a rule of its own
    // ahead of the trust rules, on this test binary's cluster only.
    let role = format!("rotor_{}", db.name);
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE ROLE \"{role}\" LOGIN SUPERUSER PASSWORD 'old-secret-1'")))
        .execute(&pool)
        .await
        .expect("create role");
    let hba: String = scalar(&pool, "SHOW hba_file").await;
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let ours = format!("host all {role} 127.0.0.1/32 scram-sha-256\nhost all {role} ::1/128 scram-sha-256\n");
    std::fs::write(&hba, format!("{ours}{rules}")).expect("write pg_hba.conf");
    let _: bool = scalar(&pool, "SELECT pg_reload_conf()").await;
    let url_with =
        |password: &str| db.url.replacen("postgres://postgres@", &format!("postgres://{role}:{password}@"), 1);
    wait_until(REACT, "the password rule in force", || async {
        PgConnection::connect(&url_with("wrong")).await.is_err()
    })
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, url_with("old-secret-1")).expect("write URL file");
    let jobs = JobsDir::new();
    jobs.write("first", &spec("first", 100, ""));
    let mut daemon = Daemon::start_with_url_file(&url_file, jobs.path(), &["--scan-interval", "1h"]);
    wait_job(&pool, "first", "completed", &daemon, |s| s.state == "completed").await;

    // Rotate: new password, new file; the daemon's open sessions go away (as after a failover).
    sqlx::raw_sql(AssertSqlSafe(format!("ALTER ROLE \"{role}\" PASSWORD 'new-secret-2'")))
        .execute(&pool)
        .await
        .expect("rotate");
    std::fs::write(&url_file, url_with("new-secret-2")).expect("rewrite URL file");
    jobs.write("second", &spec("second", 100, ""));
    daemon.signal("HUP");
    let _: i64 = scalar(
        &pool,
        &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{role}'"),
    )
    .await;
    // The second job can only run on connections opened with the new password.
    wait_job(&pool, "second", "completed", &daemon, |s| s.state == "completed").await;
    assert_eq!(histogram(&pool).await, vec![(2, 50)]);
    let new_sessions: i64 = scalar(
        &pool,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' AND application_name LIKE 'pgbackfill %'"
        ),
    )
    .await;
    assert!(new_sessions > 0, "the daemon reconnected as {role}");
    daemon.terminate();
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());
    let log = daemon.log();
    assert!(!log.contains("old-secret-1") && !log.contains("new-secret-2"), "a password in the log:\n{log}");
    // The re-read names its target as every other message does: `host:port/database as user`.
    let reread = log.lines().find(|l| l.contains("database URL re-read")).unwrap_or_default();
    assert!(reread.contains(&format!("/{} as {role}", db.name)), "{reread}\nlog:\n{log}");
}

/// SIGTERM while a batch waits on a row lock another session holds: the batch is cancelled on the
/// server near `--shutdown-timeout`, rolls back, and the daemon exits 0 on time; a restart then
/// finishes the job with every row updated exactly once.
#[tokio::test]
async fn sigterm_exits_on_time_even_with_a_batch_stuck_behind_a_lock() {
    let (db, pool) = database(&rows(300)).await;
    // Another session holds a row of the first batch.
    let mut locker = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::raw_sql("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE").execute(&mut locker).await.expect("lock");
    let jobs = JobsDir::new();
    jobs.write("stuck", &spec("stuck", 50, "timeouts:\n  lock: 60s\n  statement: 60s\n"));
    let timeout = Duration::from_secs(3);
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--shutdown-timeout", "3s"]);
    wait_until(REACT, "the daemon's batch waiting on the row lock", || async {
        scalar::<i64>(
            &pool,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbackfill %:%' \
             AND wait_event_type = 'Lock' AND datname = current_database()",
        )
        .await
            == 1
    })
    .await;

    let sent = Instant::now();
    daemon.terminate();
    let status = daemon.wait_exit(DEADLINE);
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    // On time: the timeout, plus process start-up slack on a loaded machine.
    assert!(took < timeout + Duration::from_millis(1500), "exited after {took:?}; log:\n{}", daemon.log());
    assert!(took >= timeout / 2, "the batch was given time to finish first: {took:?}");
    // Nothing half-written: the batch rolled back, the cursor did not move, the claim is released.
    assert_eq!(histogram(&pool).await, vec![(0, 300)]);
    let s = snapshot(&pool, "stuck").await.expect("job");
    assert_eq!((s.state.as_str(), s.rows_updated, s.owned), ("running", 0, 0), "{s:?}");
    assert_eq!(s.cursors, vec![None], "{s:?}");
    // No session of the daemon is left running anything.
    wait_until(REACT, "the daemon's sessions gone", || async {
        scalar::<i64>(
            &pool,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbackfill %:%' \
             AND datname = current_database()",
        )
        .await
            == 0
    })
    .await;

    sqlx::raw_sql("COMMIT").execute(&mut locker).await.expect("unlock");
    let mut again = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(again.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", again.log());
    assert_eq!(histogram(&pool).await, vec![(1, 300)], "exactly once across the drain");
}

/// A daemon that cannot reach its database at all still exits 0 at once on SIGTERM.
#[tokio::test]
async fn sigterm_exits_promptly_without_a_database() {
    let jobs = JobsDir::new();
    jobs.write("nowhere", &spec("nowhere", 10, ""));
    // Nothing listens on port 1 of loopback.
    let mut daemon = Daemon::start("postgres://postgres@127.0.0.1:1/x", jobs.path(), &[]);
    // The signal handlers are in place once the daemon logs that it starts.
    let start = Instant::now();
    while !daemon.log().contains("pgbackfill starting") {
        assert!(start.elapsed() < REACT, "no start-up line; log:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Well into a connection attempt (the pool retries refused connections for 10 s).
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    daemon.terminate();
    let status = daemon.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    assert!(sent.elapsed() < Duration::from_secs(3), "took {:?}; log:\n{}", sent.elapsed(), daemon.log());
}

/// The database lost while a job runs: the job is held (lag unknown) and its worker's writes to the
/// progress table fail. SIGTERM must not wait out the shutdown timeout (25 s) for them: each such
/// write is given up within a couple of seconds. (It waited 25 s: the throttle bookkeeping waited
/// for the pool's 10 s acquire timeout, twice, before the worker looked at its cancellation.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_after_losing_the_database_mid_job() {
    let (db, pool) = database(&rows(400)).await;
    let mut proxy = common::proxy::Proxy::start(cluster().await.primary_port()).await;
    let jobs = JobsDir::new();
    jobs.write("lost", &spec("lost", 5, "  pause: 100ms\n"));
    let mut daemon = Daemon::start(&proxy.url(&db.url), jobs.path(), &[]);
    wait_job(&pool, "lost", "progress", &daemon, |s| s.rows_updated >= 10).await;

    proxy.down();
    wait_log(&daemon, "throttled: not writing").await;
    // Into the held loop's bookkeeping writes, which now fail slowly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = Instant::now();
    daemon.terminate();
    let status = daemon.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    assert!(sent.elapsed() < Duration::from_secs(10), "took {:?}; log:\n{}", sent.elapsed(), daemon.log());
    // The worker finished on its own: none was left to abandon at the timeout.
    assert!(!daemon.log().contains("abandoning workers"), "log:\n{}", daemon.log());
    proxy.up().await;
}

/// Wait until the daemon's log has `line`: only to know a signal was taken before the test goes
/// on (the verdicts come from the database).
async fn wait_log(daemon: &Daemon, line: &str) {
    let start = Instant::now();
    while !daemon.log().contains(line) {
        assert!(start.elapsed() < REACT, "no `{line}` in the log:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sessions of any pgbackfill daemon in the test's database.
async fn daemon_sessions(pool: &PgPool) -> i64 {
    scalar(
        pool,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbackfill %:%' \
         AND datname = current_database()",
    )
    .await
}

/// SIGUSR1 while the database is unreachable: the pause reaches the progress table once the
/// database is back, and no batch runs in between. (That the hold is local and immediate is shown
/// deterministically by `sigusr1_holds_locally_until_the_pause_is_recorded`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_without_the_database_holds_at_once_and_records_the_pause_later() {
    let (db, pool) = database(&rows(400)).await;
    let mut proxy = common::proxy::Proxy::start(cluster().await.primary_port()).await;
    let jobs = JobsDir::new();
    jobs.write("slow", &spec("slow", 5, "  pause: 100ms\n"));
    let mut daemon = Daemon::start(&proxy.url(&db.url), jobs.path(), &[]);
    wait_job(&pool, "slow", "progress", &daemon, |s| s.rows_updated >= 10).await;

    proxy.down();
    wait_until(REACT, "the daemon's sessions gone with the connection", || async { daemon_sessions(&pool).await == 0 })
        .await;
    let before = snapshot(&pool, "slow").await.expect("job");
    assert_eq!(before.state, "running");
    daemon.signal("USR1");
    wait_log(&daemon, "SIGUSR1: pausing every loaded job").await;

    proxy.up().await;
    let paused = wait_job(&pool, "slow", "the pause recorded", &daemon, |s| s.state == "paused").await;
    assert_eq!(paused.paused_via.as_deref(), Some("signal"), "{paused:?}");
    // Held from the signal on: not one batch once the database was back.
    assert_eq!(paused.rows_updated, before.rows_updated, "{paused:?} {before:?}; log:\n{}", daemon.log());
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = snapshot(&pool, "slow").await.expect("job");
        assert_eq!((now.rows_updated, &now.cursors), (before.rows_updated, &before.cursors), "log:\n{}", daemon.log());
    }

    daemon.signal("USR2");
    wait_job(&pool, "slow", "completed", &daemon, |s| s.state == "completed").await;
    assert_eq!(histogram(&pool).await, vec![(1, 400)], "exactly once across the outage and the pause");
    daemon.terminate();
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());
}

/// A second SIGTERM while draining exits at once (130), a batch stuck behind a lock or not; the
/// batch rolls back with the connection, and a restart does every row exactly once.
#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    let (db, pool) = database(&rows(100)).await;
    let mut locker = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::raw_sql("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE").execute(&mut locker).await.expect("lock");
    let jobs = JobsDir::new();
    jobs.write("stuck", &spec("stuck", 50, "timeouts:\n  lock: 60s\n  statement: 60s\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--shutdown-timeout", "60s"]);
    wait_until(REACT, "the daemon's batch waiting on the row lock", || async {
        scalar::<i64>(
            &pool,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbackfill %:%' \
             AND wait_event_type = 'Lock' AND datname = current_database()",
        )
        .await
            == 1
    })
    .await;
    daemon.terminate();
    wait_log(&daemon, "shutdown requested").await;
    let sent = Instant::now();
    daemon.terminate();
    let status = daemon.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(130), "log:\n{}", daemon.log());
    assert!(sent.elapsed() < Duration::from_secs(2), "took {:?}", sent.elapsed());
    sqlx::raw_sql("COMMIT").execute(&mut locker).await.expect("unlock");
    wait_until(REACT, "the daemon's sessions gone", || async { daemon_sessions(&pool).await == 0 }).await;
    assert_eq!(histogram(&pool).await, vec![(0, 100)], "the stuck batch rolled back");

    let mut again = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(again.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", again.log());
    assert_eq!(histogram(&pool).await, vec![(1, 100)], "exactly once");
}

/// SIGUSR1 when the pause cannot be recorded (here a trigger refuses it; an unreachable database is
/// the usual cause): the daemon holds the job locally at once, with the job still `running` in the
/// table, and records the pause as soon as the table takes it.
#[tokio::test]
async fn sigusr1_holds_locally_until_the_pause_is_recorded() {
    let (db, pool) = database(&rows(400)).await;
    let jobs = JobsDir::new();
    jobs.write("slow", &spec("slow", 5, "  pause: 100ms\n"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_job(&pool, "slow", "progress", &daemon, |s| s.rows_updated >= 10).await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_signal_pause() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.paused_via = 'signal' THEN RAISE EXCEPTION 'not now'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_signal_pause BEFORE UPDATE ON pgbackfill.jobs \
           FOR EACH ROW EXECUTE FUNCTION refuse_signal_pause();",
    )
    .execute(&pool)
    .await
    .expect("trigger");

    daemon.signal("USR1");
    let held = wait_job(&pool, "slow", "the range released", &daemon, |s| s.owned == 0).await;
    assert_eq!(held.state, "running", "{held:?}");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = snapshot(&pool, "slow").await.expect("job");
        assert_eq!(now, held, "held locally: nothing may move; log:\n{}", daemon.log());
    }

    sqlx::raw_sql("DROP TRIGGER refuse_signal_pause ON pgbackfill.jobs").execute(&pool).await.expect("drop trigger");
    let paused = wait_job(&pool, "slow", "the pause recorded", &daemon, |s| s.state == "paused").await;
    assert_eq!((paused.paused_via.as_deref(), paused.rows_updated), (Some("signal"), held.rows_updated));
    daemon.signal("USR2");
    wait_job(&pool, "slow", "completed", &daemon, |s| s.state == "completed").await;
    assert_eq!(histogram(&pool).await, vec![(1, 400)]);
    daemon.terminate();
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());
}
