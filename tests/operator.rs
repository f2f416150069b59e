//! The operator's view (issue 12): `status`, `check` and the CLI tell the truth, through the real
//! binary against real PostgreSQL. Each test asserts what is printed and the exit code.

mod common;

use std::io::{Read, Write};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, PgPool};

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

/// 3000 rows with `n = 0`.
const TABLE: &str = "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
    INSERT INTO t (id) SELECT g FROM generate_series(1, 3000) g;";

/// A job slow enough to act on while it runs (10 rows a batch, 100 ms apart).
fn slow(name: &str) -> String {
    format!(
        "name: {name}\ntable: t\nset:\n  n: n + 1\nwhere: n = 0\nbatch:\n  size: 10\n  min_size: 1\n  pause: 100ms\n"
    )
}

fn text(out: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), stdout(out), stderr(out))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `status --json NAME`: the job's object (the command must succeed).
fn status_json(url: &str, name: &str) -> Value {
    let out = cli(url, &["status", "--json", name]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}\n{}", text(&out)));
    v["jobs"][0].clone()
}

/// The text `status NAME` prints for a job: its line and the indented lines under it.
fn status_text(url: &str, name: &str) -> String {
    let out = cli(url, &["status", name]);
    assert!(out.status.success(), "{}", text(&out));
    stdout(&out)
}

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
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

// ----- states: running only while a live daemon runs the job -----

#[tokio::test]
async fn status_shows_running_paused_and_orphaned_for_what_they_are() {
    let (db, pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    jobs.write("job", &slow("states"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &[]);
    let running = wait_json_state(&db.url, "states", "running", &daemon).await;
    assert!(running["owners"].as_array().is_some_and(|o| !o.is_empty()), "{running}");

    // Richer status: start time, elapsed, batch size, key position.
    wait_until(REACT, "a key position", || async { status_json(&db.url, "states")["key_position"].is_array() }).await;
    let j = status_json(&db.url, "states");
    assert!(j["started_at"].is_string() && j["elapsed_seconds"].is_number(), "{j}");
    assert_eq!(j["batch_size"], 10, "{j}");
    let text = status_text(&db.url, "states");
    assert!(text.contains("started ") && text.contains("batch 10 rows") && text.contains("key at ("), "{text}");

    // Paused: no rate and no ETA.
    let out = cli(&db.url, &["pause", "states"]);
    assert!(out.status.success(), "{}", text_of(&out));
    let paused = wait_json_state(&db.url, "states", "paused", &daemon).await;
    assert!(paused["rows_per_second"].is_null() && paused["eta_seconds"].is_null(), "{paused}");
    let line = status_text(&db.url, "states");
    let first = line.lines().nth(1).unwrap_or_default().to_string();
    assert!(first.contains("paused"), "{line}");
    let cols: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(&cols[cols.len() - 2..], ["-", "-"], "no rows/s and no ETA while paused:\n{line}");

    // Resumed, then the daemon shuts down cleanly: the table still says running, status must not.
    assert!(cli(&db.url, &["resume", "states"]).status.success());
    wait_json_state(&db.url, "states", "running", &daemon).await;
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "log:\n{}", daemon.log());
    let stored: String =
        sqlx::query_scalar("SELECT state FROM pgbackfill.jobs WHERE name = 'states'").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, "running");
    let j = status_json(&db.url, "states");
    assert_eq!(j["state"], "orphaned", "{j}");
    assert!(j["rows_per_second"].is_null() && j["eta_seconds"].is_null(), "{j}");
    let text = status_text(&db.url, "states");
    assert!(text.contains("orphaned") && text.contains("no live daemon"), "{text}");
    assert!(!text.contains("running"), "{text}");
}

/// A table never vacuumed or analyzed (`reltuples` -1) still gets a row estimate, so `%`, ETA and
/// the progress gauge are shown; rows/s is over the time workers ran the job, so hours without a
/// daemon do not drag it down; `paused for` times the current pause.
#[tokio::test]
async fn progress_rate_and_pauses_are_measured_over_the_right_time() {
    let (db, pool) = database(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0) WITH (autovacuum_enabled = false);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 3000) g;",
    )
    .await;
    let reltuples: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 't'::regclass").fetch_one(&pool).await.unwrap();
    assert!(reltuples <= 0.0, "the table must have no statistics for this test: reltuples {reltuples}");
    let jobs = JobsDir::new();
    jobs.write("job", &slow("nostats"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_json_state(&db.url, "nostats", "running", &daemon).await;
    let mut j = Value::Null;
    wait_until(REACT, "a percentage and an ETA", || {
        j = status_json(&db.url, "nostats");
        let shown = j["percent"].is_number() && j["eta_seconds"].is_number();
        async move { shown }
    })
    .await;
    let estimated = j["estimated_rows"].as_i64().unwrap_or_default();
    assert!((1_500..=6_000).contains(&estimated), "the planner's estimate of 3000 rows: {j}");

    // Two seconds of work, eight without a daemon, then work again: the rate is the working one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "log:\n{}", daemon.log());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_json_state(&db.url, "nostats", "running", &daemon).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let j = status_json(&db.url, "nostats");
    let rate = j["rows_per_second"].as_f64().unwrap_or_default();
    let elapsed = j["elapsed_seconds"].as_f64().unwrap_or_default();
    let scanned = j["rows_scanned"].as_f64().unwrap_or_default();
    assert!(elapsed > 10.0 && scanned > 0.0, "{j}");
    // Wall time since the start is more than twice the working time here.
    assert!(rate > 2.0 * scanned / elapsed, "rows/s {rate} counts the time without a daemon: {j}");
    assert!(j["eta_seconds"].is_number(), "{j}");

    // A second pause: `paused for` is this one, the total follows.
    assert!(cli(&db.url, &["pause", "nostats"]).status.success());
    wait_json_state(&db.url, "nostats", "paused", &daemon).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(cli(&db.url, &["resume", "nostats"]).status.success());
    wait_json_state(&db.url, "nostats", "running", &daemon).await;
    assert!(cli(&db.url, &["pause", "nostats"]).status.success());
    let j = wait_json_state(&db.url, "nostats", "paused", &daemon).await;
    let now = j["paused_for_seconds"].as_f64().unwrap_or(f64::NAN);
    let total = j["paused_seconds"].as_f64().unwrap_or_default();
    assert!(now < 2.0 && total >= 3.0, "this pause {now}, all pauses {total}: {j}");
    let text = status_text(&db.url, "nostats");
    assert!(text.contains("paused for ") && text.contains("paused in total"), "{text}");
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "log:\n{}", daemon.log());
}

fn text_of(out: &Output) -> String {
    text(out)
}

// ----- refused: recorded by the daemon, shown, counted, and failing --exit-when-done -----

#[tokio::test]
async fn a_refused_job_is_shown_counted_and_fails_exit_when_done() {
    let (db, pool) = database(TABLE).await;
    // The daemon runs as a role without UPDATE on the table: the spec is refused before it ever ran.
    let role = format!("{}_daemon", db.name);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN IN ROLE pg_monitor; GRANT SELECT ON t TO {role}; \
         GRANT CREATE ON DATABASE {} TO {role}",
        db.name
    )))
    .execute(&pool)
    .await
    .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url, "the test URL names its user: {}", db.url);
    let jobs = JobsDir::new();
    jobs.write("job", &slow("nogrant"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&url, jobs.path(), &["--metrics-addr", &addr, "--exit-when-done"]);
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(1), "a refused job fails the run; log:\n{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("nogrant (invalid)") || log.contains("nogrant"), "{log}");

    let j = status_json(&db.url, "nogrant");
    assert_eq!(j["state"], "refused", "{j}");
    let reason = j["refused"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("UPDATE"), "the reason names the missing privilege: {j}");
    let text = status_text(&db.url, "nogrant");
    assert!(text.contains("refused") && text.contains("refused since") && text.contains("UPDATE"), "{text}");

    // Metrics: a daemon left running shows the refusal in the gauge and the state label set.
    let mut daemon = Daemon::start(&url, jobs.path(), &["--metrics-addr", &addr]);
    let mut body = String::new();
    let ok = pgbackfill::localpg::poll_until(REACT, || {
        body = std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| scrape(port)).unwrap_or_default();
        let seen = sample(&body, "pgbackfill_jobs_refused", &[]) == Some(1.0);
        async move { seen }
    })
    .await;
    assert!(ok, "pgbackfill_jobs_refused never reached 1:\n{body}\nlog:\n{}", daemon.log());
    let state = |s: &str| sample(&body, "pgbackfill_job_state", &["job=\"nogrant\"", &format!("state=\"{s}\"")]);
    assert_eq!(state("refused"), Some(1.0), "{body}");
    for s in ["pending", "running", "held", "orphaned", "paused", "completed", "failed", "cancelled"] {
        assert_eq!(state(s), Some(0.0), "every state label is declared: {s}\n{body}");
    }

    // A refused spec whose file is removed is no longer shown.
    jobs.write("gone", "name: gone\ntable: no_such_table\nset:\n  n: '1'\n");
    wait_json_state(&db.url, "gone", "refused", &daemon).await;
    jobs.remove("gone");
    wait_until(REACT, "the refusal of a removed spec to be cleared", || async {
        cli(&db.url, &["status", "gone"]).status.code() == Some(2)
    })
    .await;

    // Granting the privilege clears the refusal: the job runs and completes.
    sqlx::query(AssertSqlSafe(format!("GRANT UPDATE ON t TO {role}"))).execute(&pool).await.unwrap();
    wait_state(&pool, "nogrant", "completed", DEADLINE, Some(&daemon)).await;
    let j = status_json(&db.url, "nogrant");
    assert_eq!(j["state"], "completed", "{j}");
    assert!(j["refused"].is_null(), "{j}");
    assert_eq!(j["verified"], true, "{j}");
    assert!(status_text(&db.url, "nogrant").contains("verified: no row"), "verified is said in words");
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "log:\n{}", daemon.log());
}

// ----- status of a job that does not exist, and before any daemon ran -----

#[tokio::test]
async fn status_of_an_unknown_job_fails_and_a_missing_schema_is_explained() {
    let (db, _pool) = database(TABLE).await;
    let out = cli(&db.url, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("progress schema `pgbackfill` does not exist"), "{}", text(&out));
    assert!(stderr(&out).contains("pgbackfill migrate"), "{}", text(&out));

    let out = cli(&db.url, &["migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&db.url, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("no jobs in the progress table"), "{}", text(&out));

    let out = cli(&db.url, &["status", "nosuchjob"]);
    assert_eq!(out.status.code(), Some(2), "like `pause nosuchjob`: {}", text(&out));
    assert!(stderr(&out).contains("no job named `nosuchjob`"), "{}", text(&out));
    let out = cli(&db.url, &["pause", "nosuchjob"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

// ----- an empty or missing jobs directory is an error -----

#[tokio::test]
async fn an_empty_or_missing_jobs_directory_is_an_error_unless_allowed() {
    let (db, _pool) = database(TABLE).await;
    let empty = JobsDir::new();
    std::fs::create_dir(empty.path().join("examples")).unwrap();
    std::fs::write(empty.path().join("examples/job.yaml"), slow("nested")).unwrap();
    let dir = empty.path().to_str().unwrap();

    let out = common::daemon::cli_offline(&["check", dir]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("no job specs (*.yaml, *.yml) in") && stderr(&out).contains("--allow-empty"),
        "{}",
        text(&out)
    );
    let out = common::daemon::cli_offline(&["check", "--allow-empty", dir]);
    assert!(out.status.success(), "{}", text(&out));

    let out = cli(&db.url, &["run", "--jobs", dir, "--exit-when-done", "--metrics-addr", ""]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("no job specs"), "{}", text(&out));
    assert!(!stderr(&out).contains("every job completed"), "{}", text(&out));
    let missing = format!("{dir}/nope");
    let out = cli(&db.url, &["run", "--jobs", &missing, "--exit-when-done", "--metrics-addr", ""]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", text(&out));
    let out = cli(&db.url, &["run", "--jobs", dir, "--allow-empty", "--exit-when-done", "--metrics-addr", ""]);
    assert!(out.status.success(), "--allow-empty: an empty directory is fine: {}", text(&out));
}

// ----- reset and forget ask first -----

#[tokio::test]
async fn reset_and_forget_need_confirmation_and_forget_removes_the_job() {
    let (db, pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    jobs.write("job", &slow("twice").replace("size: 10", "size: 1000"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());

    // No terminal and no --yes: refused, nothing changes.
    for verb in ["reset", "forget"] {
        let out = cli(&db.url, &[verb, "twice"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(stderr(&out).contains("pass --yes"), "{}", text(&out));
        assert_eq!(common::daemon::job_state(&pool, "twice").await.as_deref(), Some("completed"));
    }
    let out = cli(&db.url, &["reset", "--yes", "nosuchjob"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("no job named `nosuchjob`"), "{}", text(&out));

    let out = cli(&db.url, &["reset", "--yes", "twice"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("starts over"), "{}", text(&out));
    assert_eq!(common::daemon::job_state(&pool, "twice").await, None);

    // Forget: gone from the progress table and from status.
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());
    jobs.remove("job");
    let out = cli(&db.url, &["forget", "-y", "twice"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("removed from the progress table"), "{}", text(&out));
    let out = cli(&db.url, &["status", "twice"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

// ----- held: by what, named once per job -----

#[tokio::test]
async fn a_hold_on_transaction_age_names_the_session_and_is_logged_once_per_job() {
    let (db, _pool) = database(TABLE).await;
    // A long transaction from an application the operator can find by its name.
    let mut long = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("SET application_name = 'nightly-report'; BEGIN; SELECT txid_current();")
        .execute(&mut long)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut long).await.unwrap();
    let admin = db.pool().await;
    wait_until(REACT, "the transaction to be older than max_transaction_age", || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT clock_timestamp() - xact_start > interval '1.5s' FROM pg_stat_activity WHERE pid = $1",
        )
        .bind(pid)
        .fetch_optional(&admin)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
    })
    .await;
    let jobs = JobsDir::new();
    jobs.write(
        "job",
        &format!(
            "{}concurrency: 3\nthrottle:\n  max_transaction_age: 1s\n",
            slow("aged").replace("size: 10", "size: 500")
        ),
    );
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    let held = wait_json_state(&db.url, "aged", "held", &daemon).await;
    let by = held["held_by"].as_str().unwrap_or_default().to_string();
    assert!(by.contains(&format!("pid {pid}")) && by.contains("nightly-report"), "{held}");
    let text = status_text(&db.url, "aged");
    assert!(text.contains("held by: ") && text.contains("nightly-report"), "{text}");
    assert!(text.contains(&format!("oldest open transaction: pid {pid}")), "{text}");

    sqlx::Connection::close(long).await.unwrap();
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());
    let log = daemon.log();
    let ranges = log.matches("range claimed").count();
    assert!(ranges >= 2, "several range workers were held: {ranges}\n{log}");
    assert_eq!(log.matches("throttled: not writing").count(), 1, "one throttle message per job:\n{log}");
    assert!(!log.contains("outcome=NotRunning") && !log.contains("Failed(\""), "no Rust debug formatting:\n{log}");
}

// ----- help texts -----

#[test]
fn help_texts_describe_every_option_and_argument() {
    let help = |args: &[&str]| {
        let out = common::daemon::cli_offline(args);
        assert!(out.status.success(), "{}", text(&out));
        stdout(&out)
    };
    let status = help(&["status", "--help"]);
    assert!(status.contains("--json") && status.contains("same document the daemon serves at /status"), "{status}");
    assert!(status.contains("[NAME]") && status.contains("the `name:` in its spec"), "{status}");
    assert!(status.contains("refused") && status.contains("orphaned"), "the states are listed:\n{status}");
    let run = help(&["run", "--help"]);
    assert!(run.contains("*.yaml") && run.contains("*.yml") && run.contains("--allow-empty"), "{run}");
    for cmd in ["pause", "resume", "cancel", "reset", "forget"] {
        let h = help(&[cmd, "--help"]);
        assert!(h.contains("<NAME>") && h.contains("the `name:` in its spec"), "{cmd}:\n{h}");
    }
    for cmd in ["reset", "forget"] {
        assert!(help(&[cmd, "--help"]).contains("--yes"), "{cmd}");
    }
    let top = help(&["--help"]);
    for cmd in ["migrate", "forget", "check", "status"] {
        assert!(top.contains(cmd), "{cmd} missing:\n{top}");
    }
}

// ----- connection errors: immediate, naming the target, never the password -----

#[tokio::test]
async fn connection_errors_are_immediate_and_name_the_target_not_the_password() {
    let (db, _pool) = database(TABLE).await;
    let port = free_port();
    let closed = format!("postgres://app:zq9secret@127.0.0.1:{port}/appdb");
    let started = std::time::Instant::now();
    let out = cli(&closed, &["status"]);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert_eq!(
        err.trim(),
        format!("error: cannot connect to 127.0.0.1:{port}/appdb as app: Connection refused"),
        "{}",
        text(&out)
    );

    // A password with an unescaped `/`: refused with the fix, and no part of it shown.
    let out = cli(&format!("postgres://app:12/zq9@127.0.0.1:{port}/appdb"), &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("percent-encode") && stderr(&out).contains("%2F"), "{}", text(&out));
    assert!(!stderr(&out).contains("zq9"), "{}", text(&out));

    // A libpq key=value string works like the URL.
    let (host, rest) = db.url.trim_start_matches("postgres://postgres@").split_once(':').unwrap();
    let (db_port, name) = rest.split_once('/').unwrap();
    let kv = format!("host={host} port={db_port} dbname={name} user=postgres");
    let out = cli(&kv, &["migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&kv, &["status"]);
    assert!(out.status.success(), "{}", text(&out));

    // A daemon that cannot reach its database says why, and still exits 0 on SIGTERM.
    let jobs = JobsDir::new();
    jobs.write("job", &slow("unreachable"));
    let mut daemon = Daemon::start(&closed, jobs.path(), &[]);
    wait_until(REACT, "the daemon to report the refused connection", || {
        let log = daemon.log();
        async move { log.contains("cannot prepare the progress table yet") }
    })
    .await;
    let log = daemon.log();
    assert!(log.contains(&format!("cannot connect to 127.0.0.1:{port}/appdb as app: Connection refused")), "{log}");
    assert!(!log.contains("zq9secret") && !log.contains("os error"), "{log}");
    assert!(!log.contains("Connection refused: Connection refused"), "each cause once:\n{log}");
    let stopping = std::time::Instant::now();
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "log:\n{}", daemon.log());
    assert!(stopping.elapsed() < Duration::from_secs(3), "took {:?}", stopping.elapsed());
}

// ----- check: every problem, warnings, and the progress table -----

#[tokio::test]
async fn check_reports_every_problem_warns_and_compares_with_the_progress_table() {
    let (db, pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    // A bad `set` column and a bad `where`: both reported.
    let bad = jobs.write("bad", "name: bad\ntable: t\nset:\n  nope: '1'\n  n: no_such_fn(n)\nwhere: missing_col = 1\n");
    let out = cli(&db.url, &["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let o = stdout(&out);
    assert!(o.contains("set.nope") && o.contains("\"nope\""), "the bad set column:\n{o}");
    assert!(o.contains("where") && o.contains("missing_col"), "the bad where too:\n{o}");
    assert!(o.contains("set.n") && o.contains("no_such_fn"), "the bad set expression too:\n{o}");
    std::fs::remove_file(&bad).unwrap();

    // `n: n + 1` without `where`: not idempotent, a warning (exit 0).
    let twice = jobs.write("twice", "name: twice\ntable: t\nset:\n  n: n + 1\n");
    let out = cli(&db.url, &["check", twice.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("warning: ") && stdout(&out).contains("reads the column it writes"),
        "{}",
        text(&out)
    );
    let out = common::daemon::cli_offline(&["check", twice.to_str().unwrap()]);
    assert!(stdout(&out).contains("reads the column it writes"), "offline too: {}", text(&out));
    let guarded = jobs.write("guarded", "name: guarded\ntable: t\nset:\n  n: n + 1\nwhere: n = 0\n");
    let out = cli(&db.url, &["check", "--json", guarded.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["warnings"], serde_json::json!([]), "a where guards it: {v}");
    std::fs::remove_file(&guarded).unwrap();

    // A role without pg_monitor is warned.
    let role = format!("{}_viewer", db.name);
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE ROLE {role} LOGIN; GRANT SELECT ON t TO {role}")))
        .execute(&pool)
        .await
        .unwrap();
    let out = cli(&db.url.replacen("postgres@", &format!("{role}@"), 1), &["check", twice.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("lacks pg_monitor") && stdout(&out).contains(&format!("GRANT pg_monitor TO \"{role}\"")),
        "{}",
        text(&out)
    );

    // Run it, then change its meaning: check says the daemon would refuse it.
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());
    jobs.write("twice", "name: twice\ntable: t\nset:\n  n: n + 2\n");
    let out = cli(&db.url, &["check", jobs.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("different meaning") && stdout(&out).contains("pgbackfill reset twice"),
        "{}",
        text(&out)
    );
}

// ----- a sensitive key is never shown -----

#[tokio::test]
async fn a_key_marked_sensitive_is_not_shown_by_status() {
    let (db, _pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    jobs.write("job", &format!("{}key_sensitive: true\n", slow("hidden")));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_json_state(&db.url, "hidden", "running", &daemon).await;
    wait_until(REACT, "a first batch", || async { status_json(&db.url, "hidden")["batches"].as_i64() > Some(1) }).await;
    let j = status_json(&db.url, "hidden");
    assert!(j["key_position"].is_null() && j["key_sensitive"] == true, "{j}");
    let text = status_text(&db.url, "hidden");
    assert!(text.contains("key position hidden (key_sensitive)") && !text.contains("key at ("), "{text}");
    let out = cli(&db.url, &["status", "--json"]);
    assert!(!stdout(&out).contains("key_position\": ["), "{}", text_of(&out));
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "log:\n{}", daemon.log());
}

// ----- privileges: daemon, operator, viewer (README's grants, as they are) -----

/// The SQL block README marks `<!-- roles.sql -->`.
fn readme_roles_sql() -> String {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("<!-- roles.sql -->\n```sql\n").expect("README has the roles block")
        + "<!-- roles.sql -->\n```sql\n".len();
    let len = readme[start..].find("```").expect("the block ends");
    readme[start..start + len].to_string()
}

#[tokio::test]
async fn the_readme_roles_can_do_what_it_says_and_no_more() {
    let (db, pool) = database(TABLE).await;
    // The daemon's role, as deploy/sql/grants.sql makes it (here for table t).
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE ROLE pgbackfill LOGIN IN ROLE pg_monitor; GRANT CREATE ON DATABASE {} TO pgbackfill; \
         GRANT SELECT, UPDATE ON t TO pgbackfill",
        db.name
    )))
    .execute(&pool)
    .await
    .unwrap();
    let as_role = |role: &str| db.url.replacen("postgres@", &format!("{role}@"), 1);
    let jobs = JobsDir::new();
    jobs.write("job", &slow("roles").replace("size: 10", "size: 1000"));
    let mut daemon = Daemon::start(&as_role("pgbackfill"), jobs.path(), &["--exit-when-done"]);
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());
    sqlx::raw_sql(AssertSqlSafe(readme_roles_sql())).execute(&pool).await.expect("README's roles block");

    // Viewer: status (text and JSON), nothing else; no CREATE anywhere, so status runs no DDL.
    let viewer = as_role("pgbackfill_viewer");
    let out = cli(&viewer, &["status"]);
    assert!(out.status.success() && stdout(&out).contains("roles"), "{}", text(&out));
    assert!(cli(&viewer, &["status", "--json", "roles"]).status.success());
    let out = cli(&viewer, &["pause", "roles"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("permission denied for table jobs"), "{}", text(&out));
    assert!(!stderr(&out).contains("at line"), "{}", text(&out));
    let out = cli(&viewer, &["reset", "--yes", "roles"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(common::daemon::job_state(&pool, "roles").await.as_deref(), Some("completed"));

    // Operator: pause, resume, cancel, reset, forget.
    let operator = as_role("pgbackfill_operator");
    let out = cli(&operator, &["reset", "--yes", "roles"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut daemon = Daemon::start(&as_role("pgbackfill"), jobs.path(), &[]);
    wait_state(&pool, "roles", "running", REACT, Some(&daemon)).await;
    for (verb, state) in [("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")] {
        let out = cli(&operator, &[verb, "roles"]);
        assert!(out.status.success(), "{verb}: {}", text(&out));
        assert!(stdout(&out).contains(state), "{verb}: {}", text(&out));
    }
    daemon.terminate();
    assert_eq!(daemon.wait_exit(REACT).code(), Some(0), "log:\n{}", daemon.log());
    jobs.remove("job");
    let out = cli(&operator, &["forget", "--yes", "roles"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(common::daemon::job_state(&pool, "roles").await, None);
    // `migrate` on an up-to-date schema changes nothing, so it needs no privilege either.
    let out = cli(&operator, &["migrate"]);
    assert!(out.status.success() && stdout(&out).contains("up to date"), "{}", text(&out));
}

// ----- reset on a terminal asks for the job's name -----

/// Runs `pgbackfill ARGS` under `script`, which gives it a pseudo-terminal, typing `input`.
fn on_a_terminal(url: &str, args: &str, input: &str) -> Option<Output> {
    use std::process::{Command, Stdio};
    let command = format!("{} {args}", common::daemon::bin().display());
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DATABASE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input.as_bytes()).ok()?;
    child.wait_with_output().ok()
}

#[tokio::test]
async fn reset_on_a_terminal_goes_ahead_only_when_the_name_is_typed() {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` (a pseudo-terminal) is not installed");
        return;
    }
    let (db, pool) = database(TABLE).await;
    let jobs = JobsDir::new();
    jobs.write("job", &slow("asked").replace("size: 10", "size: 1000"));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert_eq!(daemon.wait_exit(DEADLINE).code(), Some(0), "log:\n{}", daemon.log());

    let out = on_a_terminal(&db.url, "reset asked", "nope\n").expect("script runs");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout(&out).contains("Type the job's name to confirm"), "{}", text(&out));
    assert!(stdout(&out).contains("not confirmed: nothing changed"), "{}", text(&out));
    assert_eq!(common::daemon::job_state(&pool, "asked").await.as_deref(), Some("completed"));

    let out = on_a_terminal(&db.url, "reset asked", "asked\n").expect("script runs");
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("progress forgotten"), "{}", text(&out));
    assert_eq!(common::daemon::job_state(&pool, "asked").await, None);
}
