//! `pgbackfill demo`: the daemon's main job, end to end, on a throwaway local cluster.
//!
//! 1. [`localpg`] starts a primary and a streaming hot standby on loopback, in a temporary directory.
//! 2. The demo creates `orders` (N rows) and adds a nullable `fulfillment_channel` (the "expand" step).
//! 3. It writes one job spec into a temporary jobs directory and runs the real engine in-process:
//!    [`throttle::spawn_controller`] and [`supervisor::run`] with `exit_when_done`, exactly as
//!    `pgbackfill run --exit-when-done` would.
//! 4. Every second it prints the job's [`JobStatus`] from the progress table. Partway through it pauses
//!    WAL replay on the standby; the throttle sees the lag grow past `max_lag` and holds the job; a few
//!    seconds later replay resumes, the lag falls under `resume_lag` and the job carries on.
//! 5. At the end it counts the rows still matching `where` itself (must be 0), prints a summary and
//!    stops both servers and removes the directory: also on failure and on Ctrl-C (the same
//!    cancellation token `run` uses); a second Ctrl-C or a crash is covered by localpg's reaper.
//!
//! The batch size is a hundredth of the table with a short pause between batches, so the job takes
//! ~100 batches whatever `--rows` is: long enough to watch, and to be throttled partway through.

use std::path::Path;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::{AssertSqlSafe, Connection};
use tokio_util::sync::CancellationToken;

use crate::control;
use crate::db;
use crate::localpg::{self, LocalPgError};
use crate::progress::{Progress, ProgressError, State};
use crate::status::{JobStatus, StatusError};
use crate::supervisor::{self, Outcome};
use crate::throttle::{self, ControllerConfig};

const JOB: &str = "demo-orders-fulfillment-channel";
const WHERE: &str = "fulfillment_channel IS NULL";
const DATABASE: &str = "demo";
/// The throttle settings of the demo job: small, so the pause shows within seconds.
const MAX_LAG: Duration = Duration::from_secs(2);
/// Pause replay once the job has scanned this fraction of the table.
const PAUSE_AT: f64 = 0.2;
/// Keep replay paused this long after the job is seen throttled.
const HOLD_THROTTLED: Duration = Duration::from_secs(3);
/// Give up if pausing replay has not throttled the job by then.
const THROTTLE_DEADLINE: Duration = Duration::from_secs(30);
/// Give up on the whole job after this long (the default demo takes ~15 s of it).
const JOB_DEADLINE: Duration = Duration::from_secs(300);

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Rows in the demo table.
    pub rows: u64,
    /// Leave the cluster running at the end and print its URLs.
    pub keep: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("--rows must be at least 1000 (got {0})")]
    TooFewRows(u64),
    #[error(transparent)]
    Cluster(#[from] LocalPgError),
    #[error("{what}: {error}")]
    Sql { what: &'static str, error: sqlx::Error },
    #[error("progress table: {0}")]
    Progress(#[from] ProgressError),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("interrupted")]
    Interrupted,
    /// The demo ran but did not show what it promises (no throttling, rows left, job failed).
    #[error("{0}")]
    Failed(String),
}

fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> DemoError {
    move |error| DemoError::Sql { what, error }
}

/// Runs the demo. Prints its story to stdout; returns an error (after cleaning up) if any step
/// failed, the throttle did not engage, or rows were left behind.
pub async fn run(opts: DemoOptions, metrics: PrometheusHandle, cancel: CancellationToken) -> Result<(), DemoError> {
    if opts.rows < 1000 {
        return Err(DemoError::TooFewRows(opts.rows));
    }
    let started = Instant::now();
    say("starting a throwaway PostgreSQL primary + streaming hot standby on 127.0.0.1 …");
    let options = localpg::Options { dir_prefix: "pgbackfill-demo-".into(), ..localpg::Options::default() };
    // Dropping the start future (Ctrl-C) drops the half-built cluster, which cleans it up.
    let cluster = tokio::select! {
        c = localpg::Cluster::start(options) => c?,
        _ = cancel.cancelled() => return Err(DemoError::Interrupted),
    };
    say(&format!(
        "cluster dir: {}  (primary 127.0.0.1:{}, standby 127.0.0.1:{}, streaming)",
        cluster.dir().display(),
        cluster.primary_port(),
        cluster.standby_port()
    ));
    let result = demo(&cluster, &opts, &metrics, &cancel, started).await;
    let interrupted = matches!(result, Err(DemoError::Interrupted));
    if opts.keep && !interrupted {
        let url = cluster.primary_url(DATABASE);
        let standby = cluster.standby_url(DATABASE);
        let stop = cluster.stop_command();
        cluster.keep();
        say(&format!("--keep: the cluster is still running\n  primary: {url}\n  standby: {standby}"));
        say(&format!("  progress: DATABASE_URL={url} pgbackfill status\n  to remove it: {stop}"));
    } else {
        let dir = cluster.dir().to_path_buf();
        if interrupted {
            say("interrupted: stopping");
        }
        drop(cluster);
        say(&format!("stopped both servers and removed {}", dir.display()));
    }
    result
}

fn say(line: &str) {
    use std::io::Write;
    // A reader that went away (`demo | head`) must not panic the demo mid-way: it still stops
    // both servers and removes its directory.
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Everything between a running cluster and cleaning it up.
async fn demo(
    cluster: &localpg::Cluster,
    opts: &DemoOptions,
    metrics: &PrometheusHandle,
    cancel: &CancellationToken,
    started: Instant,
) -> Result<(), DemoError> {
    let setup = async {
        create_table(cluster, opts.rows).await?;
        cluster.wait_standby_caught_up().await.map_err(DemoError::from)
    };
    tokio::select! {
        r = setup => r?,
        _ = cancel.cancelled() => return Err(DemoError::Interrupted),
    }

    let jobs = tempfile::Builder::new()
        .prefix("pgbackfill-demo-jobs-")
        .tempdir()
        .map_err(|error| DemoError::Io { what: "creating a jobs directory".into(), error })?;
    let batch_size = (opts.rows / 100).clamp(1, 100_000);
    write_spec(jobs.path(), batch_size)?;
    say(&format!(
        "job spec {}: rows where `{WHERE}`, batches of {batch_size} rows, throttle.max_lag {} (resume under {})",
        jobs.path().join(format!("{JOB}.yaml")).display(),
        humantime::format_duration(MAX_LAG),
        humantime::format_duration(MAX_LAG / 2),
    ));

    // The daemon's wiring (`pgbackfill run`), in-process.
    let url = cluster.primary_url(DATABASE);
    let pool = db::pool(&url, "pgbackfill demo", 8).await.map_err(sql("connecting to the demo database"))?;
    let progress = Progress::new(pool.clone(), "pgbackfill");
    progress.migrate().await?;
    // A job cancel token of our own, child of the signal token: ending the job on a demo failure must
    // not look like a Ctrl-C.
    let job_cancel = cancel.child_token();
    let mut measurements = throttle::spawn_controller(
        pool.clone(),
        ControllerConfig { poll_interval: Duration::from_millis(250), ..ControllerConfig::default() },
        job_cancel.clone(),
    );
    // Start once lag is known, so the first lines do not show "no measurement yet" (fail closed).
    let _ = measurements.changed().await;
    let cfg = supervisor::Config {
        jobs_dir: jobs.path().to_path_buf(),
        max_jobs: 1,
        max_workers: 4,
        owner: format!("demo:{}", std::process::id()),
        lease: Duration::from_secs(6),
        scan_interval: Duration::from_millis(250),
        exit_when_done: true,
        heartbeat: Default::default(),
        shutdown_timeout: supervisor::DEFAULT_SHUTDOWN_TIMEOUT,
        url_file: None,
    };
    say(&format!("running the job (setup took {:.1}s) …", started.elapsed().as_secs_f64()));
    let job_started = Instant::now();
    let mut daemon =
        // No operator commands here: Ctrl-C reaches the demo as `cancel` (see main).
        tokio::spawn(supervisor::run(cfg, pool.clone(), progress.clone(), measurements, control::channel().1, job_cancel.clone()));

    let driven = drive(cluster, &pool, opts, &progress, &mut daemon, cancel, job_started).await;
    // Whatever happened, stop the engine and let it drain before the cluster goes away.
    job_cancel.cancel();
    let outcome = daemon.await.ok();
    let throttled_for = driven?;
    match outcome {
        Some(Outcome::AllCompleted) => {}
        Some(Outcome::Shutdown | Outcome::Interrupted) | None => return Err(DemoError::Interrupted),
        Some(Outcome::NotAllCompleted { failed }) => {
            return Err(DemoError::Failed(format!("the job ended without completing: {}", failed.join(", "))));
        }
        Some(Outcome::Fatal(why)) => return Err(DemoError::Failed(why)),
    }
    let job_time = job_started.elapsed();

    // Verify independently of pgbackfill's own completion check.
    let mut conn = sqlx::PgConnection::connect(&url).await.map_err(sql("connecting to verify"))?;
    let remaining: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM orders WHERE {WHERE}")))
        .fetch_one(&mut conn)
        .await
        .map_err(sql("counting rows still matching where"))?;
    let channels: Vec<(String, i64)> =
        sqlx::query_as("SELECT fulfillment_channel, count(*) FROM orders GROUP BY 1 ORDER BY 1")
            .fetch_all(&mut conn)
            .await
            .map_err(sql("counting channels"))?;
    let _ = conn.close().await;
    let status = progress.job(JOB).await?.map(|r| JobStatus::from_row(&r));
    let Some(status) = status else {
        return Err(DemoError::Failed("the job is missing from the progress table".into()));
    };
    say(&format!(
        "verify: {remaining} rows still match `{WHERE}` (pgbackfill's own check: {}); channels: {}",
        match status.verified {
            Some(true) => "verified".to_string(),
            _ => match status.leftover_rows {
                Some(n) => format!("{n} rows left"),
                None => "not verified".to_string(),
            },
        },
        channels.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")
    ));
    say(&format!(
        "summary: {} rows updated ({} scanned) in {:.1}s, {} batches, {:.1}s throttled (job's own count: {:.0}s), \
         total demo time {:.1}s",
        status.rows_updated,
        status.rows_scanned,
        job_time.as_secs_f64(),
        status.batches,
        throttled_for.as_secs_f64(),
        status.throttled_seconds,
        started.elapsed().as_secs_f64()
    ));
    let rendered = metrics.render();
    say(&format!(
        "metrics (what /metrics would serve): {} {}, {} {}",
        crate::metrics::BATCHES,
        metric_sum(&rendered, crate::metrics::BATCHES),
        crate::metrics::ROWS_UPDATED,
        metric_sum(&rendered, crate::metrics::ROWS_UPDATED),
    ));
    if remaining != 0 || status.verified != Some(true) || status.rows_updated != opts.rows as i64 {
        return Err(DemoError::Failed(format!(
            "verification failed: {remaining} rows still match `{WHERE}`, {} of {} rows updated",
            status.rows_updated, opts.rows
        )));
    }
    say("ok: every row backfilled and verified");
    Ok(())
}

/// The demo's script, ticking every 250 ms: print the status every second, pause replay at
/// [`PAUSE_AT`], resume it [`HOLD_THROTTLED`] after the job was seen throttled, and return (with
/// the time the job spent throttled) once the supervisor has finished.
async fn drive(
    cluster: &localpg::Cluster,
    pool: &sqlx::PgPool,
    opts: &DemoOptions,
    progress: &Progress,
    daemon: &mut tokio::task::JoinHandle<Outcome>,
    cancel: &CancellationToken,
    job_started: Instant,
) -> Result<Duration, DemoError> {
    enum Phase {
        Warmup,
        Paused { at: Instant },
        Throttled { since: Instant },
        Resumed { since: Instant, resumed_at: Instant },
        Done { throttled_for: Duration },
    }
    let mut phase = Phase::Warmup;
    let mut last_print: Option<Instant> = None;
    loop {
        if daemon.is_finished() {
            print_status(pool, progress, job_started).await?;
            return match phase {
                Phase::Done { throttled_for } => Ok(throttled_for),
                _ => Err(DemoError::Failed(
                    "the job finished before the throttle demonstration completed (try more --rows)".into(),
                )),
            };
        }
        if job_started.elapsed() > JOB_DEADLINE {
            return Err(DemoError::Failed(format!("the job did not finish within {JOB_DEADLINE:?}")));
        }
        let status = if last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_print = Some(Instant::now());
            print_status(pool, progress, job_started).await?
        } else {
            progress.job(JOB).await?.map(|r| JobStatus::from_row(&r))
        };
        if let Some(s) = &status {
            if s.stored_state == State::Failed {
                return Err(DemoError::Failed(format!("the job failed: {}", s.last_error.as_deref().unwrap_or("?"))));
            }
            let scanned = s.rows_scanned as f64 / opts.rows as f64;
            phase = match phase {
                Phase::Warmup if scanned >= PAUSE_AT => {
                    say(&format!(
                        ">>> {:.0}% done: pausing WAL replay on the standby (SELECT pg_wal_replay_pause()); \
                         its lag will now grow by a second per second",
                        scanned * 100.0
                    ));
                    cluster.pause_replay().await?;
                    Phase::Paused { at: Instant::now() }
                }
                Phase::Paused { at } => match &s.held_by {
                    Some(reason) => {
                        say(&format!(">>> the job is throttled, not writing: {reason}"));
                        Phase::Throttled { since: Instant::now() }
                    }
                    None if at.elapsed() > THROTTLE_DEADLINE => {
                        return Err(DemoError::Failed(format!(
                            "replay has been paused for {THROTTLE_DEADLINE:?} and the job was never throttled"
                        )));
                    }
                    None => Phase::Paused { at },
                },
                Phase::Throttled { since } if since.elapsed() >= HOLD_THROTTLED => {
                    say(">>> resuming WAL replay on the standby (SELECT pg_wal_replay_resume())");
                    cluster.resume_replay().await?;
                    Phase::Resumed { since, resumed_at: Instant::now() }
                }
                Phase::Resumed { since, resumed_at } if s.held_by.is_none() => {
                    say(&format!(
                        ">>> the standby caught up; the job resumed writing {:.1}s after replay resumed",
                        resumed_at.elapsed().as_secs_f64()
                    ));
                    Phase::Done { throttled_for: since.elapsed() }
                }
                other => other,
            };
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(DemoError::Interrupted),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// The live view of `pgbackfill status --watch` for the demo's job (the same rendering function),
/// prefixed with the time since the job started: its line, then per-standby lag.
async fn print_status(
    pool: &sqlx::PgPool,
    progress: &Progress,
    job_started: Instant,
) -> Result<Option<JobStatus>, DemoError> {
    let report = match crate::status::report(pool, progress, Some(JOB)).await {
        Ok(report) => Some(report),
        // Not registered yet.
        Err(StatusError::NoSuchJob(_)) => None,
        Err(StatusError::Progress(e)) => return Err(e.into()),
        Err(e) => return Err(DemoError::Failed(e.to_string())),
    };
    let elapsed = job_started.elapsed().as_secs_f64();
    let Some(report) = report.filter(|r| !r.jobs.is_empty()) else {
        say(&format!("{elapsed:6.1}s  starting: registering the job, planning its key range"));
        return Ok(None);
    };
    let status = report.jobs.first().cloned();
    for (i, line) in crate::status::render_live(&report).lines().enumerate() {
        if i == 0 {
            say(&format!("{elapsed:6.1}s  {line}"));
        } else {
            say(&format!("         {line}"));
        }
    }
    Ok(status)
}

/// Creates the `demo` database with `orders` (ids 1..=rows) and the new, empty column.
async fn create_table(cluster: &localpg::Cluster, rows: u64) -> Result<(), DemoError> {
    let t = Instant::now();
    let mut admin = cluster.admin_conn().await?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
        .execute(&mut admin)
        .await
        .map_err(sql("CREATE DATABASE demo"))?;
    let _ = admin.close().await;
    let mut conn = localpg::connect(&cluster.primary_url(DATABASE)).await?;
    sqlx::raw_sql(
        "CREATE TABLE orders (
             id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             customer_id bigint NOT NULL,
             store_id    integer,
             status      text NOT NULL,
             total_cents integer NOT NULL,
             created_at  timestamptz NOT NULL
         );
         CREATE INDEX orders_customer_id ON orders (customer_id);",
    )
    .execute(&mut conn)
    .await
    .map_err(sql("creating table orders"))?;
    sqlx::query(
        "INSERT INTO orders (customer_id, store_id, status, total_cents, created_at)
         SELECT 1 + (g * 7919) % 50000,
                CASE WHEN g % 5 = 0 THEN 1 + g % 40 END,
                (ARRAY['new', 'paid', 'shipped', 'delivered', 'returned'])[1 + g % 5],
                500 + (g * 31) % 20000,
                now() - make_interval(mins => g::int)
         FROM generate_series(1, $1::bigint) g",
    )
    .bind(rows as i64)
    .execute(&mut conn)
    .await
    .map_err(sql("filling orders"))?;
    // The expand step of expand → migrate → contract: instant on any table size.
    sqlx::raw_sql("ALTER TABLE orders ADD COLUMN fulfillment_channel text; ANALYZE orders;")
        .execute(&mut conn)
        .await
        .map_err(sql("adding column fulfillment_channel"))?;
    let _ = conn.close().await;
    say(&format!(
        "created table orders with {rows} rows and a new nullable column fulfillment_channel in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn write_spec(dir: &Path, batch_size: u64) -> Result<(), DemoError> {
    let max_lag = humantime::format_duration(MAX_LAG);
    let resume_lag = humantime::format_duration(MAX_LAG / 2);
    let yaml = format!(
        "# Written by `pgbackfill demo`: fill the new column on every existing order.\n\
         name: {JOB}\n\
         table: public.orders\n\
         key: [id]\n\
         set:\n  \
           fulfillment_channel: \"CASE WHEN store_id IS NULL THEN 'web' ELSE 'store' END\"\n\
         where: {WHERE}\n\
         batch:\n  \
           size: {batch_size}\n  \
           min_size: 1\n  \
           max_size: {batch_size}\n  \
           pause: 50ms\n\
         throttle:\n  \
           max_lag: {max_lag}\n  \
           resume_lag: {resume_lag}\n"
    );
    let path = dir.join(format!("{JOB}.yaml"));
    std::fs::write(&path, yaml).map_err(|error| DemoError::Io { what: format!("writing {}", path.display()), error })
}

/// The sum over all label sets of a counter in Prometheus text format.
fn metric_sum(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn sums_a_counter_over_labels() {
        let text = "# HELP x\nx_total{job=\"a\"} 3\nx_total{job=\"b\"} 4\nx_total_other 9\nx_total 1\n";
        assert_eq!(metric_sum(text, "x_total"), 8.0);
    }
}
