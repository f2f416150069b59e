//! The files under `deploy/` against the real binary and a real primary + standby: the job specs
//! they ship pass `check` and are all listed in their kustomizations, each `deploy/sql/` script is
//! enough to run a backfill, and every metric name the Grafana dashboard and the alerts query
//! exists in a live scrape. (`.ci/deploy` lints and validates the same files without a database.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, JobsDir, cli_offline, wait_state};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `pgbackfill` container (or native sidecar) of the workload in a manifest file.
fn pgbackfill_container(manifest: &str) -> serde_yaml::Value {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read(&repo(manifest))).unwrap_or_else(|e| panic!("{manifest}: {e}"));
    let pod = &doc["spec"]["template"]["spec"];
    ["containers", "initContainers"]
        .iter()
        .filter_map(|list| pod[*list].as_sequence())
        .flatten()
        .find(|c| c["name"].as_str() == Some("pgbackfill"))
        .cloned()
        .unwrap_or_else(|| panic!("{manifest}: no container named pgbackfill"))
}

/// The container's arguments for `Daemon::start`, which supplies `run` and `--jobs` itself:
/// those are dropped, and `--metrics-addr=…` becomes `metrics_addr` when given. Everything else
/// is passed as written, so a flag the binary does not accept fails the test.
fn manifest_args(manifest: &str, metrics_addr: Option<&str>) -> Vec<String> {
    let args: Vec<String> = pgbackfill_container(manifest)["args"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{manifest}: pgbackfill has no args"))
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{manifest}: {args:?}");
    // `--metrics-addr ADDR` as two words: Daemon::start recognises that form as overriding its own.
    args.into_iter()
        .skip(1)
        .filter(|a| !a.starts_with("--jobs"))
        .flat_map(|a| match (a.starts_with("--metrics-addr"), metrics_addr) {
            (true, Some(addr)) => vec!["--metrics-addr".to_string(), addr.to_string()],
            (true, None) => vec![],
            (false, _) => vec![a],
        })
        .collect()
}

/// The HTTP paths of the container's probes.
fn probe_paths(manifest: &str) -> Vec<String> {
    let c = pgbackfill_container(manifest);
    ["livenessProbe", "readinessProbe", "startupProbe"]
        .iter()
        .filter_map(|probe| c[*probe]["httpGet"]["path"].as_str().map(str::to_string))
        .collect()
}

/// The kustomize trees that ship job specs, each with its `jobs/` directory.
const TREES: &[&str] = &["deploy/base", "deploy/examples/sidecar", "deploy/examples/job"];

/// kustomize's configMapGenerator takes files, not directories, so a spec added to `jobs/` but not
/// to the kustomization would silently never reach the cluster. And every shipped spec is valid.
#[test]
fn shipped_job_specs_are_listed_in_their_kustomization_and_pass_check() {
    for tree in TREES {
        let dir = repo(tree);
        let kustomization: serde_yaml::Value = serde_yaml::from_str(&read(&dir.join("kustomization.yaml")))
            .unwrap_or_else(|e| panic!("{tree}/kustomization.yaml: {e}"));
        let listed: BTreeSet<String> = kustomization["configMapGenerator"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|generator| generator["files"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        let present: BTreeSet<String> = std::fs::read_dir(dir.join("jobs"))
            .unwrap_or_else(|e| panic!("{tree}/jobs: {e}"))
            .map(|entry| format!("jobs/{}", entry.expect("dir entry").file_name().to_string_lossy()))
            .collect();
        assert!(!present.is_empty(), "{tree}/jobs is empty");
        assert_eq!(listed, present, "{tree}: configMapGenerator files vs the files in jobs/");

        let jobs_dir = dir.join("jobs");
        let out = cli_offline(&["check", jobs_dir.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "pgbackfill check {tree}/jobs failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The grants scripts create the cluster-wide role `pgbackfill`: one test applies its script at a
/// time (two concurrent `GRANT pg_monitor` to one role can collide).
static GRANTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A database with the `public.orders` table of the shipped job, and `script` (a file of
/// deploy/sql/) applied to it by the superuser, as it is.
async fn orders_database(script: &str) -> (common::TestDb, PgPool) {
    let cluster = common::cluster().await;
    let db = cluster.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, fulfillment_channel text);
         INSERT INTO public.orders (id, customer_id) SELECT g, g % 17 FROM generate_series(1, 3000) g;",
    )
    .execute(&pool)
    .await
    .expect("create orders");
    if script.ends_with("precreated-schema.sql") {
        // The schema owner (here the superuser) creates the progress schema first.
        let out = common::daemon::cli(&db.url, &["migrate"]);
        assert!(out.status.success(), "pgbackfill migrate: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _one_at_a_time = GRANTS.lock().await;
    let sql = read(&repo(script));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap_or_else(|e| panic!("{script}: {e}"));
    (db, pool)
}

/// Runs the Job example (its spec directory, its arguments) as the role `pgbackfill` until it
/// exits, and checks it exited 0 with every row backfilled and the job completed.
async fn run_job_example_as_pgbackfill(db: &common::TestDb, pool: &PgPool) {
    // The cluster trusts loopback connections, so the role needs no password here.
    let url = db.url.replacen("postgres@", "pgbackfill@", 1);
    assert_ne!(url, db.url, "expected a postgres@ URL: {}", db.url);
    let args = manifest_args("deploy/examples/job/job.yaml", None);
    assert!(args.iter().any(|a| a == "--exit-when-done"), "{args:?}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = Daemon::start(&url, &repo("deploy/examples/job/jobs"), &args);
    let status = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "daemon exited with {status:?}; log:\n{}", daemon.log());
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.orders WHERE fulfillment_channel IS DISTINCT FROM 'web'")
            .fetch_one(pool)
            .await
            .expect("count");
    assert_eq!(left, 0, "rows not backfilled; log:\n{}", daemon.log());
    let state: String =
        sqlx::query_scalar("SELECT state FROM pgbackfill.jobs WHERE name = 'orders-fulfillment-channel'")
            .fetch_one(pool)
            .await
            .expect("job state");
    assert_eq!(state, "completed");
}

/// `deploy/sql/grants.sql`, run as it is, creates a role that can run the Job example from start
/// to end: progress schema, lag measurement (pg_monitor), the batches, the verification, exit 0.
/// CREATE on the database is needed once: revoked after the first run, the next run still works.
#[tokio::test]
async fn grants_sql_is_enough_to_run_the_shipped_job() {
    let (db, pool) = orders_database("deploy/sql/grants.sql").await;
    run_job_example_as_pgbackfill(&db, &pool).await;

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("REVOKE CREATE ON DATABASE \"{}\" FROM pgbackfill", db.name)))
        .execute(&pool)
        .await
        .expect("revoke");
    run_job_example_as_pgbackfill(&db, &pool).await;
}

/// `deploy/sql/grants-precreated-schema.sql`, after `pgbackfill migrate` by the schema owner: the
/// role has no CREATE privilege on the database or the schema, and still runs the job to the end.
#[tokio::test]
async fn grants_on_a_precreated_schema_are_enough_to_run_the_shipped_job() {
    let (db, pool) = orders_database("deploy/sql/grants-precreated-schema.sql").await;
    let (on_database, on_schema): (bool, bool) = sqlx::query_as(
        "SELECT has_database_privilege('pgbackfill', current_database(), 'CREATE'), \
                has_schema_privilege('pgbackfill', 'pgbackfill', 'CREATE')",
    )
    .fetch_one(&pool)
    .await
    .expect("privileges");
    assert_eq!((on_database, on_schema), (false, false));
    run_job_example_as_pgbackfill(&db, &pool).await;
}

/// Every `pgbackfill_*` name in the dashboard's queries (and its variables) and in the alert rules,
/// with whether some query selects it by `job=~"$job"` (then the series must carry `job`).
fn queried_metric_names() -> BTreeMap<String, bool> {
    let mut exprs = Vec::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&repo("deploy/grafana/pgbackfill.json"))).expect("dashboard JSON");
    collect_json_queries(&dashboard, &mut exprs);
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read(&repo("deploy/prometheus/rules.yml"))).expect("rules YAML");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() > 10, "found only {} queries: {exprs:?}", exprs.len());

    let mut names = BTreeMap::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("pgbackfill_") {
            let boundary = !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            let tail = &rest[at..];
            let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
            let (name, after) = tail.split_at(len);
            if boundary {
                let by_job = after.starts_with('{') && after[..after.find('}').unwrap_or(0)].contains("job=~\"$job\"");
                *names.entry(name.to_string()).or_insert(false) |= by_job;
            }
            rest = after;
        }
    }
    names
}

/// Dashboard queries: panel targets' `expr` and the query variables' `query` (string or object).
fn collect_json_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_json_queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_json_queries(item, out)),
        _ => {}
    }
}

/// `GET path` over plain HTTP/1.0: the status code and the body, or None while nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// `GET /metrics`: the body of a 200 answer.
fn scrape(port: u16) -> Option<String> {
    get(port, "/metrics").and_then(|(code, body)| (code == 200).then_some(body))
}

/// Sample names in an exposition, each with whether some sample of it has `job="<job>"`.
fn exposed(body: &str, job: &str) -> BTreeMap<String, bool> {
    let label = format!("job=\"{job}\"");
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = line[end..].split_once('}').map(|(l, _)| l).unwrap_or("");
        *out.entry(line[..end].to_string()).or_insert(false) |= labels.contains(&label);
    }
    out
}

/// Names that are queried but not exposed (or exposed without the job's `job` label).
fn missing(queried: &BTreeMap<String, bool>, scraped: &BTreeMap<String, bool>) -> Vec<String> {
    queried
        .iter()
        .filter_map(|(name, by_job)| match scraped.get(name) {
            None => Some(name.clone()),
            Some(has_job) if *by_job && !has_job => Some(format!("{name} (no series with the job's `job` label)")),
            Some(_) => None,
        })
        .collect()
}

/// The dashboard and the alerts query only names a running daemon exposes. Names are read from
/// the files, not listed here, so a renamed metric or a typo in a panel fails this test. The
/// daemon runs with the base Deployment's arguments, and answers its probes' paths with 200.
#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exposed() {
    let queried = queried_metric_names();
    assert!(queried.len() >= 8, "{queried:?}");

    let cluster = common::cluster().await;
    let db = cluster.new_database().await;
    let pool: PgPool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 2000) g;",
    )
    .execute(&pool)
    .await
    .expect("create t");
    let jobs = JobsDir::new();
    // Small batches with a pause: the job stays running for a few seconds, long enough to be
    // scraped with batches behind it.
    jobs.write(
        "scraped",
        "name: scraped\ntable: t\nset: {n: n + 1}\nwhere: n = 0\nbatch: {size: 100, pause: 200ms}\nthrottle: {max_lag: 30s}\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let args = manifest_args("deploy/base/deployment.yaml", Some(&addr));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&db.url, jobs.path(), &args);
    wait_state(&pool, "scraped", "running", DEADLINE, Some(&daemon)).await;

    // Poll: the throttle's first measurement and the first batches land within a few seconds.
    let start = Instant::now();
    let mut gaps;
    let mut last = String::new();
    loop {
        if let Some(body) = scrape(port) {
            gaps = missing(&queried, &exposed(&body, "scraped"));
            last = body;
        } else {
            gaps = vec!["(no answer from /metrics)".to_string()];
        }
        if gaps.is_empty() || start.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        gaps.is_empty(),
        "the dashboard or the alerts query names a live daemon does not expose: {gaps:?}\n\
         queried: {:?}\nscrape:\n{last}\ndaemon log:\n{}",
        queried.keys().collect::<Vec<_>>(),
        daemon.log()
    );

    // The probes of the Deployment and of the sidecar: a healthy daemon answers each with 200.
    let mut paths = probe_paths("deploy/base/deployment.yaml");
    assert!(paths.contains(&"/readyz".to_string()) && paths.contains(&"/healthz".to_string()), "{paths:?}");
    paths.extend(probe_paths("deploy/examples/sidecar/deployment.yaml"));
    for path in paths {
        let start = Instant::now();
        loop {
            let answer = get(port, &path);
            if matches!(answer, Some((200, _))) {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "probe {path} answered {answer:?}, not 200; daemon log:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
