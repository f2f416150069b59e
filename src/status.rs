//! `pgbackfill status`: progress a person can read at 3 a.m., and a JSON form for machines.

use serde::Serialize;

use crate::progress::{JobRow, Progress, ProgressError, State, StepRow};
use crate::throttle::{self, ControllerConfig, Measurement};

/// Everything `status` shows: the jobs, and replication as the throttle sees it now.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub jobs: Vec<JobStatus>,
    pub replication: Measurement,
}

/// The report `pgbackfill status --json` prints and `/status` serves: one function, so the two
/// stay identical. `name`: only that job. Replication is a live snapshot, as the throttle would
/// measure it now.
pub async fn report(
    pool: &sqlx::PgPool,
    progress: &Progress,
    name: Option<&str>,
) -> Result<StatusReport, ProgressError> {
    let rows = match name {
        Some(n) => progress.job(n).await?.into_iter().collect(),
        None => progress.jobs().await?,
    };
    let mut jobs: Vec<JobStatus> = rows.iter().map(JobStatus::from_row).collect();
    let steps = progress.steps(name).await?;
    for job in &mut jobs {
        job.steps = steps.iter().filter(|s| s.job == job.name).cloned().collect();
    }
    let replication = throttle::measure(pool, &ControllerConfig::default(), &mut throttle::Tracker::default()).await;
    Ok(StatusReport { jobs, replication })
}

/// One job's status, derived from its progress rows.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub name: String,
    pub state: State,
    /// `completed` with rows still matching `where`: not silently "done".
    pub verified: Option<bool>,
    pub leftover_rows: Option<i64>,
    pub rows_updated: i64,
    pub rows_scanned: i64,
    pub batches: i64,
    pub estimated_rows: Option<i64>,
    pub percent: Option<f64>,
    /// Scanned rows per second of *working* time (paused and throttled time excluded).
    pub rows_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub throttled: Option<String>,
    pub throttled_seconds: f64,
    pub paused_seconds: f64,
    pub ranges: i64,
    pub ranges_done: i64,
    pub owners: Vec<String>,
    pub last_error: Option<String>,
    /// `then` steps, in order (filled by the caller: they live in their own table).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRow>,
}

impl JobStatus {
    pub fn from_row(r: &JobRow) -> Self {
        let elapsed = r.started_at.map(|s| (r.finished_at.unwrap_or(r.now) - s).num_milliseconds() as f64 / 1000.0);
        let paused_now = if r.state == State::Paused {
            (r.now - r.state_changed_at).num_milliseconds() as f64 / 1000.0
        } else {
            0.0
        };
        let working = elapsed.map(|e| (e - r.paused_seconds - paused_now - r.throttled_seconds).max(0.0));
        let rate = working.filter(|w| *w > 0.5).map(|w| r.rows_scanned as f64 / w);
        let estimated = r.estimated_rows.filter(|e| *e > 0);
        let percent = match r.state {
            State::Completed => Some(100.0),
            _ => estimated.map(|e| (r.rows_scanned as f64 * 100.0 / e as f64).min(99.9)),
        };
        let eta = match (r.state, estimated, rate) {
            (State::Running | State::Paused | State::Pending, Some(e), Some(rate)) if rate > 0.0 => {
                Some(((e - r.rows_scanned).max(0) as f64) / rate)
            }
            _ => None,
        };
        JobStatus {
            name: r.name.clone(),
            state: r.state,
            verified: (r.state == State::Completed).then(|| r.leftover_rows.unwrap_or(0) == 0),
            leftover_rows: r.leftover_rows,
            rows_updated: r.rows_updated,
            rows_scanned: r.rows_scanned,
            batches: r.batches,
            estimated_rows: r.estimated_rows,
            percent,
            rows_per_second: rate,
            eta_seconds: eta,
            throttled: r.throttle_reason.clone(),
            throttled_seconds: r.throttled_seconds,
            paused_seconds: r.paused_seconds + paused_now,
            ranges: r.ranges,
            ranges_done: r.ranges_done,
            owners: r.owners.clone(),
            last_error: r.last_error.clone(),
            steps: Vec::new(),
        }
    }

    /// The state as a person should read it.
    pub fn display_state(&self) -> String {
        match (self.state, &self.throttled, self.leftover_rows) {
            (State::Completed, _, Some(n)) if n > 0 => format!("completed ({n} rows still match where)"),
            (State::Running, Some(_), _) => "throttled".into(),
            (s, _, _) => s.to_string(),
        }
    }
}

/// Render a table.
pub fn render(jobs: &[JobStatus]) -> String {
    if jobs.is_empty() {
        return "no jobs in the progress table\n".into();
    }
    let mut out = format!(
        "{:<32} {:<14} {:>12} {:>6} {:>9} {:>9}  {}\n",
        "JOB", "STATE", "UPDATED", "%", "ROWS/S", "ETA", "NOTES"
    );
    for j in jobs {
        let pct = j.percent.map_or("-".into(), |p| format!("{p:.1}"));
        let rate = j.rows_per_second.map_or("-".into(), |r| format!("{r:.0}"));
        let eta = j
            .eta_seconds
            .map_or("-".into(), |s| humantime::format_duration(std::time::Duration::from_secs(s as u64)).to_string());
        let mut notes = Vec::new();
        if let Some(t) = &j.throttled {
            notes.push(format!("throttled: {t}"));
        }
        if j.throttled_seconds >= 1.0 {
            notes.push(format!("{:.0}s throttled in total", j.throttled_seconds));
        }
        if j.ranges > 1 {
            notes.push(format!("ranges {}/{} done", j.ranges_done, j.ranges));
        }
        if let Some(e) = &j.last_error {
            notes.push(format!("last error: {e}"));
        }
        let state = j.display_state();
        out.push_str(&format!(
            "{:<32} {:<14} {:>12} {:>6} {:>9} {:>9}  {}\n",
            j.name,
            state,
            j.rows_updated,
            pct,
            rate,
            eta,
            notes.join("; ")
        ));
        out.push_str(&render_steps(&j.steps));
    }
    out
}

/// One line per `then` step under its job: state, attempts, and why it waits or failed.
fn render_steps(steps: &[StepRow]) -> String {
    let mut out = String::new();
    for (i, s) in steps.iter().enumerate() {
        let lead = if i == 0 { "  then" } else { "      " };
        let attempts = if s.attempts > 1 { format!(" ({} attempts)", s.attempts) } else { String::new() };
        // Why it waits, the DDL being sent, what was found, or the error and its fix.
        let detail = s.detail.as_ref().map_or(String::new(), |d| format!("  {d}"));
        out.push_str(&format!("{lead} {:<44} {}{attempts}{detail}\n", s.step, s.state));
    }
    out
}

/// Per-standby lag (and slots, and the oldest transaction) under the job table.
pub fn render_replication(m: &Measurement) -> String {
    let mut out = String::from("\nreplication (live):\n");
    if let Some(e) = &m.error {
        out.push_str(&format!("  lag unknown: {e}\n"));
    }
    if m.standbys.is_empty() && m.error.is_none() {
        out.push_str("  no standbys connected\n");
    }
    for s in &m.standbys {
        let lag = s.lag_seconds.map_or("unknown".to_string(), |l| format!("{l:.1}s"));
        let bytes = s.lag_bytes.map_or("unknown".to_string(), |b| bytesize::ByteSize::b(b.max(0) as u64).to_string());
        let state = if s.streaming { "streaming" } else { "not streaming" };
        out.push_str(&format!("  standby {}: replay lag {lag}, {bytes} behind, {state}\n", s.name));
    }
    for slot in &m.slots {
        if let Some(b) = slot.retained_bytes {
            let active = if slot.active { "active" } else { "inactive" };
            out.push_str(&format!(
                "  slot {}: retains {} of WAL, {active}\n",
                slot.name,
                bytesize::ByteSize::b(b.max(0) as u64)
            ));
        }
    }
    if let Some(age) = m.oldest_transaction_seconds {
        out.push_str(&format!("  oldest open transaction: {age:.0}s\n"));
    }
    out
}

/// Width of the progress bar in [`render_live`].
const BAR: usize = 20;

/// `[#########-----------]` for a percentage; dots when unknown.
fn progress_bar(percent: Option<f64>) -> String {
    match percent {
        Some(p) => {
            let filled = ((p.clamp(0.0, 100.0) / 100.0) * BAR as f64).round() as usize;
            format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR - filled))
        }
        None => format!("[{}]", ".".repeat(BAR)),
    }
}

/// One job in the live view: state, progress bar, %, rows/s, ETA, rows, and what holds it.
pub fn render_live_job(j: &JobStatus) -> String {
    let pct = j.percent.map_or("-".into(), |p| format!("{p:.1}%"));
    let rate = j.rows_per_second.map_or("-".into(), |r| format!("{r:.0}"));
    let eta = j
        .eta_seconds
        .map_or("-".into(), |s| humantime::format_duration(std::time::Duration::from_secs(s as u64)).to_string());
    let of = j.estimated_rows.map_or(String::new(), |e| format!("/~{e}"));
    let mut line = format!(
        "{:<28} {:<10} {} {pct:>6} {rate:>8} rows/s  ETA {eta:<10} {}{of} rows",
        j.name,
        j.display_state(),
        progress_bar(j.percent),
        j.rows_updated
    );
    if let Some(reason) = &j.throttled {
        line.push_str(&format!("  throttled: {reason}"));
    }
    if let Some(e) = &j.last_error {
        line.push_str(&format!("  last error: {e}"));
    }
    line.push('\n');
    line.push_str(&render_steps(&j.steps));
    line
}

/// Per-standby lag on one line, for the live view.
pub fn render_live_replication(m: &Measurement) -> String {
    if let Some(e) = &m.error {
        return format!("replication: lag unknown: {e}\n");
    }
    if m.standbys.is_empty() {
        return "replication: no standbys connected\n".into();
    }
    let standbys: Vec<String> = m
        .standbys
        .iter()
        .map(|s| {
            let lag = s.lag_seconds.map_or("unknown".to_string(), |l| format!("{l:.1}s"));
            let bytes =
                s.lag_bytes.map_or("unknown".to_string(), |b| bytesize::ByteSize::b(b.max(0) as u64).to_string());
            let state = if s.streaming { "" } else { ", not streaming" };
            format!("{} lag {lag} ({bytes} behind{state})", s.name)
        })
        .collect();
    format!("replication: {}\n", standbys.join("; "))
}

/// The live view of `status --watch` (and of the demo): a line per job, then per-standby lag.
pub fn render_live(report: &StatusReport) -> String {
    let mut out = String::new();
    if report.jobs.is_empty() {
        out.push_str("no jobs in the progress table\n");
    }
    for j in &report.jobs {
        out.push_str(&render_live_job(j));
    }
    out.push_str(&render_live_replication(&report.replication));
    out
}
