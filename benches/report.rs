//! The benchmark program (issue 9): pgbackfill against the ways people backfill by hand, on a real
//! primary + streaming standby started like the tests' (`src/localpg.rs`), printing the tables of
//! BENCHMARKS.md and writing its SVG charts.
//!
//! ```sh
//! cargo bench --bench report                      # everything, the sizes of BENCHMARKS.md
//! BENCH_ROWS=50000 BENCH_FLAT_ROWS=200000 BENCH_REPS=1 cargo bench --bench report   # a smoke run
//! BENCH_ONLY=throughput,throttle cargo bench --bench report                      # some sections
//! ```
//!
//! Environment: `BENCH_ROWS` (throughput and application-impact tables, default 1,000,000),
//! `BENCH_REPS` (repetitions of the throughput table, default 3), `BENCH_FLAT_ROWS` (flatness,
//! default 10,000,000), `BENCH_ONLY` (comma-separated: cost, index, throughput, app, throttle, flat, footprint),
//! `BENCH_METHODS` (comma-separated parts of method labels: only those, and the single statement),
//! `BENCH_APP_REPS` (runs of the application-impact sequence, default 1), `BENCH_OUT` (where the
//! SVG charts go, default `benchmarks/`), `BENCH_LOG_DIR` (keep each pgbackfill run's log there).
//!
//! Method: every run gets a fresh copy of one template table (same physical order, vacuumed and
//! analyzed, checkpoint before), variants are alternated (the order rotates per repetition) and
//! the throughput table gives each repetition's ratio to the single statement of that same
//! repetition, and their median: timings on these machines vary ±15–30% from run to run.
//! pgbackfill is timed end to end: from process start to exit, with `--exit-when-done`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "report/stalls.rs"]
mod stalls;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plotters::prelude::*;
use sqlx::{AssertSqlSafe, PgPool};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn epoch_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string())).execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

// ----- the methods -----

#[derive(Debug, Clone)]
enum Method {
    /// `UPDATE t SET channel = 'web' WHERE channel IS NULL`.
    Single,
    /// A server-side `DO` loop over 10,000-id ranges, one COMMIT per range.
    DoLoop,
    /// A client loop of keyset batches of `rows` rows, each its own transaction, on one
    /// connection: 1,000 rows as teams write it by hand, 10,000 as pgbackfill's statements at that
    /// size with nothing else around them.
    ClientLoop { rows: i64 },
    /// pgbackfill with these `batch:` settings (YAML flow mapping, or empty for the defaults).
    /// `throttle`: extra `throttle:` settings (YAML flow-mapping entries), besides `max_lag: 1h`.
    Pgbackfill { label: &'static str, concurrency: usize, batch: &'static str, throttle: &'static str },
}

impl Method {
    /// pgbackfill with these `batch:` settings and no throttle extras.
    const fn pgbackfill(label: &'static str, concurrency: usize, batch: &'static str) -> Method {
        Method::Pgbackfill { label, concurrency, batch, throttle: "" }
    }

    /// For chart axes.
    fn short(&self) -> String {
        match self {
            Method::Single => "single".into(),
            Method::DoLoop => "DO loop".into(),
            Method::ClientLoop { rows } => format!("client {}k", rows / 1000),
            Method::Pgbackfill { label, .. } => {
                label.replace("pgbackfill ", "").replace(", ", " ").replace("-row batches", "").replace(" batches", "")
            }
        }
    }

    fn label(&self) -> String {
        match self {
            Method::Single => "single statement".into(),
            Method::DoLoop => "DO loop, 10k-id ranges".into(),
            Method::ClientLoop { rows } => format!("client loop, {}k-row batches", rows / 1000),
            Method::Pgbackfill { label, .. } => (*label).into(),
        }
    }
}

/// The methods compared; `BENCH_METHODS` (comma-separated parts of their labels) keeps some of
/// them, and always the single statement, which the ratios are to.
fn methods() -> Vec<Method> {
    let keep = std::env::var("BENCH_METHODS").unwrap_or_default();
    let mut all = all_methods();
    if !keep.is_empty() {
        all.retain(|m| matches!(m, Method::Single) || keep.split(',').any(|k| m.label().contains(k.trim())));
    }
    all
}

fn all_methods() -> Vec<Method> {
    vec![
        Method::Single,
        Method::DoLoop,
        Method::ClientLoop { rows: 1000 },
        Method::ClientLoop { rows: 10_000 },
        Method::pgbackfill("pgbackfill c=1, 10k-row batches", 1, "{size: 10000}"),
        Method::pgbackfill("pgbackfill c=2, 10k-row batches", 2, "{size: 10000}"),
        Method::pgbackfill("pgbackfill c=1, 2k-row batches", 1, "{size: 2000}"),
        Method::pgbackfill("pgbackfill c=1, default batches", 1, ""),
        Method::pgbackfill("pgbackfill c=1, target_time 200ms", 1, "{size: 10000, target_time: 200ms}"),
        Method::Pgbackfill {
            label: "pgbackfill c=1, target_time 200ms, max_rate 20000",
            concurrency: 1,
            batch: "{size: 10000, target_time: 200ms}",
            throttle: "max_rate: 20000",
        },
    ]
}

/// What one run of a method measured.
#[derive(Debug, Clone, Default)]
struct Run {
    secs: f64,
    /// pgbackfill only: peak RSS (KiB) and per-batch `(rows, ms, waiters)` from its log.
    peak_rss_kib: Option<u64>,
    batches: Vec<(f64, f64, f64)>,
    /// pgbackfill only: per batch, microseconds in each of [`PHASES`].
    phases: Vec<[f64; 7]>,
    /// pgbackfill only: [`timeline_from_log`].
    timeline: Option<(f64, f64, f64)>,
}

async fn run_method(env: &Env, method: &Method, table: &str) -> Run {
    let pool = &env.pool;
    match method {
        Method::Single => {
            let start = Instant::now();
            exec(pool, &format!("UPDATE {table} SET channel = 'web' WHERE channel IS NULL")).await;
            Run { secs: start.elapsed().as_secs_f64(), ..Run::default() }
        }
        Method::DoLoop => {
            let start = Instant::now();
            exec(
                pool,
                &format!(
                    "DO $$ DECLARE lo bigint; mx bigint; BEGIN
                       SELECT min(id) - 1, max(id) INTO lo, mx FROM {table};
                       WHILE lo < mx LOOP
                         UPDATE {table} SET channel = 'web' WHERE id > lo AND id <= lo + 10000 AND channel IS NULL;
                         lo := lo + 10000;
                         COMMIT;
                       END LOOP;
                     END $$"
                ),
            )
            .await;
            Run { secs: start.elapsed().as_secs_f64(), ..Run::default() }
        }
        Method::ClientLoop { rows } => {
            // One connection, as a hand-written loop has: the pool would hand each statement
            // another backend in turn, whose caches are cold (see `worker::WorkerConnection`).
            let mut conn = pool.acquire().await.expect("client loop: connection");
            let start = Instant::now();
            let mut cursor: i64 = 0;
            let next = format!("SELECT max(id) FROM (SELECT id FROM {table} WHERE id > $1 ORDER BY id LIMIT {rows}) s");
            let update = format!("UPDATE {table} SET channel = 'web' WHERE id > $1 AND id <= $2 AND channel IS NULL");
            loop {
                let last: Option<i64> = sqlx::query_scalar(AssertSqlSafe(next.as_str()))
                    .bind(cursor)
                    .fetch_one(&mut *conn)
                    .await
                    .expect("client loop: next slice");
                let Some(last) = last else { break };
                sqlx::query(AssertSqlSafe(update.as_str()))
                    .bind(cursor)
                    .bind(last)
                    .execute(&mut *conn)
                    .await
                    .expect("client loop: update");
                cursor = last;
            }
            Run { secs: start.elapsed().as_secs_f64(), ..Run::default() }
        }
        Method::Pgbackfill { concurrency, batch, throttle, .. } => {
            let batch = if batch.is_empty() { String::new() } else { format!("batch: {batch}\n") };
            let throttle = if throttle.is_empty() { String::new() } else { format!(", {throttle}") };
            let spec = format!(
                "name: {table}\ntable: {table}\nset:\n  channel: \"'web'\"\nwhere: channel IS NULL\n{batch}\
                 throttle: {{max_lag: 1h{throttle}}}\nconcurrency: {concurrency}\n"
            );
            let d = Daemon::run_to_end(&env.url, &[(table, spec.as_str())]).await;
            let phases = phases_from_log(&d.log);
            let timeline = timeline_from_log(&d.log);
            Run { secs: d.secs, peak_rss_kib: Some(d.peak_rss_kib), batches: d.batches, phases, timeline }
        }
    }
}

// ----- pgbackfill as a process -----

struct Daemon {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

struct Finished {
    secs: f64,
    peak_rss_kib: u64,
    batches: Vec<(f64, f64, f64)>,
    log: String,
}

impl Daemon {
    fn start(url: &str, jobs: &[(&str, &str)], extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let jobs_dir = dir.path().join("jobs");
        std::fs::create_dir(&jobs_dir).expect("jobs dir");
        for (name, yaml) in jobs {
            std::fs::write(jobs_dir.join(format!("{name}.yaml")), yaml).expect("write spec");
        }
        let log = dir.path().join("daemon.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_pgbackfill"))
            .args(["run", "--jobs"])
            .arg(&jobs_dir)
            .args(["--metrics-addr", ""])
            .args(extra)
            .env("DATABASE_URL", url)
            .env("PGBACKFILL_LOG", "info,pgbackfill=debug,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn pgbackfill");
        Daemon { child, log, _dir: dir }
    }

    /// Start with `--exit-when-done` and wait for the exit, sampling RSS every 50 ms.
    async fn run_to_end(url: &str, jobs: &[(&str, &str)]) -> Finished {
        let start = Instant::now();
        let mut d = Daemon::start(url, jobs, &["--exit-when-done"]);
        let mut peak = 0;
        let status = loop {
            if let Some(status) = d.child.try_wait().expect("try_wait") {
                break status;
            }
            peak = peak.max(rss_kib(d.child.id()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let secs = start.elapsed().as_secs_f64();
        let log = std::fs::read_to_string(&d.log).unwrap_or_default();
        assert!(status.success(), "pgbackfill failed:\n{log}");
        if let Ok(dir) = std::env::var("BENCH_LOG_DIR") {
            let name = jobs.first().map_or("daemon", |j| j.0);
            let _ = std::fs::write(Path::new(&dir).join(format!("{name}.log")), &log);
        }
        Finished { secs, peak_rss_kib: peak, batches: batches_from_log(&log), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The steps of a batch the daemon's debug log times (`{step}_us`), in order.
const PHASES: [&str; 7] = ["begin", "claim", "lag", "update", "waiters", "advance", "commit"];

/// Microseconds in each of [`PHASES`], per committed batch, from the daemon's debug log.
fn phases_from_log(log: &str) -> Vec<[f64; 7]> {
    log.lines()
        .filter(|l| l.contains("batch committed"))
        .filter_map(|l| {
            let mut out = [0.0; 7];
            for (i, p) in PHASES.iter().enumerate() {
                out[i] = log_field(l, &format!(" {p}_us="))?;
            }
            Some(out)
        })
        .collect()
}

/// `(rows scanned, ms, waiters)` of every committed batch, from the daemon's debug log.
fn batches_from_log(log: &str) -> Vec<(f64, f64, f64)> {
    log.lines()
        .filter(|l| l.contains("batch committed"))
        .filter_map(|l| Some((log_field(l, " scanned=")?, log_field(l, " ms=")?, log_field(l, " waiters=")?)))
        .collect()
}

/// Where a run's wall time went, from the daemon's log: `(start-up, key walk, completion check)` in
/// seconds. Start-up runs from the first line to the first range claimed (migrations, planning
/// the key ranges), the walk from there to the last range worker's end, the completion check
/// (verification) from there to "job completed".
fn timeline_from_log(log: &str) -> Option<(f64, f64, f64)> {
    let at = |l: &str| {
        chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next()?)
            .ok()
            .map(|t| t.timestamp_micros() as f64 / 1e6)
    };
    let first = log.lines().find_map(at)?;
    let claimed = log.lines().filter(|l| l.contains("range claimed")).find_map(at)?;
    let walked = log.lines().rev().filter(|l| l.contains("range worker finished")).find_map(at)?;
    let completed = log.lines().filter(|l| l.contains("job completed")).find_map(at)?;
    Some((claimed - first, walked - claimed, completed - walked))
}

/// The whole number after `key` (` name=`) in a log line.
fn log_field(line: &str, key: &str) -> Option<f64> {
    line.split(key).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

// ----- the environment -----

struct Env {
    cluster: common::Cluster,
    db: common::TestDb,
    pool: PgPool,
    url: String,
    out: PathBuf,
    pg_bin: PathBuf,
}

impl Env {
    /// A fresh copy of `template` named `table`: same rows in the same order, primary key, a
    /// secondary index, vacuumed and analyzed, replayed on the standby, checkpointed.
    async fn copy(&self, template: &str, table: &str) {
        self.copy_with(template, table, Some("customer_id")).await;
    }

    /// [`Self::copy`], with the secondary index on `column` (`{table}_secondary`), or none.
    async fn copy_with(&self, template: &str, table: &str, column: Option<&str>) {
        let index = column.map_or(String::new(), |c| format!("CREATE INDEX {table}_secondary ON {table} ({c});"));
        exec(
            &self.pool,
            &format!(
                "DROP TABLE IF EXISTS {table};
                 CREATE TABLE {table} AS SELECT * FROM {template} ORDER BY id;
                 ALTER TABLE {table} ADD PRIMARY KEY (id);
                 {index}"
            ),
        )
        .await;
        exec(&self.pool, &format!("VACUUM ANALYZE {table}")).await;
        self.settle().await;
    }

    /// Standby caught up, checkpoint done: every run starts from the same state.
    async fn settle(&self) {
        self.cluster.wait_standby_caught_up().await;
        exec(&self.pool, "CHECKPOINT").await;
    }
}

/// How the template's `customer_id` follows the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Customers {
    /// Pseudo-random (a hash of the row number), as in a real orders table: the secondary index
    /// gets its new entries all over, whatever the batch boundaries.
    Scattered,
    /// `g % 50000`, the previous reports' table: the same customer every 50,000 rows, so the
    /// index's insertions repeat exactly with the key walk, and how PostgreSQL's index cleanup
    /// behaves depends on where batch boundaries fall in that period (section "secondary index").
    Periodic,
}

/// The template: ~200-byte rows, sparse bigint keys (`4g + g % 3`), a secondary index on the copies,
/// and the new nullable column `channel` to fill.
async fn seed(pool: &PgPool, name: &str, rows: usize, customers: Customers) {
    // hashint8 is the built-in hash of int8 (stable across versions, as hash indexes need).
    let customer = match customers {
        Customers::Scattered => "(hashint8(g) & 2147483647) % 50000",
        Customers::Periodic => "g % 50000",
    };
    exec(
        pool,
        &format!(
            "CREATE TABLE {name} (
                id bigint NOT NULL, customer_id bigint NOT NULL, status text NOT NULL,
                total_cents bigint NOT NULL, created_at timestamptz NOT NULL, note text NOT NULL, channel text);
             INSERT INTO {name} SELECT 4 * g + g % 3, {customer}, (ARRAY['new','paid','shipped','done'])[1 + g % 4],
                (g * 7919) % 100000, timestamptz '2024-01-01' + g * interval '1 second',
                repeat(md5(g::text), 4), NULL FROM generate_series(1::bigint, {rows}) g;"
        ),
    )
    .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows = env_usize("BENCH_ROWS", 1_000_000);
    let reps = env_usize("BENCH_REPS", 3).max(1);
    let flat_rows = env_usize("BENCH_FLAT_ROWS", 10_000_000);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o.trim() == s);
    let out = PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| "benchmarks".into()));
    std::fs::create_dir_all(&out).expect("output directory");
    let began = Instant::now();

    let cluster = common::dedicated_cluster().await;
    {
        let mut admin = cluster.admin_conn().await;
        for setting in ["fsync = on", "synchronous_commit = on", "shared_buffers = '512MB'", "max_wal_size = '8GB'"] {
            sqlx::raw_sql(AssertSqlSafe(format!("ALTER SYSTEM SET {setting}")))
                .execute(&mut admin)
                .await
                .expect("alter system");
        }
    }
    cluster.restart_primary().await;
    let db = cluster.new_database().await;
    let pool = db.pool().await;
    let version: String = sqlx::query_scalar("SELECT version()").fetch_one(&pool).await.expect("version");
    let pg_bin = pgbackfill::localpg::find_pg_bin().expect("PostgreSQL binaries");
    let env = Env { url: db.url.clone(), cluster, db, pool, out, pg_bin };

    println!("# pgbackfill benchmark report\n");
    println!("- started: {} UTC", chrono::Utc::now().format("%Y-%m-%d %H:%M"));
    println!("- machine: {}", machine());
    println!("- PostgreSQL: {version}");
    println!(
        "- server: primary + one streaming hot standby on loopback (src/localpg.rs), fsync on, \
         synchronous_commit on, shared_buffers 512MB, max_wal_size 8GB, wal_receiver_status_interval 1s"
    );
    println!("- sizes: BENCH_ROWS={rows}, BENCH_REPS={reps}, BENCH_FLAT_ROWS={flat_rows}");

    // The sections most sensitive to other load on the machine (throughput, application impact)
    // run last.
    if want("throttle") {
        throttle_reaction(&env).await;
    }
    if want("flat") {
        flatness(&env, flat_rows).await;
    }
    let mut durations: BTreeMap<String, f64> = BTreeMap::new();
    let mut peak_rss: u64 = 0;
    if want("throughput") || want("app") || want("cost") || want("index") {
        eprintln!("seeding the template table with {rows} rows…");
        seed(&env.pool, "template", rows, Customers::Scattered).await;
        exec(&env.pool, "VACUUM ANALYZE template").await;
    }
    if want("index") {
        seed(&env.pool, "template_periodic", rows, Customers::Periodic).await;
        exec(&env.pool, "VACUUM ANALYZE template_periodic").await;
    }
    if want("cost") {
        batch_cost(&env).await;
    }
    if want("index") {
        secondary_index(&env, rows, reps).await;
    }
    if want("throughput") {
        let (d, rss) = throughput(&env, rows, reps).await;
        durations = d;
        peak_rss = rss;
    }
    if want("app") {
        app_impact(&env, rows, &durations).await;
    }
    if want("footprint") {
        footprint(&env, peak_rss).await;
    }
    println!("\n(total benchmark time {:.0} s)", began.elapsed().as_secs_f64());
    drop(env.db);
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .map(|k| k / 1024 / 1024)
        .unwrap_or(0);
    format!("{} CPUs ({cpu}), {mem} GiB RAM", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))
}

// ----- 1. throughput -----

async fn throughput(env: &Env, rows: usize, reps: usize) -> (BTreeMap<String, f64>, u64) {
    // A rate cap is an application-impact setting: its speed is the cap.
    let ms: Vec<Method> = methods()
        .into_iter()
        .filter(|m| !matches!(m, Method::Pgbackfill { throttle, .. } if throttle.contains("max_rate")))
        .collect();
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); ms.len()];
    let mut peak = 0u64;
    let mut per_batch: Vec<String> = Vec::new();
    let mut backend_time: Vec<String> = Vec::new();
    let mut index_mb: Vec<Vec<f64>> = vec![Vec::new(); ms.len()];
    let mut busy: Vec<Vec<f64>> = vec![Vec::new(); ms.len()];
    warm_up(env).await;
    for rep in 0..reps {
        for k in 0..ms.len() {
            let i = (k + rep) % ms.len();
            let table = format!("tp_{rep}_{i}");
            env.copy("template", &table).await;
            let sampler = if rep == 0 { Some(stalls::Sampler::start(&env.url, env.cluster.dir()).await) } else { None };
            let cpu0 = machine_cpu();
            let from = epoch_now();
            let run = run_method(env, &ms[i], &table).await;
            busy[i].push(machine_busy(cpu0, machine_cpu()));
            if let Some(sampler) = sampler {
                let window = (from, epoch_now());
                let samples = sampler.finish().await;
                let who = if matches!(ms[i], Method::Pgbackfill { .. }) { "pgbackfill" } else { "client backend" };
                let (states, autovacuum) = stalls::backend_states(&samples, who, window);
                let pressure = stalls::tally(&samples, |t| t >= window.0 && t <= window.1);
                backend_time.push(format!(
                    "| {} | {} | {:.0}% | {:.0}% | {:.0}% |",
                    ms[i].label(),
                    stalls::top(&states, 5, 0.02),
                    autovacuum * 100.0,
                    pressure.cpu_some * 100.0,
                    pressure.io_some * 100.0
                ));
            }
            let left = scalar_i64(&env.pool, &format!("SELECT count(*) FROM {table} WHERE channel IS NULL")).await;
            assert_eq!(left, 0, "{} left rows behind", ms[i].label());
            eprintln!("rep {rep}: {:<36} {:>7.2} s {:>9.0} rows/s", ms[i].label(), run.secs, rows as f64 / run.secs);
            if let Some(r) = run.peak_rss_kib {
                peak = peak.max(r);
            }
            if rep == 0 && !run.batches.is_empty() {
                let n = run.batches.len() as f64;
                let rows_per = run.batches.iter().map(|b| b.0).sum::<f64>() / n;
                let ms_per = run.batches.iter().map(|b| b.1).sum::<f64>() / n;
                let in_batches = run.batches.iter().map(|b| b.1).sum::<f64>() / 1000.0;
                let phases: Vec<String> = (0..PHASES.len())
                    .map(|p| {
                        let v: Vec<f64> = run.phases.iter().map(|b| b[p] / 1000.0).collect();
                        format!("{:.2}", v.iter().sum::<f64>() / v.len().max(1) as f64)
                    })
                    .collect();
                let timeline = run.timeline.map_or("–".to_string(), |(up, walk, check)| {
                    format!("{up:.2} / {walk:.2} / {check:.2} / {:.2}", run.secs - up - walk - check)
                });
                per_batch.push(format!(
                    "| {} | {} | {:.0} | {:.1} | {} | {:.2} s of {:.2} s | {timeline} |",
                    ms[i].label(),
                    run.batches.len(),
                    rows_per,
                    ms_per,
                    phases.join(" / "),
                    in_batches,
                    run.secs
                ));
            }
            secs[i].push(run.secs);
            index_mb[i].push(index_size_mb(env, &format!("{table}_secondary")).await);
            exec(&env.pool, &format!("DROP TABLE {table}")).await;
        }
    }
    println!("\n## Throughput\n");
    println!(
        "{rows} rows, fresh identical copies, methods alternated, {reps} repetition(s). Ratio: the single \
         statement's time over the method's, within each repetition; the table shows the median.\n"
    );
    let mut header =
        "| method | median s | median rows/s | median ratio | ratios per repetition | secondary index after, MB | CPU busy (all cores) |"
            .to_string();
    header.push_str("\n|---|---|---|---|---|---|---|");
    println!("{header}");
    let mut durations = BTreeMap::new();
    let mut chart: Vec<(String, f64)> = Vec::new();
    for (i, m) in ms.iter().enumerate() {
        let ratios: Vec<f64> = (0..reps).map(|r| secs[0][r] / secs[i][r]).collect();
        let med = median(&secs[i]);
        let ratio = median(&ratios);
        println!(
            "| {} | {:.2} | {:.0} | {:.2} | {} | {:.1} | {:.0}% |",
            m.label(),
            med,
            rows as f64 / med,
            ratio,
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", "),
            median(&index_mb[i]),
            median(&busy[i]) * 100.0
        );
        durations.insert(m.label(), med);
        chart.push((m.short(), ratio));
    }
    println!("\nBatches of the first repetition (from the daemon's log, summed over workers; the rest of the");
    println!("time is start-up, the gaps between batches, verification and exit). The steps: a pooled connection,");
    println!("BEGIN and the SET LOCALs / locking the range row / the lag read / the batch statement / the lock-waiter");
    println!("check / the cursor advance / COMMIT. The run's wall time, from the log's timestamps: start-up (to the");
    println!("first range claimed) / the key walk (to the last range worker's end) / the completion check / the rest");
    println!("(process start and exit).\n");
    println!(
        "| method | batches | rows/batch | ms/batch | mean ms per step: {} | time in batches | wall s: start-up / walk / check / rest |",
        PHASES.join(" / ")
    );
    println!("|---|---|---|---|---|---|---|");
    for line in per_batch {
        println!("{line}");
    }
    println!(
        "\nWhere the server spent the first repetition: the method's backends (pgbackfill's sessions, or the \
         benchmark's own connection for the others) sampled every {} ms in `pg_stat_activity`, on CPU \
         (`running`) or their wait event; how often an autovacuum worker was busy; the kernel's pressure-stall \
         shares (some task waiting for a CPU, for I/O).\n",
        stalls::PERIOD.as_millis()
    );
    println!("| method | the method's backends | autovacuum busy | CPU pressure | I/O pressure |");
    println!("|---|---|---|---|---|");
    for line in backend_time {
        println!("{line}");
    }
    bar_chart(
        &env.out.join("throughput.svg"),
        &format!("Throughput relative to the single statement ({rows} rows, median of {reps})"),
        "× single statement",
        &chart,
        Some(1.0),
    );
    (durations, peak)
}

/// The first write-heavy run on a fresh cluster creates its WAL segment files; later runs recycle
/// them. Measured: the first single statement of a run took 10.6 s, the next ones 6.1–6.8 s. One
/// discarded run first, so that no method pays for it.
async fn warm_up(env: &Env) {
    env.copy("template", "warm_up").await;
    exec(&env.pool, "UPDATE warm_up SET channel = 'web' WHERE channel IS NULL").await;
    exec(&env.pool, "DROP TABLE warm_up").await;
}

/// `(busy, total)` jiffies of all cores, from /proc/stat.
fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Share of all cores' time that was busy between two [`machine_cpu`] readings.
fn machine_busy(a: (u64, u64), b: (u64, u64)) -> f64 {
    (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64
}

async fn index_size_mb(env: &Env, index: &str) -> f64 {
    sqlx::query_scalar::<_, i64>("SELECT pg_relation_size(to_regclass($1))")
        .bind(index)
        .fetch_one(&env.pool)
        .await
        .map_or(f64::NAN, |b| b as f64 / 1048576.0)
}

// ----- 1a. the secondary index -----

/// One kind of copy in [`secondary_index`]: its template, its secondary index, and which of the
/// section's methods run on it.
struct IndexVariant {
    template: &'static str,
    column: Option<&'static str>,
    label: &'static str,
    /// Indexes into the section's methods.
    methods: &'static [usize],
}

/// What the secondary index does to the per-row cost of batches: the single statement and
/// pgbackfill on copies that differ only in their secondary index.
///
/// When a batch commits, the old versions of its rows are dead to everyone; a later batch that
/// inserts into a full leaf page holding their entries makes PostgreSQL try to delete them first
/// (bottom-up index deletion, PostgreSQL 14+): CPU in the updating backend, and an index that
/// splits less. The single statement's old versions stay alive until it commits, so its leaf
/// pages just split. On the previous reports' table (`customer_id = g % 50000`) every leaf page
/// gets its new entries in one burst per 50,000 rows, always at the same point of the walk, and
/// whether those bursts find deletable entries depends on where the batch boundaries fall in
/// that period. Measured by hand on this program's table (a client loop of a keyset slice and a
/// range UPDATE, each its own transaction, backend CPU from /proc, 2026-12-07): batches of 10,000
/// rows took 8.0–9.1 s of CPU and left the index at 13.2 MB (9 of 10 runs), batches of 9,999 or
/// 10,001 rows 6.7–6.9 s and 15.5 MB, as the single statement (5.0–6.0 s, 15.5 MB). On a copy
/// with scattered customers all of them ended at 16.0 MB. Batches of 9,999 rows show it here.
async fn secondary_index(env: &Env, rows: usize, reps: usize) {
    let ms = [
        Method::Single,
        Method::pgbackfill("pgbackfill c=1, 10k-row batches", 1, "{size: 10000}"),
        Method::pgbackfill("pgbackfill c=1, 9,999-row batches", 1, "{size: 9999}"),
    ];
    let variants = [
        IndexVariant {
            template: "template",
            column: Some("customer_id"),
            label: "on `customer_id`, scattered (the tables above)",
            methods: &[0, 1],
        },
        IndexVariant {
            template: "template_periodic",
            column: Some("customer_id"),
            label: "on `customer_id` = `g % 50000` (the previous reports' table)",
            methods: &[0, 1, 2],
        },
        IndexVariant {
            template: "template",
            column: Some("created_at"),
            label: "on `created_at` (in key order)",
            methods: &[0, 1],
        },
        IndexVariant { template: "template", column: None, label: "none", methods: &[0, 1] },
    ];
    let runs: Vec<(usize, usize)> =
        variants.iter().enumerate().flat_map(|(v, x)| x.methods.iter().map(move |&i| (v, i))).collect();
    // [variant][method] -> seconds per repetition, and the index's size after
    let mut secs = vec![vec![Vec::new(); ms.len()]; variants.len()];
    let mut index_mb = vec![vec![Vec::new(); ms.len()]; variants.len()];
    warm_up(env).await;
    for rep in 0..reps {
        for k in 0..runs.len() {
            let (v, i) = runs[(k + rep) % runs.len()];
            let table = format!("ix_{rep}_{v}_{i}");
            env.copy_with(variants[v].template, &table, variants[v].column).await;
            let run = run_method(env, &ms[i], &table).await;
            eprintln!("index rep {rep}: {:<60} {:<36} {:.2} s", variants[v].label, ms[i].label(), run.secs);
            secs[v][i].push(run.secs);
            index_mb[v][i].push(index_size_mb(env, &format!("{table}_secondary")).await);
            exec(&env.pool, &format!("DROP TABLE {table}")).await;
        }
    }
    println!("\n## What the secondary index costs batches\n");
    println!(
        "{rows} rows, the single statement and pgbackfill (c=1) on fresh copies that differ only in their \
         secondary index, alternated, {reps} repetition(s), medians; ratio: the single statement's time over \
         pgbackfill's on the same kind of copy, within each repetition.\n"
    );
    println!(
        "| secondary index | single statement s | 10k-row batches s | ratio | 9,999-row batches s | ratio | index after: single / 10k / 9,999, MB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (v, variant) in variants.iter().enumerate() {
        let has = |i: usize| variant.methods.contains(&i);
        let ratio = |i: usize| {
            if has(i) {
                format!("{:.2}", median(&(0..reps).map(|r| secs[v][0][r] / secs[v][i][r]).collect::<Vec<_>>()))
            } else {
                "–".into()
            }
        };
        let s = |i: usize| if has(i) { format!("{:.2}", median(&secs[v][i])) } else { "–".into() };
        let mb = |i: usize| {
            if has(i) && variant.column.is_some() { format!("{:.1}", median(&index_mb[v][i])) } else { "–".into() }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} / {} / {} |",
            variant.label,
            s(0),
            s(1),
            ratio(1),
            s(2),
            ratio(2),
            mb(0),
            mb(1),
            mb(2)
        );
    }
}

// ----- 1b. where a batch's time goes -----

async fn batch_cost(env: &Env) {
    use pgbackfill::batch::{KeyColumn, Target};
    env.copy("template", "cost").await;
    let target = Target {
        table: pgbackfill::ident::QualifiedName { schema: Some("public".into()), name: "cost".into() },
        key: vec![KeyColumn { name: "id".into(), sql_type: "bigint".into() }],
        set: BTreeMap::from([("channel".to_string(), "'web'".to_string())]),
        where_: Some("channel IS NULL".into()),
        operator_schema: "pg_catalog".into(),
    };
    let statements = target.statements();
    let explain = |sql: &str| format!("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) {sql}");
    let (slice_sql, update_sql) = (explain(&statements.next_slice), explain(&statements.next_update));
    let (lo, hi): (i64, i64) =
        sqlx::query_as("SELECT min(id), max(id) FROM cost").fetch_one(&env.pool).await.expect("bounds");
    println!("\n## Where a batch's time goes\n");
    println!(
        "EXPLAIN (ANALYZE, BUFFERS, WAL) of pgbackfill's two batch statements on a fresh copy, at 20%, 40% and \
         60% of the table, rolled back. The slice walks the key index for the batch's keys and returns the last; \
         the UPDATE walks the same key range again and changes the rows. Planning, execution, WAL and buffers are \
         the two statements' sums.\n"
    );
    println!(
        "| rows | planning ms | execution ms | slice (1st walk) ms | UPDATE (2nd walk) ms | WAL MB | WAL FPI | buffers hit / read / dirtied |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, limit) in [2_000i64, 10_000, 50_000].into_iter().enumerate() {
        let cursor = (lo + (hi - lo) * (i as i64 + 1) / 5).to_string();
        let mut tx = env.pool.begin().await.expect("begin");
        let slice: serde_json::Value = sqlx::query_scalar(AssertSqlSafe(slice_sql.as_str()))
            .bind(&cursor)
            .bind(hi.to_string())
            .bind(limit)
            .fetch_one(&mut *tx)
            .await
            .expect("explain the slice");
        let (_, last): (i64, Option<Vec<String>>) = sqlx::query_as(AssertSqlSafe(statements.next_slice.as_str()))
            .bind(&cursor)
            .bind(hi.to_string())
            .bind(limit)
            .fetch_one(&mut *tx)
            .await
            .expect("the slice");
        let last = last.and_then(|l| l.into_iter().next()).unwrap_or_else(|| hi.to_string());
        let update: serde_json::Value = sqlx::query_scalar(AssertSqlSafe(update_sql.as_str()))
            .bind(&cursor)
            .bind(&last)
            .fetch_one(&mut *tx)
            .await
            .expect("explain the update");
        tx.rollback().await.expect("rollback");
        let (s, u) = (&slice[0], &update[0]);
        let sum = |top: &str, plan: &str| -> f64 {
            [s, u]
                .iter()
                .map(|t| if top.is_empty() { t["Plan"][plan].as_f64() } else { t[top].as_f64() })
                .map(|v| v.unwrap_or(0.0))
                .sum()
        };
        println!(
            "| {limit} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} / {} / {} |",
            sum("Planning Time", ""),
            sum("Execution Time", ""),
            s["Execution Time"].as_f64().unwrap_or(f64::NAN),
            u["Execution Time"].as_f64().unwrap_or(f64::NAN),
            sum("", "WAL Bytes") / 1e6,
            sum("", "WAL FPI"),
            sum("", "Shared Hit Blocks"),
            sum("", "Shared Read Blocks"),
            sum("", "Shared Dirtied Blocks"),
        );
    }
    // Fixed costs of every batch: a round trip, and a commit that writes (its WAL flush).
    let mut conn = env.pool.acquire().await.expect("conn");
    let start = Instant::now();
    for _ in 0..500 {
        sqlx::query("SELECT 1").execute(&mut *conn).await.expect("select 1");
    }
    let rtt = start.elapsed().as_secs_f64() / 500.0 * 1e3;
    let start = Instant::now();
    for i in 0..100i64 {
        sqlx::query("UPDATE cost SET total_cents = total_cents WHERE id = $1")
            .bind(lo + i * 4)
            .execute(&mut *conn)
            .await
            .expect("commit");
    }
    let commit = start.elapsed().as_secs_f64() / 100.0 * 1e3;
    println!(
        "\nFixed costs per batch: a round trip takes {rtt:.3} ms; a one-row write transaction (its commit \
         waits for the WAL flush) {commit:.2} ms. pgbackfill's batch makes 8 round trips (BEGIN with \
         its SET LOCALs, claim check, lag read, the slice, the UPDATE, lock-waiter check, cursor advance, \
         COMMIT)."
    );
    drop(conn);
    exec(&env.pool, "DROP TABLE cost").await;
}

// ----- 2. application impact -----

#[derive(Debug, Default, Clone)]
struct Latencies {
    /// Per script (0 = select, 1 = update): latencies in ms.
    by_script: [Vec<f64>; 2],
    /// Every transaction: (scheduled start, end) in epoch seconds, and latency in ms.
    spans: Vec<(f64, f64, f64)>,
}

impl Latencies {
    fn p99(&self) -> f64 {
        pct(&[self.by_script[0].clone(), self.by_script[1].clone()].concat(), 0.99)
    }

    /// The tally of the samples inside the window's slowest 1% of transactions, and of the whole window.
    fn stalls(&self, samples: &stalls::Samples, window: (f64, f64)) -> (stalls::Tally, stalls::Tally) {
        let p99 = self.p99();
        let mut slow: Vec<(f64, f64)> = self.spans.iter().filter(|s| s.2 >= p99).map(|s| (s.0, s.1)).collect();
        slow.sort_by(|a, b| a.0.total_cmp(&b.0));
        let inside = |t: f64| slow.iter().any(|(a, b)| t >= *a && t <= *b);
        (stalls::tally(samples, inside), stalls::tally(samples, |t| t >= window.0 && t <= window.1))
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

struct Pgbench {
    child: Child,
    dir: tempfile::TempDir,
}

impl Pgbench {
    fn start(env: &Env, table: &str, rows: usize, clients: u32, rate: Option<f64>, secs: u64) -> Pgbench {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("select.sql"),
            format!("\\set g random(1, {rows})\n\\set id 4 * :g + :g % 3\nSELECT * FROM {table} WHERE id = :id;\n"),
        )
        .expect("script");
        std::fs::write(
            dir.path().join("update.sql"),
            format!(
                "\\set g random(1, {rows})\n\\set id 4 * :g + :g % 3\nUPDATE {table} SET total_cents = total_cents + 1 WHERE id = :id;\n"
            ),
        )
        .expect("script");
        let mut cmd = Command::new(env.pg_bin.join("pgbench"));
        cmd.current_dir(dir.path())
            .args(["-n", "-h", "127.0.0.1", "-U", "postgres", "-j", "2"])
            .args(["-p", &env.cluster.primary_port().to_string()])
            .args(["-c", &clients.to_string(), "-T", &secs.to_string()])
            .args(["-f", "select.sql@1", "-f", "update.sql@1", "-l", "--log-prefix=lat"]);
        if let Some(r) = rate {
            cmd.args(["-R", &format!("{r:.0}")]);
        }
        let child = cmd.arg(&env.db.name).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("pgbench");
        Pgbench { child, dir }
    }

    /// Wait for the end; tps from its summary, and the latencies of transactions that started in
    /// `[from, to]` (epoch seconds).
    fn finish(self, window: Option<(f64, f64)>) -> (f64, Latencies) {
        self.collect(window, false)
    }

    /// Stop it now (SIGINT): what it logged so far is on disk, except the last few buffered lines,
    /// which come after the windows when the caller waited a little past them. The latencies of
    /// transactions that started in each window.
    fn stop(self, windows: &[(f64, f64)]) -> Vec<Latencies> {
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        self.collect_windows(windows, true).1
    }

    fn collect(self, window: Option<(f64, f64)>, stopped: bool) -> (f64, Latencies) {
        let (tps, mut lat) = self.collect_windows(&[window.unwrap_or((f64::MIN, f64::MAX))], stopped);
        (tps, lat.pop().unwrap_or_default())
    }

    fn collect_windows(self, windows: &[(f64, f64)], stopped: bool) -> (f64, Vec<Latencies>) {
        let out = self.child.wait_with_output().expect("pgbench");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(stopped || out.status.success(), "pgbench failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        let tps = text
            .lines()
            .find(|l| l.starts_with("tps"))
            .and_then(|l| l.split('=').nth(1)?.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN);
        let mut lat = vec![Latencies::default(); windows.len()];
        for entry in std::fs::read_dir(self.dir.path()).expect("pgbench dir").flatten() {
            if !entry.file_name().to_string_lossy().starts_with("lat") {
                continue;
            }
            for line in std::fs::read_to_string(entry.path()).unwrap_or_default().lines() {
                // client_id transaction_no time script_no time_epoch time_us [schedule_lag]
                let f: Vec<&str> = line.split_whitespace().collect();
                let (Some(us), Some(script), Some(ep), Some(ep_us)) = (
                    f.get(2).and_then(|v| v.parse::<f64>().ok()),
                    f.get(3).and_then(|v| v.parse::<usize>().ok()),
                    f.get(4).and_then(|v| v.parse::<f64>().ok()),
                    f.get(5).and_then(|v| v.parse::<f64>().ok()),
                ) else {
                    continue;
                };
                // The log time is the end of the transaction; latency counts from its scheduled start.
                let started = ep + ep_us / 1e6 - us / 1e6;
                if script > 1 {
                    continue;
                }
                for (w, (a, b)) in windows.iter().enumerate() {
                    if started >= *a && started <= *b {
                        lat[w].by_script[script].push(us / 1000.0);
                        lat[w].spans.push((started, ep + ep_us / 1e6, us / 1000.0));
                    }
                }
            }
        }
        (tps, lat)
    }
}

/// Seconds of the load alone before each method (its baseline).
const ALONE_SECS: u64 = 12;

/// One application-impact run of a method: (backfill rows/s, p99 ms, p99 vs the load just before,
/// p99 vs the load's median p99 alone).
type AppRun = (f64, f64, f64, f64);

async fn app_impact(env: &Env, rows: usize, durations: &BTreeMap<String, f64>) {
    // Capacity: flat out, 4 clients, 10 s, on a fresh copy.
    env.copy("template", "app").await;
    let pg = Pgbench::start(env, "app", rows, 4, None, 10);
    let (capacity, _) = tokio::task::spawn_blocking(move || pg.finish(None)).await.expect("pgbench");
    let rate = (capacity * 0.3).round();
    eprintln!("pgbench capacity {capacity:.0} tps; the load runs at {rate:.0} tps");
    // (method, backfill rows/s, latencies, load covered the run, pgbackfill's batches and CPU busy)
    let mut table: Vec<(String, Option<f64>, Latencies, bool, String)> = Vec::new();
    // Each method's paired baseline: the load alone on its table just before it.
    let mut baselines: Vec<Latencies> = Vec::new();
    let mut shorts: Vec<String> = vec!["alone".into()];
    // The method of each row (its label without the repetition's `#n`).
    let mut methods_of: Vec<String> = vec!["no backfill".into()];

    // What the slowest transactions waited on: (label, in the slowest 1%, whole window) per window.
    let mut waits: Vec<(String, stalls::Tally, stalls::Tally)> = Vec::new();

    // Alone.
    env.settle().await;
    let sampler = stalls::Sampler::start(&env.url, env.cluster.dir()).await;
    let pg = Pgbench::start(env, "app", rows, 8, Some(rate), ALONE_SECS + 3);
    let from = epoch_now() + 3.0;
    let (_, lat) = tokio::task::spawn_blocking(move || pg.finish(Some((from, f64::MAX)))).await.expect("pgbench");
    let samples = sampler.finish().await;
    let (slow, whole) = lat.stalls(&samples, (from, f64::MAX));
    waits.push(("no backfill".into(), slow, whole));
    baselines.push(lat.clone());
    table.push(("no backfill".into(), None, lat, true, "– | –".into()));
    exec(&env.pool, "DROP TABLE app").await;

    // `BENCH_APP_REPS`: the methods' sequence again, for A/B comparisons on a noisy disk.
    let app_reps = env_usize("BENCH_APP_REPS", 1).max(1);
    let sequence: Vec<(String, Method)> = (0..app_reps)
        .flat_map(|rep| {
            methods().into_iter().map(move |m| {
                let label = if app_reps > 1 { format!("{} #{}", m.label(), rep + 1) } else { m.label() };
                (label, m)
            })
        })
        .collect();
    for (i, (label, m)) in sequence.into_iter().enumerate() {
        let t = format!("app_{i}");
        env.copy("template", &t).await;
        // pgbench runs longer than the backfill should take; only transactions that started while
        // it ran count. Under the load it is slower than alone, hence the margin.
        let guess = durations.get(&m.label()).copied().unwrap_or(rows as f64 / 10_000.0);
        let secs = (guess * 6.0 + 60.0) as u64 + ALONE_SECS;
        let sampler = stalls::Sampler::start(&env.url, env.cluster.dir()).await;
        let pg = Pgbench::start(env, &t, rows, 8, Some(rate), secs);
        // The same load on the same table, alone, just before: this method's own baseline (one
        // baseline for the whole table made every ratio hang on one noisy 15 s window).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let alone_from = epoch_now();
        tokio::time::sleep(Duration::from_secs(ALONE_SECS)).await;
        let from = epoch_now();
        let cpu0 = machine_cpu();
        let run = run_method(env, &m, &t).await;
        let busy = machine_busy(cpu0, machine_cpu());
        let to = epoch_now();
        let covered = to < alone_from - 3.0 + secs as f64;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut lat =
            tokio::task::spawn_blocking(move || pg.stop(&[(alone_from, from), (from, to)])).await.expect("pgbench");
        let (during, before) = (lat.pop().unwrap_or_default(), lat.pop().unwrap_or_default());
        let samples = sampler.finish().await;
        let (slow, whole) = before.stalls(&samples, (alone_from, from));
        waits.push((format!("{label}, alone just before"), slow, whole));
        let (slow, whole) = during.stalls(&samples, (from, to));
        waits.push((label.clone(), slow, whole));
        eprintln!("app impact: {label:<36} {:.1} s, {:.0} rows/s", run.secs, rows as f64 / run.secs);
        let batches = if run.batches.is_empty() {
            "–".to_string()
        } else {
            let rows_per: Vec<f64> = run.batches.iter().map(|b| b.0).collect();
            let ms_per: Vec<f64> = run.batches.iter().map(|b| b.1).collect();
            let waited = run.batches.iter().filter(|b| b.2 > 0.0).count();
            format!("{} / {:.0} rows / {:.0} ms / {waited}", run.batches.len(), median(&rows_per), median(&ms_per))
        };
        baselines.push(before);
        table.push((
            label.clone(),
            Some(rows as f64 / run.secs),
            during,
            covered,
            format!("{batches} | {:.0}%", busy * 100.0),
        ));
        shorts.push(m.short());
        methods_of.push(m.label());
        exec(&env.pool, &format!("DROP TABLE {t}")).await;
    }

    println!("\n## Application impact\n");
    println!(
        "pgbench at a fixed {rate:.0} tps (30% of the {capacity:.0} tps it reached flat out with 4 clients), 8 \
         clients, half point SELECTs and half single-row UPDATEs by id on the table being backfilled ({rows} \
         rows). Latency in ms from each transaction's scheduled start (open loop), of the transactions \
         that started while the method ran. Each method's baseline is the same load on the same table during \
         the {ALONE_SECS} s just before it started (paired); `no backfill` is a separate {ALONE_SECS} s run. CPU busy: \
         share of both cores while the method ran.\n"
    );
    println!(
        "| method | backfill rows/s | vs its speed without load | SELECT p50 | SELECT p99 | SELECT max | UPDATE p50 | UPDATE p99 | UPDATE max | p99 just before, alone | p99 vs just before | p99 vs median alone | batches / median rows / median ms / with a waiter | CPU busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let p99 = |lat: &Latencies| pct(&[lat.by_script[0].clone(), lat.by_script[1].clone()].concat(), 0.99);
    // The load's own p99 varies a lot from window to window on these machines (its commits wait
    // for the disk): the median over every window alone is the steadier reference.
    let alone_p99s: Vec<f64> = baselines.iter().map(p99).collect();
    let alone_median = median(&alone_p99s);
    let mut chart = Vec::new();
    let mut per_method: Vec<(String, Vec<AppRun>)> = Vec::new();
    for ((((label, rps, lat, covered, batches), short), baseline), method) in
        table.iter().zip(&shorts).zip(&baselines).zip(&methods_of)
    {
        let alone_p99 = p99(baseline);
        let all = [lat.by_script[0].clone(), lat.by_script[1].clone()].concat();
        let (s, u) = (&lat.by_script[0], &lat.by_script[1]);
        let unloaded = durations.get(method).map(|secs| rows as f64 / secs);
        let p99_all = pct(&all, 0.99);
        let entry = (rps.unwrap_or(f64::NAN), p99_all, p99_all / alone_p99, p99_all / alone_median);
        match per_method.iter_mut().find(|(m, _)| m == method) {
            Some((_, v)) => v.push(entry),
            None => per_method.push((method.clone(), vec![entry])),
        }
        println!(
            "| {label}{} | {} | {} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} | {:.1} | {alone_p99:.2} | {:.1}× | {:.1}× | {batches} |",
            if *covered { "" } else { " (load ended first)" },
            rps.map_or("–".into(), |r| format!("{r:.0}")),
            match (rps, unloaded) {
                (Some(r), Some(u)) => format!("{:.0}%", r / u * 100.0),
                _ => "–".into(),
            },
            pct(s, 0.5),
            pct(s, 0.99),
            pct(s, 1.0),
            pct(u, 0.5),
            pct(u, 0.99),
            pct(u, 1.0),
            entry.2,
            entry.3
        );
        chart.push((short.clone(), pct(&all, 0.5), p99_all, pct(&all, 1.0)));
    }
    println!(
        "\nThe load alone: p99 {:.2} ms at the median of its {} windows (from {:.2} to {:.2} ms).",
        alone_median,
        alone_p99s.len(),
        alone_p99s.iter().copied().fold(f64::INFINITY, f64::min),
        alone_p99s.iter().copied().fold(0.0, f64::max)
    );
    if app_reps > 1 {
        println!("\nMedians over the {app_reps} runs of each method (each against its own paired baseline):\n");
        println!(
            "| method | runs | backfill rows/s | p99 ms | p99 vs just before | p99 vs median alone | p99 vs median alone, per run |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (method, runs) in per_method.iter().skip(1) {
            let col = |f: fn(&AppRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
            println!(
                "| {method} | {} | {:.0} | {:.2} | {:.1}× | {:.1}× | {} |",
                runs.len(),
                col(|r| r.0),
                col(|r| r.1),
                col(|r| r.2),
                col(|r| r.3),
                runs.iter().map(|r| format!("{:.1}×", r.3)).collect::<Vec<_>>().join(", ")
            );
        }
    }
    latency_chart(&env.out.join("app-latency.svg"), &chart);

    println!("\n### What the slowest transactions waited on\n");
    println!(
        "Sampled every {} ms from `pg_stat_activity` (the application's active sessions: on CPU (`running`) or \
         their wait event; other processes that were not idle) and the kernel's pressure-stall counters \
         (`/proc/pressure`: share of wall time in which some task waited for a CPU, or for I/O). `slowest 1%`: \
         the samples taken while a transaction at or over the window's p99 was in flight; `window`: all of \
         the window's samples.\n",
        stalls::PERIOD.as_millis()
    );
    println!(
        "| window | samples slowest 1% / window | app sessions, slowest 1% | app sessions, window | CPU pressure slowest 1% / window | I/O pressure (some) slowest 1% / window | disk probe fdatasync p99 / max ms, slowest 1% | same, window | other processes, slowest 1% |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, slow, whole) in &waits {
        println!(
            "| {label} | {} / {} | {} | {} | {:.0}% / {:.0}% | {:.0}% / {:.0}% | {:.1} / {:.1} | {:.1} / {:.1} | {} |",
            slow.samples,
            whole.samples,
            stalls::top(&slow.app, 4, 0.03),
            stalls::top(&whole.app, 4, 0.03),
            slow.cpu_some * 100.0,
            whole.cpu_some * 100.0,
            slow.io_some * 100.0,
            whole.io_some * 100.0,
            slow.fsync.0,
            slow.fsync.1,
            whole.fsync.0,
            whole.fsync.1,
            stalls::top(&slow.others, 5, 0.1),
        );
    }
}

// ----- 3. throttle reaction -----

async fn throttle_reaction(env: &Env) {
    // Enough rows that the job is still running when replay resumes: 400,000 were done before the
    // crossing on a quiet machine.
    let rows = 1_500_000;
    seed(&env.pool, "thr", rows, Customers::Scattered).await;
    exec(&env.pool, "ALTER TABLE thr ADD PRIMARY KEY (id)").await;
    exec(&env.pool, "VACUUM ANALYZE thr").await;
    env.settle().await;
    let spec = "name: thr\ntable: thr\nset:\n  channel: \"'web'\"\nwhere: channel IS NULL\n\
                batch: {size: 5000}\nthrottle: {max_lag: 2s, max_lag_bytes: 16MB}\n";
    let mut daemon = Daemon::start(&env.url, &[("thr", spec)], &[]);
    let t0 = Instant::now();
    let mut samples: Vec<(f64, i64, f64, f64)> = Vec::new(); // t, rows, lag s, lag MB
    let sample = |pool: PgPool| async move {
        let (rows, bytes, secs): (i64, Option<i64>, Option<f64>) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(rows_updated), 0)::int8 FROM pgbackfill.ranges WHERE job = 'thr'), \
                    (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::int8 FROM pg_stat_replication), \
                    (SELECT extract(epoch FROM max(replay_lag))::float8 FROM pg_stat_replication)",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or((0, None, None));
        (rows, bytes.unwrap_or(0), secs.unwrap_or(0.0))
    };
    // Running: three seconds of unthrottled batches.
    while t0.elapsed() < Duration::from_secs(3) || samples.last().is_none_or(|s| s.1 == 0) {
        let (r, b, s) = sample(env.pool.clone()).await;
        samples.push((t0.elapsed().as_secs_f64(), r, s, b as f64 / 1e6));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(t0.elapsed() < Duration::from_secs(60), "the job did not start:\n{}", daemon.log());
    }
    env.cluster.pause_replay().await;
    let paused_at = t0.elapsed().as_secs_f64();
    // The crossing, as seen on the primary: replay_lag over 2 s or byte lag over 16 MB.
    let mut crossing: Option<(f64, i64)> = None;
    let held_rows: i64;
    loop {
        let (r, b, s) = sample(env.pool.clone()).await;
        let t = t0.elapsed().as_secs_f64();
        samples.push((t, r, s, b as f64 / 1e6));
        if crossing.is_none() && (s > 2.0 || b > 16 * 1024 * 1024) {
            crossing = Some((t, r));
        }
        if let Some((tc, _)) = crossing
            && t > tc + 4.0
        {
            held_rows = r;
            break;
        }
        assert!(t < 120.0, "the lag never crossed its limit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (cross_t, cross_rows) = crossing.unwrap_or((0.0, 0));
    env.cluster.resume_replay().await;
    let resumed_at = t0.elapsed().as_secs_f64();
    let mut moved_at = None;
    while t0.elapsed().as_secs_f64() < resumed_at + 30.0 {
        let (r, b, s) = sample(env.pool.clone()).await;
        let t = t0.elapsed().as_secs_f64();
        samples.push((t, r, s, b as f64 / 1e6));
        if moved_at.is_none() && r > held_rows {
            moved_at = Some(t);
        }
        if moved_at.is_some_and(|m| t > m + 3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.terminate();
    println!("\n## Throttle reaction\n");
    println!(
        "5,000-row batches, `max_lag: 2s`, `max_lag_bytes: 16MB`, lag polled every second (the default). \
         WAL replay paused on the standby at t={paused_at:.1} s; the benchmark watches the primary \
         (`pg_stat_replication`) every 20 ms for the crossing of either limit.\n"
    );
    println!(
        "| crossing seen at | rows committed after the crossing | batches (5,000 rows) | replay resumed at | first commit after resume | seconds to resume |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| t={cross_t:.2} s | {} | {:.1} | t={resumed_at:.2} s | {} | {} |",
        held_rows - cross_rows,
        (held_rows - cross_rows) as f64 / 5000.0,
        moved_at.map_or("–".into(), |m| format!("t={m:.2} s")),
        moved_at.map_or("did not resume within 30 s".into(), |m| format!("{:.2}", m - resumed_at))
    );
    throttle_chart(&env.out.join("throttle.svg"), &samples, paused_at, cross_t, resumed_at);
    exec(&env.pool, "DROP TABLE thr").await;
}

// ----- 4. flatness -----

async fn flatness(env: &Env, rows: usize) {
    eprintln!("seeding the flatness table with {rows} rows…");
    exec(
        &env.pool,
        &format!(
            "CREATE TABLE flat (id bigint NOT NULL, note text NOT NULL, channel text);
             INSERT INTO flat SELECT 4 * g + g % 3, md5(g::text), NULL FROM generate_series(1::bigint, {rows}) g;
             ALTER TABLE flat ADD PRIMARY KEY (id);"
        ),
    )
    .await;
    // `BENCH_FLAT_AUTOVACUUM=off`: without autovacuum on the table, for a run that tells its share.
    if std::env::var("BENCH_FLAT_AUTOVACUUM").is_ok_and(|v| v == "off") {
        exec(&env.pool, "ALTER TABLE flat SET (autovacuum_enabled = off)").await;
    }
    exec(&env.pool, "VACUUM ANALYZE flat").await;
    env.settle().await;
    let spec = "name: flat\ntable: flat\nset:\n  channel: \"'web'\"\nwhere: channel IS NULL\n\
                batch: {size: 10000}\nthrottle: {max_lag: 1h}\n";
    // What the server does besides the batches, sampled during the run: buffers written by
    // backends (a dirty page evicted to make room: shared_buffers is a quarter of this table) and
    // autovacuum working on the table.
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (pool, stop) = (env.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples: Vec<(f64, i64, bool)> = Vec::new();
            while !stop.is_cancelled() {
                let row: Option<(i64, bool)> = sqlx::query_as(
                    "SELECT (SELECT buffers_backend FROM pg_stat_bgwriter), \
                            EXISTS (SELECT 1 FROM pg_stat_progress_vacuum WHERE relid = to_regclass('flat'))",
                )
                .fetch_one(&pool)
                .await
                .ok();
                if let Some((written, vacuum)) = row {
                    samples.push((epoch_now(), written, vacuum));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            samples
        })
    };
    let d = Daemon::run_to_end(&env.url, &[("flat", spec)]).await;
    stop.cancel();
    let samples = sampler.await.unwrap_or_default();
    let ms: Vec<f64> = d.batches.iter().map(|b| b.1).collect();
    let tenth = (ms.len() / 10).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let (first, last) = (mean(&ms[..tenth.min(ms.len())]), mean(&ms[ms.len().saturating_sub(tenth)..]));
    // Each batch's end (epoch seconds), from the log, to place the samples.
    let ends: Vec<f64> = d
        .log
        .lines()
        .filter(|l| l.contains("batch committed"))
        .filter_map(|l| chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok())
        .map(|t| t.timestamp_micros() as f64 / 1e6)
        .collect();
    let window = |from: usize, to: usize| -> String {
        window_written(&samples, &ends, from, to)
            .map_or("–".into(), |(written, vacuuming)| format!("{written:.0} / {:.0}%", vacuuming * 100.0))
    };
    let n = ends.len();
    let (first_extra, last_extra) =
        (window(0, tenth.min(n.saturating_sub(1))), window(n.saturating_sub(tenth + 1), n.saturating_sub(1)));
    println!("\n## Flatness\n");
    println!(
        "{rows} rows (~{} MB: id, a 32-character note, the new column), fixed 10,000-row batches, one worker.\n",
        scalar_i64(&env.pool, "SELECT pg_total_relation_size('flat') / 1000000").await
    );
    println!(
        "| batches | total s | first 10%: ms/batch | last 10%: ms/batch | last / first | first 10%: buffers written by backends per batch / time autovacuum ran on the table | last 10%: same |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} | {first:.1} | {last:.1} | {:.2} | {first_extra} | {last_extra} |",
        ms.len(),
        d.secs,
        last / first
    );
    // Every tenth, to tell a cursor that slows with progress (time rising throughout) from a
    // change of the server's state partway (a step, e.g. once shared buffers hold no clean pages).
    let tenths: Vec<(f64, String)> = (0..10)
        .map(|t| {
            let (from, to) = (t * ms.len() / 10, (t + 1) * ms.len() / 10);
            let written = if to > from { window(from, to - 1) } else { "–".into() };
            (mean(&ms[from..to]), written)
        })
        .collect();
    println!(
        "\nEach tenth of the batches, in order: mean ms per batch / buffers written by backends per batch / \
         time autovacuum ran on the table.\n"
    );
    println!("| {} |", (1..=10).map(|t| format!("{t}")).collect::<Vec<_>>().join(" | "));
    println!("|{}", "---|".repeat(10));
    println!("| {} |", tenths.iter().map(|(m, w)| format!("{m:.1} / {w}")).collect::<Vec<_>>().join(" | "));
    exec(&env.pool, "DROP TABLE flat").await;
}

/// Buffers written by backends per batch between the ends of batches `from` and `to`, and the
/// share of that time autovacuum worked on the table, from the flatness sampler's
/// `(epoch, buffers_backend, vacuuming)` readings.
fn window_written(samples: &[(f64, i64, bool)], ends: &[f64], from: usize, to: usize) -> Option<(f64, f64)> {
    let (a, b) = (ends.get(from)?, ends.get(to)?);
    let inside: Vec<&(f64, i64, bool)> = samples.iter().filter(|s| s.0 >= *a && s.0 <= *b).collect();
    let (x, y) = (inside.first()?, inside.last()?);
    let vacuuming = inside.iter().filter(|s| s.2).count() as f64 / inside.len() as f64;
    Some(((y.1 - x.1) as f64 / (to - from).max(1) as f64, vacuuming))
}

// ----- 5. footprint -----

async fn footprint(env: &Env, running_peak_kib: u64) {
    let mut jobs = Vec::new();
    for i in 0..10 {
        exec(
            &env.pool,
            &format!(
                "CREATE TABLE idle_{i} (id bigint PRIMARY KEY, channel text);
                 INSERT INTO idle_{i} SELECT g, NULL FROM generate_series(1, 1000) g;"
            ),
        )
        .await;
        // Held by the throttle (one standby, two required): loaded, claimed, and waiting.
        jobs.push((
            format!("idle_{i}"),
            format!(
                "name: idle-{i}\ntable: idle_{i}\nset:\n  channel: \"'web'\"\nwhere: channel IS NULL\n\
                 throttle: {{min_replicas: 2}}\n"
            ),
        ));
    }
    let refs: Vec<(&str, &str)> = jobs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut daemon = Daemon::start(&env.url, &refs, &["--max-jobs", "10"]);
    let start = Instant::now();
    loop {
        // (The progress schema appears once the daemon has started.)
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pgbackfill.jobs WHERE throttle_reason IS NOT NULL AND name LIKE 'idle-%'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap_or(0);
        if held == 10 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "jobs not all held:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = daemon.child.id();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let xacts = "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = current_database()";
    let x0 = scalar_i64(&env.pool, xacts).await;
    let (c0, t0) = (cpu_ticks(pid).unwrap_or(0), Instant::now());
    let mut rss_max = 0;
    while t0.elapsed() < Duration::from_secs(20) {
        rss_max = rss_max.max(rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu = (cpu_ticks(pid).unwrap_or(0) - c0) as f64 / ticks_per_s / t0.elapsed().as_secs_f64() * 100.0;
    // Statistics reach pg_stat_database within a second; the benchmark's own two reads are noise.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tps = (scalar_i64(&env.pool, xacts).await - x0) as f64 / (t0.elapsed().as_secs_f64() - 1.5);
    daemon.terminate();
    println!("\n## Footprint\n");
    println!("| state | RSS | CPU | transactions/s on the database |");
    println!("|---|---|---|---|");
    println!(
        "| 10 jobs loaded and waiting (held by the throttle), 20 s | {:.1} MB | {cpu:.2}% of one core | {tps:.0} |",
        rss_max as f64 / 1024.0
    );
    if running_peak_kib > 0 {
        println!("| running (peak over the throughput runs) | {:.1} MB | – | – |", running_peak_kib as f64 / 1024.0);
    }
}

// ----- charts -----

fn bar_chart(path: &Path, title: &str, y_label: &str, bars: &[(String, f64)], reference: Option<f64>) {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let max = bars.iter().map(|b| b.1).filter(|v| v.is_finite()).fold(1.2f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..bars.len() as f64, 0f64..max)
        .expect("chart");
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let _ = chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 { labels.get(i).cloned().unwrap_or_default() } else { String::new() }
        })
        .x_label_style(("sans-serif", 11))
        .y_desc(y_label)
        .draw();
    let _ = chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        let v = if v.is_finite() { *v } else { 0.0 };
        Rectangle::new([(i as f64 + 0.15, 0.0), (i as f64 + 0.85, v)], BLUE.mix(0.6).filled())
    }));
    let _ = chart.draw_series(
        bars.iter()
            .enumerate()
            .map(|(i, (_, v))| Text::new(format!("{v:.2}"), (i as f64 + 0.3, v + max * 0.02), ("sans-serif", 13))),
    );
    if let Some(r) = reference {
        let _ = chart.draw_series(LineSeries::new([(0.0, r), (bars.len() as f64, r)], RED.stroke_width(2)));
    }
    let _ = root.present();
}

/// p50, p99 and max of the load's latency per method, on a log scale.
fn latency_chart(path: &Path, rows: &[(String, f64, f64, f64)]) {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let max = rows.iter().map(|r| r.3).filter(|v| v.is_finite()).fold(10.0f64, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("Application latency during each method (pgbench at 30% load)", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..rows.len() as f64, (0.1f64..max).log_scale())
        .expect("chart");
    let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let _ = chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 { labels.get(i).cloned().unwrap_or_default() } else { String::new() }
        })
        .x_label_style(("sans-serif", 11))
        .y_desc("latency (ms, log scale)")
        .draw();
    let series: [(usize, &str, RGBColor); 3] = [(1, "p50", GREEN), (2, "p99", BLUE), (3, "max", RED)];
    for (k, name, color) in series {
        let value = |r: &(String, f64, f64, f64)| match k {
            1 => r.1,
            2 => r.2,
            _ => r.3,
        };
        let off = 0.1 + 0.27 * (k - 1) as f64;
        let _ = chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let v = value(r).max(0.1);
                Rectangle::new([(i as f64 + off, 0.1), (i as f64 + off + 0.25, v)], color.mix(0.7).filled())
            }))
            .map(|s| s.label(name).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())));
    }
    let _ = chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw();
    let _ = root.present();
}

/// Rows/s and replica lag through a throttle episode.
fn throttle_chart(path: &Path, samples: &[(f64, i64, f64, f64)], paused: f64, crossed: f64, resumed: f64) {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    let _ = root.fill(&WHITE);
    // rows/s over 250 ms windows.
    let mut rate: Vec<(f64, f64)> = Vec::new();
    let mut j = 0;
    for i in 0..samples.len() {
        while samples[i].0 - samples[j].0 > 0.25 {
            j += 1;
        }
        let dt = samples[i].0 - samples[j].0;
        if dt > 0.1 {
            rate.push((samples[i].0, (samples[i].1 - samples[j].1) as f64 / dt));
        }
    }
    let t_max = samples.last().map_or(1.0, |s| s.0);
    let r_max = rate.iter().map(|r| r.1).fold(1.0f64, f64::max) * 1.1;
    let l_max = samples.iter().map(|s| s.2).fold(3.0f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Throttle episode: rows/s and standby replay lag", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..r_max)
        .expect("chart")
        .set_secondary_coord(0f64..t_max, 0f64..l_max);
    let _ = chart.configure_mesh().x_desc("seconds").y_desc("rows/s").draw();
    let _ = chart.configure_secondary_axes().y_desc("replay lag (s)").draw();
    let _ = chart
        .draw_series(LineSeries::new(rate.iter().copied(), BLUE.stroke_width(2)))
        .map(|s| s.label("rows/s").legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE)));
    let _ = chart
        .draw_secondary_series(LineSeries::new(samples.iter().map(|s| (s.0, s.2)), RED.stroke_width(2)))
        .map(|s| s.label("replay lag (s)").legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED)));
    let _ = chart.draw_secondary_series(LineSeries::new([(0.0, 2.0), (t_max, 2.0)], RED.mix(0.4)));
    for (t, name, h) in
        [(paused, "replay paused", 0.97), (crossed, "limit crossed", 0.90), (resumed, "replay resumed", 0.97)]
    {
        let _ = chart.draw_series(LineSeries::new([(t, 0.0), (t, r_max)], BLACK.mix(0.5)));
        let _ = chart.draw_series(std::iter::once(Text::new(name.to_string(), (t, r_max * h), ("sans-serif", 12))));
    }
    let _ = chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw();
    let _ = root.present();
    let _ = std::io::stdout().flush();
}
