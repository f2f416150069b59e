//! What the application was waiting on when it was slow: the benchmark's measured explanation of a
//! latency tail, instead of a guess.
//!
//! A sampler reads `pg_stat_activity` every [`PERIOD`] on its own connection (what every session
//! and server process is doing: on CPU, or the wait event) and the kernel's pressure-stall
//! counters (`/proc/pressure/{cpu,io}`: time in which some runnable task waited for a CPU, or for
//! I/O). Afterwards the samples that fall inside the slow transactions of a window (those at or
//! over its p99) are tallied against the samples of the whole window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Connection as _;

pub const PERIOD: Duration = Duration::from_millis(10);

/// One reading.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Epoch seconds.
    pub t: f64,
    /// The application's (pgbench's) sessions: `running`, `idle` (waiting for pgbench) or the wait event.
    pub app: Vec<String>,
    /// Everything else that was not idle: `backend type: wait event or running`.
    pub others: Vec<String>,
    /// Cumulative pressure-stall microseconds: (cpu some, io some).
    pub psi: (u64, u64),
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
    probe: std::thread::JoinHandle<Vec<(f64, f64)>>,
}

/// What the samplers saw.
#[derive(Debug, Default)]
pub struct Samples {
    pub activity: Vec<Sample>,
    /// The disk probe: (epoch seconds at the start, ms) of each 8 KiB write + `fdatasync`.
    pub fsyncs: Vec<(f64, f64)>,
}

/// Every [`PERIOD`], write 8 KiB to a file next to the cluster's and `fdatasync` it: how long a
/// commit's flush takes on this disk at that moment, whatever PostgreSQL is doing.
fn fsync_probe(dir: &std::path::Path, stop: Arc<AtomicBool>) -> Vec<(f64, f64)> {
    use std::io::Write as _;
    let path = dir.join(format!("fsync-probe-{}", std::process::id()));
    let Ok(mut file) = std::fs::File::create(&path) else { return Vec::new() };
    let block = vec![0u8; 8192];
    let mut out = Vec::new();
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Like a WAL segment, rewrite the same 16 MiB instead of growing the file.
        if written >= 16 << 20 {
            let _ = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0));
            written = 0;
        }
        let t = super::epoch_now();
        let started = std::time::Instant::now();
        if file.write_all(&block).and_then(|_| file.sync_data()).is_err() {
            break;
        }
        written += block.len() as u64;
        out.push((t, started.elapsed().as_secs_f64() * 1000.0));
        std::thread::sleep(PERIOD);
    }
    let _ = std::fs::remove_file(&path);
    out
}

fn psi_total(path: &str, which: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(which))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn psi() -> (u64, u64) {
    (psi_total("/proc/pressure/cpu", "some"), psi_total("/proc/pressure/io", "some"))
}

impl Sampler {
    /// `dir`: a directory on the cluster's disk, for the fsync probe.
    pub async fn start(url: &str, dir: &std::path::Path) -> Sampler {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("sampler connection");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let rows: Vec<(f64, String, String, String, String, String)> = match sqlx::query_as(
                    "SELECT extract(epoch FROM clock_timestamp())::float8, coalesce(application_name, ''),
                            coalesce(backend_type, ''), coalesce(state, ''),
                            coalesce(wait_event_type, ''), coalesce(wait_event, '')
                     FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
                )
                .fetch_all(&mut conn)
                .await
                {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                let mut s = Sample { psi: psi(), ..Sample::default() };
                for (t, app, kind, state, wtype, wevent) in rows {
                    s.t = t;
                    let what = if wtype.is_empty() { "running".to_string() } else { format!("{wtype}:{wevent}") };
                    if app == "pgbench" {
                        s.app.push(if state == "active" { what } else { "idle".into() });
                    } else if state == "active" || kind != "client backend" {
                        // Server processes idle on their main loop wait on `Activity:*`: leave those out.
                        if wtype != "Activity" {
                            // pgbackfill's sessions are named per daemon: one name for all.
                            let who = if app.starts_with("pgbackfill") {
                                "pgbackfill".to_string()
                            } else if app.is_empty() {
                                kind
                            } else {
                                app
                            };
                            s.others.push(format!("{who}: {what}"));
                        }
                    }
                }
                if s.t > 0.0 {
                    samples.push(s);
                }
            }
            samples
        });
        let (dir, flag) = (dir.to_path_buf(), stop.clone());
        let probe = std::thread::spawn(move || fsync_probe(&dir, flag));
        Sampler { stop, task, probe }
    }

    pub async fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        let activity = self.task.await.unwrap_or_default();
        let fsyncs =
            tokio::task::spawn_blocking(move || self.probe.join().unwrap_or_default()).await.unwrap_or_default();
        Samples { activity, fsyncs }
    }
}

/// Shares of the samples, over a set of samples.
#[derive(Debug, Default)]
pub struct Tally {
    pub samples: usize,
    /// Share of app sessions' (session, sample) pairs per state, of the active ones.
    pub app: BTreeMap<String, f64>,
    /// Share of samples in which each other process state was seen.
    pub others: BTreeMap<String, f64>,
    /// Share of the wall time with some task stalled on CPU, and on I/O.
    pub cpu_some: f64,
    pub io_some: f64,
    /// The disk probe's flushes that started in the kept time: (p99, max) ms.
    pub fsync: (f64, f64),
}

/// Tally the samples taken at the times `keep` holds for; the pressure shares come from the
/// differences between each kept sample and the one before it.
pub fn tally(all: &Samples, keep: impl Fn(f64) -> bool) -> Tally {
    let samples = &all.activity;
    let mut t = Tally::default();
    let fsyncs: Vec<f64> = all.fsyncs.iter().filter(|(at, _)| keep(*at)).map(|(_, ms)| *ms).collect();
    if !fsyncs.is_empty() {
        t.fsync = (super::pct(&fsyncs, 0.99), super::pct(&fsyncs, 1.0));
    }
    let mut app_total = 0usize;
    let (mut wall, mut cpu, mut io) = (0.0, 0.0, 0.0);
    for pair in samples.windows(2) {
        let (prev, s) = (&pair[0], &pair[1]);
        if !keep(s.t) {
            continue;
        }
        t.samples += 1;
        for a in s.app.iter().filter(|a| *a != "idle") {
            *t.app.entry(a.clone()).or_default() += 1.0;
            app_total += 1;
        }
        let mut seen: Vec<&String> = s.others.iter().collect();
        seen.sort();
        seen.dedup();
        for o in seen {
            *t.others.entry(o.clone()).or_default() += 1.0;
        }
        let dt = (s.t - prev.t) * 1e6;
        if dt > 0.0 {
            wall += dt;
            cpu += s.psi.0.saturating_sub(prev.psi.0) as f64;
            io += s.psi.1.saturating_sub(prev.psi.1) as f64;
        }
    }
    for v in t.app.values_mut() {
        *v /= app_total.max(1) as f64;
    }
    for v in t.others.values_mut() {
        *v /= t.samples.max(1) as f64;
    }
    if wall > 0.0 {
        (t.cpu_some, t.io_some) = (cpu / wall, io / wall);
    }
    t
}

/// `name 40%, other 20%` for the largest shares at or over `min`.
pub fn top(shares: &BTreeMap<String, f64>, n: usize, min: f64) -> String {
    let mut v: Vec<(&String, &f64)> = shares.iter().filter(|(_, s)| **s >= min).collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    let parts: Vec<String> = v.into_iter().take(n).map(|(k, s)| format!("{k} {:.0}%", s * 100.0)).collect();
    if parts.is_empty() { "–".into() } else { parts.join(", ") }
}

/// Over the samples taken in `window`: what the sessions named `who` (`pgbackfill`, `client
/// backend`) were doing, as shares of their (session, sample) pairs; and the share of samples in
/// which an autovacuum worker was busy.
pub fn backend_states(all: &Samples, who: &str, window: (f64, f64)) -> (BTreeMap<String, f64>, f64) {
    let mut states: BTreeMap<String, f64> = BTreeMap::new();
    let (mut total, mut samples, mut autovacuum) = (0.0, 0.0, 0.0);
    for s in all.activity.iter().filter(|s| s.t >= window.0 && s.t <= window.1) {
        samples += 1.0;
        if s.others.iter().any(|o| o.starts_with("autovacuum worker:")) {
            autovacuum += 1.0;
        }
        for o in s.others.iter().filter_map(|o| o.strip_prefix(who)?.strip_prefix(": ")) {
            *states.entry(o.to_string()).or_default() += 1.0;
            total += 1.0;
        }
    }
    for v in states.values_mut() {
        *v /= f64::max(total, 1.0);
    }
    (states, autovacuum / f64::max(samples, 1.0))
}
