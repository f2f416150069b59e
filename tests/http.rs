//! The daemon's HTTP endpoint, against the real binary and a real primary + standby: `/healthz`,
//! `/readyz` and `/status` in each state (running, database down and back, a wedged loop), the
//! metrics contract on a live scrape (every name, the right types, job series before the first
//! batch, `promtool check metrics`), and the `--metrics-addr` rules (host names, bind failure).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use common::daemon::{Daemon, JobsDir, cli, wait_state};
use common::{TestDb, cluster, wait_until};
use pgbackfill::metrics as m;

const DEADLINE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` over HTTP/1.0 at `host:port`: (status code, body); `None` if nothing answers.
async fn get(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((host, port))).await.ok()?.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut text)).await.ok()?.ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// Poll `path` until it answers `code` (and the body contains `needle`); the last answer.
async fn wait_for(port: u16, path: &str, code: u16, needle: &str, daemon: &Daemon) -> String {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < DEADLINE {
        last = get("127.0.0.1", port, path).await;
        if let Some((c, body)) = &last
            && *c == code
            && body.contains(needle)
        {
            return body.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{path} did not answer {code} with {needle:?} within {DEADLINE:?}; last: {last:?}\nlog:\n{}", daemon.log());
}

/// `items(id, v)` with `n` rows whose `v` the job fills.
async fn database(n: i64) -> (TestDb, PgPool) {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE items (id bigint PRIMARY KEY, v bigint)").execute(&pool).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("INSERT INTO items SELECT g, NULL FROM generate_series(1, {n}) g")))
        .execute(&pool)
        .await
        .unwrap();
    (db, pool)
}

/// A job over `items`; `extra` is appended (e.g. a `throttle:` section).
fn spec(name: &str, extra: &str) -> String {
    format!(
        "name: {name}\ntable: items\nset:\n  v: id * 2\nwhere: v IS NULL\n\
         batch:\n  size: 100\n  min_size: 10\n  max_size: 100\n{extra}"
    )
}

/// Held before its first batch, without disturbing the shared cluster: more streaming standbys
/// required than there are.
const HELD: &str = "throttle:\n  min_replicas: 5\n";

/// `# TYPE` of every metric family in a scrape.
fn types(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// Values of a metric's samples whose labels contain `label`.
fn samples(body: &str, metric: &str, label: &str) -> Vec<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, labels) = name_labels.split_once('{').unwrap_or((name_labels, ""));
            (name == metric && labels.contains(label)).then(|| value.parse().ok())?
        })
        .collect()
}

fn expected_type(name: &str) -> &'static str {
    if name == m::BATCH_DURATION {
        "histogram"
    } else if name.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    }
}

/// `promtool check metrics` on a scrape: `$PROMTOOL`, else `promtool` on PATH. Missing: a failure
/// when `PGBACKFILL_REQUIRE_TOOLS=1` (CI), otherwise a loud notice and only this part is skipped.
fn promtool_check(body: &str) {
    use std::io::Write;
    let candidates: Vec<String> = std::env::var("PROMTOOL").ok().into_iter().chain(["promtool".to_string()]).collect();
    let tool = candidates
        .into_iter()
        .find(|t| std::process::Command::new(t).arg("--version").output().is_ok_and(|o| o.status.success()));
    let Some(tool) = tool else {
        if std::env::var("PGBACKFILL_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("promtool not found ($PROMTOOL or PATH) and PGBACKFILL_REQUIRE_TOOLS=1");
        }
        eprintln!(
            "\n!!!!! NOTICE: promtool not found ($PROMTOOL or PATH): SKIPPING `promtool check metrics` \
             (the name and type checks still ran). Get it with: apt-get download prometheus && \
             dpkg-deb -x prometheus_*.deb /tmp/prom; export PROMTOOL=/tmp/prom/usr/bin/promtool !!!!!\n"
        );
        return;
    };
    let mut child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Running: a live scrape has every name of the contract with its type, the job's series exist
/// (at 0) before its first batch, and promtool accepts it; `/healthz` and `/readyz` answer 200;
/// `/status` is the JSON of `status --json`. `--metrics-addr` takes a host name.
#[tokio::test]
async fn running_daemon_serves_health_readiness_status_and_the_full_metrics_contract() {
    let (db, pool) = database(500).await;
    db.wait_on_standby().await;
    let jobs = JobsDir::new();
    jobs.write("j", &spec("held", HELD));
    let port = free_port();
    let addr = format!("localhost:{port}");
    let daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &addr]);

    // Before the first batch: the job is held (replicas) and has done nothing.
    wait_until(DEADLINE, "the job registered", || async { common::daemon::job_state(&pool, "held").await.is_some() })
        .await;
    let body = loop {
        let (code, body) = get("localhost", port, "/metrics").await.expect("/metrics answers on localhost");
        assert_eq!(code, 200, "{body}");
        // The throttle holds the job from its first check; wait for the gauge to say so.
        if samples(&body, m::THROTTLED, "reason=\"replicas\"") == vec![1.0] {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let found = types(&body);
    for name in m::ALL {
        // One series per `then` step: none for a job without steps.
        if *name == m::STEP_STATE {
            continue;
        }
        assert_eq!(found.get(*name).map(String::as_str), Some(expected_type(name)), "{name} in:\n{body}");
    }
    for o in m::BatchOutcome::ALL {
        let label = format!("job=\"held\",outcome=\"{}\"", o.label());
        assert_eq!(samples(&body, m::BATCHES, &label), vec![0.0], "{label}\n{body}");
    }
    for zero in [m::ROWS_UPDATED, m::ROWS_SCANNED, m::LOCK_TIMEOUTS] {
        assert_eq!(samples(&body, zero, "job=\"held\""), vec![0.0], "{zero}\n{body}");
    }
    assert_eq!(samples(&body, "pgbackfill_batch_duration_seconds_count", "job=\"held\""), vec![0.0], "{body}");
    assert_eq!(samples(&body, m::JOB_PROGRESS, "job=\"held\""), vec![0.0], "{body}");
    for gauge in [m::BATCH_SIZE, m::JOB_ETA, m::LAST_BATCH, m::THROTTLED_SECONDS, m::THROTTLE_SCALE] {
        assert_eq!(samples(&body, gauge, "job=\"held\"").len(), 1, "{gauge}\n{body}");
    }
    assert_eq!(samples(&body, m::JOB_STATE, "job=\"held\"").len(), m::JOB_STATES.len(), "{body}");
    assert_eq!(samples(&body, m::THROTTLED, "job=\"held\"").iter().sum::<f64>(), 1.0, "{body}");
    assert_eq!(samples(&body, m::REPLICA_LAG_BYTES, "replica=").len(), 1, "the shared cluster's standby\n{body}");
    assert_eq!(samples(&body, m::BUILD_INFO, "version=\"").len(), 1, "{body}");
    promtool_check(&body);

    let (code, health) = get("localhost", port, "/healthz").await.expect("/healthz");
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("supervisor") && health.contains("throttle"), "{health}");
    let (code, ready) = get("localhost", port, "/readyz").await.expect("/readyz");
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("progress schema at version"), "{ready}");

    // Paused: the state gauge and `pgbackfill_throttled{reason="paused"}` say so.
    let out = cli(&db.url, &["pause", "held"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    let body = loop {
        let (_, body) = get("localhost", port, "/metrics").await.expect("/metrics");
        if samples(&body, m::THROTTLED, "job=\"held\",reason=\"paused\"") == vec![1.0] || start.elapsed() > DEADLINE {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(samples(&body, m::THROTTLED, "job=\"held\",reason=\"paused\""), vec![1.0], "{body}");
    assert_eq!(samples(&body, m::JOB_STATE, "job=\"held\",state=\"paused\""), vec![1.0], "{body}");
    let out = cli(&db.url, &["resume", "held"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Let it run to completion, then /status must be what `status --json` prints.
    jobs.write("j", &spec("held", ""));
    wait_state(&pool, "held", "completed", DEADLINE, Some(&daemon)).await;
    let (code, served) = get("localhost", port, "/status").await.expect("/status");
    assert_eq!(code, 200, "{served}");
    let served_text = served.clone();
    let served: serde_json::Value = serde_json::from_str(&served).expect("/status is JSON");
    let out = cli(&db.url, &["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same keys in the same order, as a person comparing the two texts reads them.
    let key_order = |text: &str| {
        text.lines()
            .filter_map(|l| {
                l.trim_start().strip_prefix('"').and_then(|r| r.split_once("\":")).map(|(k, _)| k.to_string())
            })
            .collect::<Vec<_>>()
    };
    let printed_text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(key_order(&served_text).len() > 10, "{served_text}");
    assert_eq!(key_order(&served_text), key_order(&printed_text), "{served_text}\n{printed_text}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    // Leases of the finished ranges run out in between: `owners` may differ; everything else is equal.
    let jobs_without_owners = |v: &serde_json::Value| {
        let mut jobs = v["jobs"].clone();
        for j in jobs.as_array_mut().expect("jobs array") {
            j.as_object_mut().expect("job object").remove("owners");
        }
        jobs
    };
    assert_eq!(jobs_without_owners(&served), jobs_without_owners(&printed));
    let keys = |v: &serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(&served), keys(&printed));
    assert_eq!(keys(&served["replication"]), keys(&printed["replication"]));
    assert_eq!(served["jobs"][0]["state"], "completed", "{served}");

    // The daemon publishes state and progress at its next scan after completion.
    let start = Instant::now();
    let body = loop {
        let (_, body) = get("localhost", port, "/metrics").await.expect("/metrics");
        if samples(&body, m::JOB_STATE, "job=\"held\",state=\"completed\"") == vec![1.0] || start.elapsed() > DEADLINE {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(samples(&body, m::JOB_STATE, "job=\"held\",state=\"completed\""), vec![1.0], "{body}");
    assert_eq!(samples(&body, m::JOB_PROGRESS, "job=\"held\""), vec![1.0], "{body}");
    assert_eq!(samples(&body, m::JOB_ETA, "job=\"held\"").len(), 1, "{body}");
    assert_eq!(samples(&body, m::ROWS_UPDATED, "job=\"held\""), vec![500.0], "{body}");
    assert_eq!(samples(&body, m::THROTTLED, "job=\"held\"").iter().sum::<f64>(), 0.0, "{body}");
    promtool_check(&body);
}

/// A TCP forwarder to the primary that can be taken down (closing every connection, refusing new
/// ones) and brought back on the same port: the database going away and returning, as the daemon
/// sees it, without disturbing the shared cluster.
struct Proxy {
    port: u16,
    target: u16,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let mut p = Proxy { port: free_port(), target, accept: None, conns: Arc::default() };
        p.up().await;
        p
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("proxy bind");
        let (target, conns) = (self.target, self.conns.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        }));
    }

    fn down(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// Database down and back: `/readyz` and `/status` answer 503 with the reason while the database is
/// unreachable and 200 once it is back; `/healthz` stays 200 throughout (the loops keep going:
/// restarting the daemon would not bring the database back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_and_back() {
    let (db, pool) = database(100).await;
    let c = cluster().await;
    let mut proxy = Proxy::start(c.primary_port()).await;
    let url = db.url.replace(&format!(":{}/", c.primary_port()), &format!(":{}/", proxy.port));
    assert_ne!(url, db.url);
    let jobs = JobsDir::new();
    jobs.write("j", &spec("outage", HELD));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&url, jobs.path(), &["--metrics-addr", &addr]);
    wait_until(DEADLINE, "the job registered", || async { common::daemon::job_state(&pool, "outage").await.is_some() })
        .await;
    wait_for(port, "/readyz", 200, "ready", &daemon).await;
    wait_for(port, "/status", 200, "\"outage\"", &daemon).await;

    proxy.down();
    let reason = wait_for(port, "/readyz", 503, "not ready", &daemon).await;
    assert!(!reason.contains("ready: database answers"), "{reason}");
    let status = wait_for(port, "/status", 503, "\"error\"", &daemon).await;
    serde_json::from_str::<serde_json::Value>(&status).expect("the error is JSON too");
    // Liveness is not readiness: through 12 s of outage (longer than a pool acquire timeout, so
    // the supervisor's database calls have timed out meanwhile), /healthz stays 200.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(12) {
        let (code, body) = get("127.0.0.1", port, "/healthz").await.expect("/healthz answers");
        assert_eq!(code, 200, "during the outage: {body}\nlog:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    proxy.up().await;
    wait_for(port, "/readyz", 200, "progress schema at version", &daemon).await;
    wait_for(port, "/status", 200, "\"outage\"", &daemon).await;
    let (code, body) = get("127.0.0.1", port, "/healthz").await.expect("/healthz");
    assert_eq!(code, 200, "{body}");
    proxy.down();
}

/// A wedged loop, arranged for real: another session holds an exclusive lock on the progress
/// table's `jobs` in an open transaction, so the supervisor's next scan waits on that lock
/// with no end. `/healthz` turns 503 naming the supervisor loop (while `/readyz` stays 200: the
/// database answers), and 200 again once the lock is released.
///
/// The throttle loop cannot be wedged from outside: every poll is bounded by its own timeout.
#[tokio::test]
async fn a_wedged_supervisor_loop_fails_liveness_until_it_moves_again() {
    let (db, pool) = database(100).await;
    let jobs = JobsDir::new();
    jobs.write("j", &spec("wedge", HELD));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &addr]);
    wait_until(DEADLINE, "the job registered", || async { common::daemon::job_state(&pool, "wedge").await.is_some() })
        .await;
    wait_for(port, "/healthz", 200, "supervisor", &daemon).await;

    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    // Every scan reads the jobs table (registration only writes when a spec is new or changed), so
    // an exclusive lock on it, as a stray migration or VACUUM FULL would take, wedges the scan.
    sqlx::query("LOCK TABLE pgbackfill.jobs IN ACCESS EXCLUSIVE MODE").execute(&mut holder).await.unwrap();
    let reason = wait_for(port, "/healthz", 503, "supervisor loop has made no progress", &daemon).await;
    assert!(!reason.contains("throttle loop"), "{reason}");
    let (code, ready) = get("127.0.0.1", port, "/readyz").await.expect("/readyz");
    assert_eq!(code, 200, "the database answers: {ready}");

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    wait_for(port, "/healthz", 200, "supervisor", &daemon).await;
}

/// `--metrics-addr` on a port that is taken: the daemon exits at once (2), naming the address; so
/// does an address without a port. The default is 8590, clear of postgres_exporter's 9187.
#[tokio::test]
async fn a_taken_metrics_port_is_fatal_and_named() {
    let (db, _pool) = database(10).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let jobs = JobsDir::new();
    jobs.write("j", &spec("never", ""));
    let mut daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &addr]);
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{status:?}");
    let log = daemon.log();
    assert!(log.contains(&format!("cannot listen on {addr} (--metrics-addr)")), "{log}");
    assert!(!log.contains("pgbackfill starting"), "nothing runs unseen:\n{log}");
    drop(taken);

    let out = cli(&db.url, &["run", "--jobs", jobs.path().to_str().unwrap(), "--metrics-addr", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on nonsense (--metrics-addr)") && err.contains("HOST:PORT"), "{err}");

    let help = common::daemon::cli_offline(&["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 0.0.0.0:8590]"), "{help}");
}

/// `status --watch` redraws every second: each frame has the job's state, a progress bar, %, rows/s,
/// ETA and what holds it, and per-standby lag. Piped (not a terminal), frames follow each other
/// without screen-clearing escape codes.
#[tokio::test]
async fn status_watch_redraws_every_second_with_bar_rate_eta_reason_and_standby_lag() {
    let (db, pool) = database(1000).await;
    sqlx::query("ANALYZE items").execute(&pool).await.unwrap();
    db.wait_on_standby().await;
    let jobs = JobsDir::new();
    jobs.write("j", &spec("watched", HELD));
    let daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_until(DEADLINE, "the job held by the throttle", || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT throttle_reason FROM pgbackfill.jobs WHERE name = 'watched'")
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            .flatten()
            .is_some()
    })
    .await;

    let mut watch = std::process::Command::new(common::daemon::bin())
        .args(["status", "--watch"])
        .env("DATABASE_URL", &db.url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn status --watch");
    let mut stdout = watch.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // Three frames take a bit over two seconds; wait for them by polling the child, then stop it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let _ = std::process::Command::new("kill").arg("-INT").arg(watch.id().to_string()).status();
    let status = watch.wait().expect("wait for status --watch");
    let out = reader.join().expect("reader");
    assert!(status.success(), "Ctrl-C ends the watch cleanly: {status:?}\n{out}");
    let frames = out.matches("pgbackfill status --watch").count();
    assert!(frames >= 2, "{frames} frames in 3.5 s:\n{out}");
    assert!(!out.contains('\u{1b}'), "no escape codes when piped:\n{out}");
    let line = out.lines().find(|l| l.starts_with("watched")).unwrap_or_else(|| panic!("no job line:\n{out}"));
    assert!(line.contains("throttled") && line.contains("[--------------------]"), "{line}");
    assert!(line.contains("0.0%") && line.contains("rows/s") && line.contains("ETA"), "{line}");
    assert!(line.contains("throttled: ") && line.contains("min_replicas"), "{line}");
    assert!(out.contains("replication: ") && out.contains(" lag ") && out.contains("behind"), "{out}");
    drop(daemon);
}
