//! Defects a reviewer found trying the daemon as a new operator: each test reproduces one through
//! the real binary against real PostgreSQL and asserts what an operator sees.

mod common;

use std::io::{Read, Write};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use common::daemon::{Daemon, JobsDir, cli, wait_state};
use common::{TestDb, cluster, wait_until};

const DEADLINE: Duration = Duration::from_secs(90);
const REACT: Duration = Duration::from_secs(30);

async fn database(setup: &str) -> (TestDb, PgPool) {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(AssertSqlSafe(setup.to_string())).execute(&pool).await.unwrap_or_else(|e| panic!("setup: {e}"));
    (db, pool)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `status --json NAME`: the job's object (the command must succeed).
fn status_json(url: &str, name: &str) -> Value {
    let out = cli(url, &["status", "--json", name]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}\n{}", text(&out)));
    v["jobs"][0].clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// The value of the one sample of `metric` whose labels contain every one of `labels`.
fn sample(body: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name_labels, value) = l.rsplit_once(' ')?;
        let (name, rest) = name_labels.split_once('{').unwrap_or((name_labels, ""));
        (name == metric && labels.iter().all(|want| rest.contains(want))).then(|| value.parse().ok())?
    })
}

/// Wait until `status --json` shows `state` for `name`; the job object.
async fn wait_json_state(url: &str, name: &str, state: &str, daemon: &Daemon) -> Value {
    let mut last = Value::Null;
    let ok = pgbackfill::localpg::poll_until(REACT, || {
        let out = cli(url, &["status", "--json", name]);
        last = serde_json::from_slice::<Value>(&out.stdout).map(|v| v["jobs"][0].clone()).unwrap_or(Value::Null);
        let done = last["state"] == state;
        async move { done }
    })
    .await;
    assert!(ok, "status never showed {state} for {name}; last: {last}\ndaemon log:\n{}", daemon.log());
    last
}

const TABLE: &str = "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
    INSERT INTO t (id) SELECT g FROM generate_series(1, 3000) g;";

fn spec(name: &str, extra: &str) -> String {
    format!("name: {name}\ntable: t\nset:\n  n: n + 1\nwhere: n = 0\nbatch:\n  size: 1000\n{extra}")
}

/// Back to "every range done, not yet verified", as after a crash between the walk and the check.
async fn unverify(pool: &PgPool, name: &str) {
    sqlx::query(
        "UPDATE pgbackfill.jobs SET state = 'running', finished_at = NULL, leftover_rows = NULL, \
         verify_cursor = NULL, verify_block = NULL, verify_checked = 0, verify_matching = 0, verify_done = false \
         WHERE name = $1",
    )
    .bind(name)
    .execute(pool)
    .await
    .unwrap();
}

// ----- 1. orphaned only when no live daemon works the job -----

#[tokio::test]
async fn a_job_being_verified_or_held_in_verification_is_running_or_held_not_orphaned() {
    let (db, pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    jobs.write("v", &spec("v", ""));
    let mut first = Daemon::start(&db.url, jobs.path(), &["--exit-when-done", "--metrics-addr", ""]);
    assert_eq!(first.wait_exit(DEADLINE).code(), Some(0), "{}", first.log());
    unverify(&pool, "v").await;

    // The completion check cannot read the table (an exclusive lock): it retries, alive.
    let mut locker = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").execute(&mut locker).await.unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &addr]);
    wait_until(REACT, "verification chunks failing on the lock", || async {
        daemon.log().matches("verification chunk failed").count() >= 2
    })
    .await;
    let j = wait_json_state(&db.url, "v", "running", &daemon).await;
    assert!(j["owners"].as_array().is_some_and(|o| !o.is_empty()), "{j}");
    // Across more failed chunks (each holds the job row up to the lock timeout), still running.
    let seen = daemon.log().matches("verification chunk failed").count();
    wait_until(REACT, "more failed chunks", || async {
        daemon.log().matches("verification chunk failed").count() >= seen + 2
    })
    .await;
    assert_eq!(status_json(&db.url, "v")["state"], "running", "log:\n{}", daemon.log());
    let out = cli(&db.url, &["status", "v"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("orphaned"), "{}", text(&out));
    wait_until(REACT, "job_state running=1 in /metrics", || async {
        sample(&scrape(port), "pgbackfill_job_state", &["job=\"v\"", "state=\"running\""]) == Some(1.0)
    })
    .await;
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();
    wait_state(&pool, "v", "completed", DEADLINE, Some(&daemon)).await;
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "{}", daemon.log());

    // Verification held by a closed schedule window: held, with the reason, not orphaned.
    unverify(&pool, "v").await;
    let opens = chrono::Utc::now() + chrono::Duration::hours(2);
    let closes = opens + chrono::Duration::minutes(1);
    let window = format!("{}-{}", opens.format("%H:%M"), closes.format("%H:%M"));
    jobs.write("v", &spec("v", &format!("schedule:\n  windows: [\"{window}\"]\n")));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &addr]);
    let j = wait_json_state(&db.url, "v", "held", &daemon).await;
    assert!(j["held_by"].is_string(), "{j}");
    wait_until(REACT, "job_state held=1 in /metrics", || async {
        sample(&scrape(port), "pgbackfill_job_state", &["job=\"v\"", "state=\"held\""]) == Some(1.0)
    })
    .await;
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "{}", daemon.log());
    // No daemon left: orphaned once the verification lease is dropped (or has expired).
    wait_json_state(&db.url, "v", "orphaned", &daemon).await;
}

#[tokio::test]
async fn a_batch_retrying_lock_timeouts_keeps_its_lease() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 200) g;",
    )
    .await;
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1 FROM t WHERE id = 150 FOR UPDATE").execute(&mut holder).await.unwrap();
    let jobs = JobsDir::new();
    jobs.write(
        "locked",
        "name: locked\ntable: t\nset:\n  n: n + 1\nbatch:\n  size: 10\n  min_size: 1\ntimeouts:\n  lock: 1s\n",
    );
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--lease", "2s", "--metrics-addr", ""]);
    // Watch the range's lease across many failed attempts: it must never run out.
    let mut shortest = f64::MAX;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let retries = daemon.log().matches("batch failed, will retry").count();
        let left: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM lease_until - clock_timestamp())::float8 FROM pgbackfill.ranges \
             WHERE job = 'locked' AND owner IS NOT NULL",
        )
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten();
        if retries >= 1 {
            shortest = shortest.min(left.unwrap_or(f64::MIN));
        }
        if retries >= 8 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "too few retries:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shortest > 0.0, "the lease ran out while its owner retried ({shortest:.1}s left):\n{}", daemon.log());
    assert_eq!(status_json(&db.url, "locked")["state"], "running");
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap();
    wait_state(&pool, "locked", "completed", DEADLINE, Some(&daemon)).await;
    daemon.terminate();
    daemon.wait_exit(REACT);
}

/// 3000 rows, 10 a batch, 100 ms apart: slow enough to act on while it runs.
fn slow(name: &str) -> String {
    format!(
        "name: {name}\ntable: t\nset:\n  n: n + 1\nwhere: n = 0\nbatch:\n  size: 10\n  min_size: 1\n  pause: 100ms\n"
    )
}

async fn wait_metric(port: u16, labels: &[&str], value: f64, daemon: &Daemon) {
    let ok = pgbackfill::localpg::poll_until(REACT, || {
        let got = sample(&scrape(port), "pgbackfill_job_state", labels);
        async move { got == Some(value) }
    })
    .await;
    assert!(ok, "pgbackfill_job_state{labels:?} never {value}:\n{}\nlog:\n{}", scrape(port), daemon.log());
}

// ----- 2. the state metric follows what the daemon does -----

#[tokio::test]
async fn the_state_metric_says_held_while_the_database_is_unreachable() {
    let (db, _pool) = database(TABLE).await;
    let c = cluster().await;
    let mut proxy = common::proxy::Proxy::start(c.primary_port()).await;
    let jobs = JobsDir::new();
    jobs.write("j", &slow("down"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&proxy.url(&db.url), jobs.path(), &["--metrics-addr", &addr]);
    wait_metric(port, &["job=\"down\"", "state=\"running\""], 1.0, &daemon).await;
    proxy.down();
    let ok = pgbackfill::localpg::poll_until(REACT, || {
        let got = sample(&scrape(port), "pgbackfill_throttled", &["job=\"down\"", "reason=\"unknown\""]);
        async move { got == Some(1.0) }
    })
    .await;
    assert!(ok, "never throttled for unknown lag:\n{}", daemon.log());
    wait_metric(port, &["job=\"down\"", "state=\"held\""], 1.0, &daemon).await;
    wait_metric(port, &["job=\"down\"", "state=\"running\""], 0.0, &daemon).await;
    proxy.up().await;
    wait_metric(port, &["job=\"down\"", "state=\"running\""], 1.0, &daemon).await;
    proxy.down();
}

#[tokio::test]
async fn removing_the_spec_file_stops_the_job_here_and_forget_clears_its_state() {
    let (db, pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    jobs.write("j", &slow("gone"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &addr]);
    wait_metric(port, &["job=\"gone\"", "state=\"running\""], 1.0, &daemon).await;
    jobs.remove("j");
    wait_until(REACT, "the removal logged", || async { daemon.log().contains("spec file removed") }).await;
    assert!(daemon.log().contains("resume by restoring the file, or `pgbackfill forget`"), "{}", daemon.log());
    wait_metric(port, &["job=\"gone\"", "state=\"orphaned\""], 1.0, &daemon).await;
    wait_until(REACT, "its ranges released", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pgbackfill.ranges WHERE job = 'gone' AND owner IS NOT NULL")
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 0)
    })
    .await;
    // No more rows change: the cursor stays put across the daemon's next scans.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE n = 1").fetch_one(&pool).await.unwrap();
    common::daemon::daemon_ticks(&pool, 3, REACT).await;
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE n = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(before, after, "rows changed after the spec file was removed:\n{}", daemon.log());
    assert_eq!(status_json(&db.url, "gone")["state"], "orphaned");
    assert_eq!(sample(&scrape(port), "pgbackfill_active_workers", &[]), Some(0.0));

    let out = cli(&db.url, &["forget", "gone", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_metric(port, &["job=\"gone\"", "state=\"orphaned\""], 0.0, &daemon).await;
    let body = scrape(port);
    for s in pgbackfill::status::JobState::ALL {
        let v = sample(&body, "pgbackfill_job_state", &["job=\"gone\"", &format!("state=\"{s}\"")]);
        assert_ne!(v, Some(1.0), "{s} after forget:\n{body}");
    }
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "{}", daemon.log());
}

// ----- 3. output into a closed pipe -----

/// Run a command whose stdout is a pipe nobody reads any more (`| head -1` after its first line):
/// the first write fails with EPIPE. Deterministic: the read end is closed before the start.
fn into_closed_pipe(url: &str, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child = std::process::Command::new(common::daemon::bin())
        .args(args)
        .env("DATABASE_URL", url)
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pgbackfill");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().expect("wait");
    Output { status, stdout: Vec::new(), stderr: err.into_bytes() }
}

#[tokio::test]
async fn printing_into_a_closed_pipe_ends_quietly_with_0() {
    let (db, _pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    jobs.write("j", &spec("piped", ""));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done", "--metrics-addr", ""]);
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "{}", daemon.log());
    let dir = jobs.path().to_str().unwrap().to_string();
    for args in [
        vec!["status", "--json"],
        vec!["status"],
        vec!["status", "piped"],
        vec!["schema"],
        vec!["check", &dir],
        vec!["check", "--json", &dir],
        vec!["migrate"],
    ] {
        let out = into_closed_pipe(&db.url, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(out.stderr.is_empty(), "{args:?} says nothing: {}", text(&out));
    }
}

// ----- 6. check on a path that does not exist -----

#[test]
fn check_of_a_path_that_does_not_exist_is_a_usage_error() {
    let out = common::daemon::cli_offline(&["check", "/nonexistent/path"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/path does not exist"), "{}", text(&out));
    // The same with a path that exists among the arguments.
    let jobs = JobsDir::new();
    let out = common::daemon::cli_offline(&["check", jobs.path().to_str().unwrap(), "/nonexistent/path"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

// ----- 4. a daemon whose role cannot write the progress tables -----

#[tokio::test]
async fn a_daemon_that_cannot_write_the_progress_tables_fails_at_start_naming_the_grant() {
    let (db, pool) = database(TABLE).await;
    assert!(cli(&db.url, &["migrate"]).status.success());
    // A viewer as README makes it (a role name of this test's own: roles are cluster-wide).
    let role = format!("viewer_{}", db.name);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN IN ROLE pg_monitor; GRANT USAGE ON SCHEMA pgbackfill TO \"{role}\"; \
         GRANT SELECT ON ALL TABLES IN SCHEMA pgbackfill TO \"{role}\"; GRANT SELECT, UPDATE ON t TO \"{role}\""
    )))
    .execute(&pool)
    .await
    .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url);
    let jobs = JobsDir::new();
    jobs.write("j", &spec("viewer", ""));
    let mut daemon = Daemon::start(&url, jobs.path(), &["--metrics-addr", ""]);
    let status = daemon.wait_exit(REACT);
    let log = daemon.log();
    sqlx::raw_sql(AssertSqlSafe(format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""))).execute(&pool).await.ok();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("lacks privileges on the progress schema"), "{log}");
    assert!(log.contains("INSERT, UPDATE, DELETE on \"pgbackfill\".jobs;"), "{log}");
    assert!(log.contains("deploy/sql/grants.sql"), "{log}");
    assert!(!log.contains("could not record the refusal"), "{log}");
}

// ----- 5. the HTTP endpoints name why the database cannot be used -----

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[tokio::test]
async fn readyz_and_status_name_a_refused_connection_at_once() {
    let jobs = JobsDir::new();
    jobs.write("j", &spec("nowhere", ""));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let url = "postgres://pgbackfill:s3cret-pw@127.0.0.1:1/demo";
    let daemon = Daemon::start(url, jobs.path(), &["--metrics-addr", &addr]);
    wait_until(REACT, "the HTTP server", || async { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() }).await;
    for path in ["/readyz", "/status"] {
        let asked = std::time::Instant::now();
        let (code, body) = get(port, path);
        let took = asked.elapsed();
        assert_eq!(code, 503, "{path}: {body}\n{}", daemon.log());
        assert!(body.contains("cannot connect to 127.0.0.1:1/demo as pgbackfill"), "{path}: {body}");
        assert!(body.contains("refused"), "{path}: {body}");
        assert!(!body.contains("s3cret"), "{path}: {body}");
        assert!(took < Duration::from_secs(2), "{path} took {took:?}: {body}");
    }
}

// ----- --exit-when-done names a refused job as refused, with why -----

#[tokio::test]
async fn exit_when_done_names_a_refused_job_as_refused_and_why() {
    let (db, pool) = database(TABLE).await;
    let role = format!("{}_ro", db.name);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN IN ROLE pg_monitor; GRANT SELECT ON t TO \"{role}\"; \
         GRANT CREATE ON DATABASE \"{}\" TO \"{role}\"",
        db.name
    )))
    .execute(&pool)
    .await
    .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let jobs = JobsDir::new();
    jobs.write("job", &spec("nogrant", ""));
    let mut daemon = Daemon::start(&url, jobs.path(), &["--metrics-addr", "", "--exit-when-done"]);
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(1), "{}", daemon.log());
    let log = daemon.log();
    let summary = log.lines().find(|l| l.contains("not all completed")).unwrap_or_default().to_string();
    assert!(summary.contains("nogrant (refused: ") && summary.contains("UPDATE"), "{summary}\n{log}");
    assert!(!summary.contains("(invalid)"), "{summary}");
}

// ----- status --watch: the live view only, no log lines -----

#[tokio::test]
async fn status_watch_shows_no_log_lines_and_ctrl_c_ends_it_quietly() {
    let (db, _pool) = database(TABLE).await;
    assert!(cli(&db.url, &["migrate"]).status.success());
    let mut child = std::process::Command::new(common::daemon::bin())
        .args(["status", "--watch"])
        .env("DATABASE_URL", &db.url)
        .env_remove("PGBACKFILL_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pgbackfill");
    // The first frame, then Ctrl-C.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 64];
    let n = stdout.read(&mut first).expect("a frame");
    assert!(String::from_utf8_lossy(&first[..n]).contains("pgbackfill status --watch"));
    let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(err.is_empty(), "log lines in the live view: {err}");
    assert!(!rest.contains("INFO"), "{rest}");
}
