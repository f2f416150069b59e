//! `pgbackfill status`: progress a person can read at 3 a.m., and a JSON form for machines.
//!
//! The state shown is derived, not copied: the progress table says `running` for a job no daemon
//! runs any more (after a clean shutdown, say), and a daemon that refuses a spec leaves the job's
//! row as it was. [`JobState`] tells them apart, and [`report`] is the one builder behind
//! `status`, `status --json` and the daemon's `/status`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::progress::{JobRow, Progress, ProgressError, RangeRow, Refusal, State, StepRow};
use crate::throttle::{self, Measurement};

/// Everything `status` shows: the jobs, and replication as the throttle sees it now.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub jobs: Vec<JobStatus>,
    pub replication: Measurement,
}

/// Why no report could be built.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "the progress schema `{0}` does not exist in this database yet: no daemon has started here \
         (`pgbackfill run` or `pgbackfill migrate` creates it)"
    )]
    NoSchema(String),
    #[error("no job named `{0}` in the progress table")]
    NoSuchJob(String),
    #[error(transparent)]
    Progress(#[from] ProgressError),
}

/// The state `status` shows. Unlike the stored [`State`], `running` here means a live daemon holds
/// the job's work right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Registered, not started yet.
    Pending,
    /// A live daemon holds at least one of its ranges and is writing.
    Running,
    /// A live daemon holds it, but the throttle keeps it from writing (see `held_by`).
    Held,
    /// Running in the progress table, but no live daemon holds any of its ranges or verifies it.
    Orphaned,
    Paused,
    Completed,
    Failed,
    Cancelled,
    /// A daemon refuses its spec (meaning changed, missing privilege, …; see `refused`).
    Refused,
}

impl JobState {
    /// Every state: the label set of `pgbackfill_job_state`.
    pub const ALL: [JobState; 9] = [
        JobState::Pending,
        JobState::Running,
        JobState::Held,
        JobState::Orphaned,
        JobState::Paused,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Held => "held",
            JobState::Orphaned => "orphaned",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Refused => "refused",
        }
    }

    /// The state of a job row as `status` shows it.
    pub fn of(r: &JobRow) -> JobState {
        if r.refused.is_some() {
            return JobState::Refused;
        }
        match r.state {
            State::Pending => JobState::Pending,
            // A live daemon holds a range, or verifies the job (every range done): not orphaned.
            State::Running if r.owners.is_empty() && r.verifier.is_none() => JobState::Orphaned,
            State::Running if r.throttle_reason.is_some() => JobState::Held,
            State::Running => JobState::Running,
            State::Paused => JobState::Paused,
            State::Completed => JobState::Completed,
            State::Failed => JobState::Failed,
            State::Cancelled => JobState::Cancelled,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job's status, derived from its progress rows.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub name: String,
    /// What is happening now (see [`JobState`]).
    pub state: JobState,
    /// The state stored in the progress table.
    pub stored_state: State,
    /// Held: what holds it (the throttle's reason).
    pub held_by: Option<String>,
    /// Refused: why, in which file, by which daemon, since when.
    pub refused: Option<Refusal>,
    /// Orphaned: what that means.
    pub orphaned: Option<String>,
    /// Completed jobs with a `where`: true when no row in the key range still matches it.
    /// `None` before completion, and for jobs without a `where` (nothing to verify).
    pub verified: Option<bool>,
    pub leftover_rows: Option<i64>,
    pub rows_updated: i64,
    pub rows_scanned: i64,
    pub batches: i64,
    pub estimated_rows: Option<i64>,
    pub percent: Option<f64>,
    /// Scanned rows per second of *working* time (paused and throttled time excluded); only while
    /// a daemon runs the job.
    pub rows_per_second: Option<f64>,
    /// Only while a daemon runs the job (running or held).
    pub eta_seconds: Option<f64>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// From start to finish (or to now).
    pub elapsed_seconds: Option<f64>,
    /// Current batch size (largest over the open ranges).
    pub batch_size: Option<i64>,
    /// The key of the last row done in the lowest open range; `None` when the spec marks the key
    /// sensitive (`key_sensitive: true`), before the first batch, and once every range is done.
    pub key_position: Option<Vec<String>>,
    pub key_sensitive: bool,
    pub throttled_seconds: f64,
    /// Every pause, the current one included.
    pub paused_seconds: f64,
    /// While paused: how long this pause has lasted.
    pub paused_for_seconds: Option<f64>,
    /// While paused: who paused it and how ("SIGUSR1 to daemon … at …", "pgbackfill pause by …").
    pub paused_by: Option<String>,
    pub ranges: i64,
    pub ranges_done: i64,
    /// Verification in progress (every range done, job not yet completed): rows of the walked
    /// range checked against `where` so far. `None` when no verification is running.
    pub verify_checked_rows: Option<i64>,
    pub owners: Vec<String>,
    pub last_error: Option<String>,
    /// `then` steps, in order (filled by the caller: they live in their own table).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRow>,
}

impl JobStatus {
    pub fn from_row(r: &JobRow) -> Self {
        let state = JobState::of(r);
        let elapsed = r.started_at.map(|s| (r.finished_at.unwrap_or(r.now) - s).num_milliseconds() as f64 / 1000.0);
        let paused_now = if r.state == State::Paused {
            (r.now - r.state_changed_at).num_milliseconds() as f64 / 1000.0
        } else {
            0.0
        };
        let live = matches!(state, JobState::Running | JobState::Held);
        // Each worker's rate over its own working time, times the workers on the job now. Wall
        // time since the start would count every hour the job was refused, orphaned, paused or
        // throttled as work, and the rate would never recover from it.
        let per_worker = (live && r.worked_seconds > 0.5).then(|| r.worked_rows as f64 / r.worked_seconds);
        let rate = per_worker.map(|w| w * r.ranges_held.max(1) as f64);
        let estimated = r.estimated_rows.filter(|e| *e > 0);
        let percent = match r.state {
            State::Completed => Some(100.0),
            _ => estimated.map(|e| (r.rows_scanned as f64 * 100.0 / e as f64).min(99.9)),
        };
        let eta = match (estimated, rate) {
            (Some(e), Some(rate)) if rate > 0.0 => Some(((e - r.rows_scanned).max(0) as f64) / rate),
            _ => None,
        };
        let orphaned = (state == JobState::Orphaned).then(|| {
            if r.planned && r.ranges == r.ranges_done {
                "every range is done; waiting for a daemon to verify and complete it".to_string()
            } else {
                "no live daemon holds any of its ranges (none is up, or all are busy up to --max-jobs)".to_string()
            }
        });
        JobStatus {
            name: r.name.clone(),
            state,
            stored_state: r.state,
            held_by: if state == JobState::Held { r.throttle_reason.clone() } else { None },
            refused: r.refused.clone(),
            orphaned,
            verified: match (r.state, r.leftover_rows) {
                (State::Completed, Some(n)) => Some(n == 0),
                _ => None,
            },
            leftover_rows: r.leftover_rows,
            rows_updated: r.rows_updated,
            rows_scanned: r.rows_scanned,
            batches: r.batches,
            estimated_rows: r.estimated_rows,
            percent,
            rows_per_second: rate,
            eta_seconds: eta,
            started_at: r.started_at,
            finished_at: r.finished_at,
            elapsed_seconds: elapsed,
            batch_size: r.batch_size.filter(|_| !r.state.is_terminal()),
            key_position: None,
            key_sensitive: r.key_sensitive,
            throttled_seconds: r.throttled_seconds,
            paused_seconds: r.paused_seconds + paused_now,
            paused_for_seconds: (r.state == State::Paused).then_some(paused_now),
            paused_by: r.paused_by.clone().filter(|_| r.state == State::Paused),
            ranges: r.ranges,
            ranges_done: r.ranges_done,
            verify_checked_rows: (r.state == State::Running && r.ranges > 0 && r.ranges_done == r.ranges)
                .then_some(r.verify_checked),
            owners: {
                let mut owners = r.owners.clone();
                owners.extend(r.verifier.clone().filter(|v| !r.owners.contains(v)));
                owners
            },
            last_error: r.last_error.clone(),
            steps: Vec::new(),
        }
    }

    /// Adds what only the range rows tell: the key position.
    pub fn with_ranges(mut self, ranges: &[RangeRow]) -> Self {
        if !self.key_sensitive {
            self.key_position = ranges.iter().find(|r| !r.done).and_then(|r| r.cursor.clone());
        }
        self
    }

    /// The state as a person should read it.
    pub fn display_state(&self) -> String {
        match (self.state, self.leftover_rows) {
            (JobState::Completed, Some(n)) if n > 0 => format!("completed ({n} rows still match where)"),
            (s, _) => s.to_string(),
        }
    }
}

/// The report behind `status`, `status --json` and `/status`: every job (or only `name`), each
/// with its key position, and a live replication measurement. Needs only SELECT on the progress
/// tables (and, for full replication figures, `pg_monitor`).
pub async fn report(pool: &PgPool, progress: &Progress, name: Option<&str>) -> Result<StatusReport, StatusError> {
    if !progress.exists().await? {
        return Err(StatusError::NoSchema(progress.schema_name().to_string()));
    }
    let rows = match name {
        Some(n) => vec![progress.job(n).await?.ok_or_else(|| StatusError::NoSuchJob(n.to_string()))?],
        None => progress.jobs().await?,
    };
    let mut jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        let status = JobStatus::from_row(row);
        let status = if row.planned && !row.key_sensitive && !row.state.is_terminal() {
            status.with_ranges(&progress.ranges(&row.name).await?)
        } else {
            status
        };
        jobs.push(status);
    }
    let steps = progress.steps(name).await?;
    for job in &mut jobs {
        job.steps = steps.iter().filter(|s| s.job == job.name).cloned().collect();
    }
    // A live snapshot of replication, as the daemons' throttle sees it right now.
    // With the standbys daemons remember (read only): one that is down shows as disconnected.
    let cfg = throttle::ControllerConfig { memory: Some(progress.clone()), ..throttle::ControllerConfig::default() };
    let replication = throttle::measure(pool, &cfg, &mut throttle::Tracker::default()).await;
    Ok(StatusReport { jobs, replication })
}

fn duration(seconds: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

/// Render a table: one line per job, then indented lines with what explains it.
pub fn render(jobs: &[JobStatus]) -> String {
    if jobs.is_empty() {
        return "no jobs in the progress table\n".into();
    }
    let mut out = format!("{:<32} {:<10} {:>12} {:>6} {:>9} {:>9}\n", "JOB", "STATE", "UPDATED", "%", "ROWS/S", "ETA");
    for j in jobs {
        let pct = j.percent.map_or("-".into(), |p| format!("{p:.1}"));
        let rate = j.rows_per_second.map_or("-".into(), |r| format!("{r:.0}"));
        let eta = j.eta_seconds.map_or("-".into(), duration);
        out.push_str(&format!(
            "{:<32} {:<10} {:>12} {:>6} {:>9} {:>9}\n",
            j.name,
            j.display_state(),
            j.rows_updated,
            pct,
            rate,
            eta
        ));
        for line in details(j) {
            out.push_str(&format!("    {line}\n"));
        }
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

/// The lines under a job's row in [`render`].
pub fn details(j: &JobStatus) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(f) = &j.refused {
        lines.push(format!("refused since {} ({}): {}", f.at.format("%Y-%m-%d %H:%M:%S UTC"), f.file, f.reason));
    }
    if let Some(h) = &j.held_by {
        lines.push(format!("held by: {h}"));
    }
    if let Some(o) = &j.orphaned {
        lines.push(format!("orphaned: {o}"));
    }
    let mut progress = Vec::new();
    if let Some(s) = j.started_at {
        let mut p = format!("started {}", s.format("%Y-%m-%d %H:%M:%S UTC"));
        if let Some(e) = j.elapsed_seconds {
            p.push_str(&format!(", {} {}", duration(e), if j.finished_at.is_some() { "in total" } else { "ago" }));
        }
        progress.push(p);
    }
    if let Some(b) = j.batch_size {
        progress.push(format!("batch {b} rows"));
    }
    if let Some(k) = &j.key_position {
        progress.push(format!("key at ({})", k.join(", ")));
    } else if j.key_sensitive && !j.stored_state.is_terminal() {
        progress.push("key position hidden (key_sensitive)".into());
    }
    if j.ranges > 1 {
        progress.push(format!("ranges {}/{} done", j.ranges_done, j.ranges));
    }
    if j.throttled_seconds >= 1.0 {
        progress.push(format!("{:.0}s throttled in total", j.throttled_seconds));
    }
    if let Some(now) = j.paused_for_seconds {
        let mut p = format!("paused for {}", duration(now));
        if let Some(by) = &j.paused_by {
            p.push_str(&format!(" ({by})"));
        }
        progress.push(p);
        if j.paused_seconds - now >= 1.0 {
            progress.push(format!("{} paused in total", duration(j.paused_seconds)));
        }
    }
    if !progress.is_empty() {
        lines.push(progress.join("; "));
    }
    if let Some(n) = j.verify_checked_rows {
        lines.push(format!("verifying: {n} of {} rows checked against `where`", j.rows_scanned));
    }
    if j.stored_state == State::Completed {
        lines.push(match (j.verified, j.leftover_rows) {
            (Some(true), _) => "verified: no row in the key range still matches `where`".into(),
            (Some(false), Some(n)) => format!("NOT verified: {n} rows in the key range still match `where`"),
            _ => "not verified: the job has no `where` to check".into(),
        });
    }
    if let Some(e) = &j.last_error {
        lines.push(format!("last error: {e}"));
    }
    lines
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
    match (&m.oldest_transaction, m.oldest_transaction_seconds) {
        (Some(session), _) => out.push_str(&format!("  oldest open transaction: {session}\n")),
        (None, Some(age)) => out.push_str(&format!("  oldest open transaction: {age:.0}s\n")),
        _ => {}
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
    if let Some(reason) = &j.held_by {
        line.push_str(&format!("  throttled: {reason}"));
    }
    if let Some(by) = &j.paused_by {
        line.push_str(&format!("  paused: {by}"));
    }
    if let Some(f) = &j.refused {
        line.push_str(&format!("  refused: {}", f.reason));
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
