//! The metrics contract: every series pgbackfill exports, its type, labels and label values.
//!
//! Names are a public API: dashboards, alerts (`deploy/`) and the README table depend on them, so
//! they live here and nowhere else, and code records through the typed handles below rather than
//! through ad-hoc `counter!` calls with string names.
//!
//! Two promises the handles keep:
//! - **Every series exists from the moment a job is loaded**: [`JobMetrics::declare`] registers
//!   all of a job's counters (at 0), its histogram and its gauges (set), so `rate()` panels and
//!   stall alerts never see gaps before the first batch.
//! - **Label values are small bounded sets**: job names, standby (replica) names, slot names and
//!   the fixed enums [`BatchOutcome`], [`ThrottleReason`] and [`JOB_STATES`]. Never SQL, key
//!   values or credentials.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Unit, counter, gauge, histogram};

// ----- per job -----
pub const ROWS_UPDATED: &str = "pgbackfill_rows_updated_total";
pub const ROWS_SCANNED: &str = "pgbackfill_rows_scanned_total";
pub const BATCHES: &str = "pgbackfill_batches_total";
pub const LOCK_TIMEOUTS: &str = "pgbackfill_lock_timeouts_total";
pub const BATCH_DURATION: &str = "pgbackfill_batch_duration_seconds";
pub const BATCH_SIZE: &str = "pgbackfill_batch_size";
pub const JOB_STATE: &str = "pgbackfill_job_state";
pub const JOB_PAUSED: &str = "pgbackfill_job_paused";
pub const JOB_PROGRESS: &str = "pgbackfill_job_progress_ratio";
pub const JOB_ETA: &str = "pgbackfill_job_eta_seconds";
pub const LAST_BATCH: &str = "pgbackfill_last_batch_timestamp_seconds";
pub const THROTTLED: &str = "pgbackfill_throttled";
pub const THROTTLED_SECONDS: &str = "pgbackfill_throttled_seconds_total";
pub const THROTTLE_SCALE: &str = "pgbackfill_throttle_scale_ratio";
pub const JOB_MAX_LAG: &str = "pgbackfill_job_max_lag_seconds";
// ----- per standby / slot -----
pub const REPLICA_LAG_SECONDS: &str = "pgbackfill_replica_lag_seconds";
pub const REPLICA_LAG_BYTES: &str = "pgbackfill_replica_lag_bytes";
pub const SLOT_RETAINED_BYTES: &str = "pgbackfill_slot_retained_bytes";
// ----- per daemon -----
pub const BUILD_INFO: &str = "pgbackfill_build_info";
pub const ACTIVE_WORKERS: &str = "pgbackfill_active_workers";
pub const SPEC_ERRORS: &str = "pgbackfill_spec_errors";
pub const JOBS_REFUSED: &str = "pgbackfill_jobs_refused";
pub const REPLICAS_STREAMING: &str = "pgbackfill_replicas_streaming";
pub const OLDEST_TRANSACTION_SECONDS: &str = "pgbackfill_oldest_transaction_seconds";
pub const LAG_MEASUREMENT_OK: &str = "pgbackfill_lag_measurement_ok";
// ----- per `then` step of a job -----
pub const STEP_STATE: &str = "pgbackfill_step_state";

/// Label keys.
pub const JOB: &str = "job";
pub const REPLICA: &str = "replica";
pub const SLOT: &str = "slot";

/// Buckets of [`BATCH_DURATION`]: 5 ms to 60 s. Batches aim at `batch.target_time` (hundreds of
/// ms); the top buckets show batches running into lock and statement timeouts.
pub const BATCH_DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Every name above, for tests and docs that check a scrape is complete.
pub const ALL: &[&str] = &[
    ROWS_UPDATED,
    ROWS_SCANNED,
    BATCHES,
    LOCK_TIMEOUTS,
    BATCH_DURATION,
    BATCH_SIZE,
    JOB_STATE,
    JOB_PAUSED,
    JOB_PROGRESS,
    JOB_ETA,
    LAST_BATCH,
    THROTTLED,
    THROTTLED_SECONDS,
    THROTTLE_SCALE,
    JOB_MAX_LAG,
    REPLICA_LAG_SECONDS,
    REPLICA_LAG_BYTES,
    SLOT_RETAINED_BYTES,
    BUILD_INFO,
    ACTIVE_WORKERS,
    SPEC_ERRORS,
    JOBS_REFUSED,
    REPLICAS_STREAMING,
    OLDEST_TRANSACTION_SECONDS,
    LAG_MEASUREMENT_OK,
    STEP_STATE,
];

/// The `state` label values of [`JOB_STATE`]: exactly one is 1 for a loaded job. The same states as
/// `status` shows (`status::JobState`): `running` only while a daemon works the job, `held` while
/// the throttle holds it, `orphaned` when no live daemon holds it, `refused` when a daemon refuses
/// its spec.
pub const JOB_STATES: &[&str] =
    &["pending", "running", "held", "orphaned", "paused", "completed", "failed", "cancelled", "refused"];

/// The `state` label values of [`STEP_STATE`] (`progress::StepState`): exactly one is 1 per step.
pub const STEP_STATES: &[&str] = &["pending", "waiting", "running", "done", "failed"];

/// `pgbackfill_step_state{job, step, state}` of one `then` step: 1 for `state`, 0 for the others.
/// `step` is the step's label (`not_null(c):validate_check`), bounded by the spec.
pub fn set_step_state(job: &str, step: &str, state: &str) {
    debug_assert!(STEP_STATES.contains(&state), "step state {state} is not in metrics::STEP_STATES");
    for s in STEP_STATES {
        let labels = [(JOB, job.to_string()), ("step", step.to_string()), ("state", s.to_string())];
        gauge!(STEP_STATE, &labels).set(if *s == state { 1.0 } else { 0.0 });
    }
}

/// The `by` label values of [`JOB_PAUSED`]: how a paused job was paused (SIGUSR1 to a daemon, or
/// `pgbackfill pause`). Who exactly is in `status`, not in a label.
pub const PAUSED_BY: &[&str] = &["signal", "cli"];

/// How a batch attempt ended: the `outcome` label of [`BATCHES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    Committed,
    LockTimeout,
    StatementTimeout,
    Deadlock,
    Serialization,
    /// Connection lost or refused, server restarting, pool exhausted.
    Connection,
    /// Anything else (constraint, permission, SQL error …): the job usually fails with it.
    Error,
}

impl BatchOutcome {
    pub const ALL: [BatchOutcome; 7] = [
        BatchOutcome::Committed,
        BatchOutcome::LockTimeout,
        BatchOutcome::StatementTimeout,
        BatchOutcome::Deadlock,
        BatchOutcome::Serialization,
        BatchOutcome::Connection,
        BatchOutcome::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BatchOutcome::Committed => "committed",
            BatchOutcome::LockTimeout => "lock_timeout",
            BatchOutcome::StatementTimeout => "statement_timeout",
            BatchOutcome::Deadlock => "deadlock",
            BatchOutcome::Serialization => "serialization",
            BatchOutcome::Connection => "connection",
            BatchOutcome::Error => "error",
        }
    }

    /// The outcome of a failed attempt, from its error (by SQLSTATE, as [`crate::retry`] decides).
    pub fn of_error(err: &sqlx::Error) -> Self {
        match crate::retry::label(err) {
            "lock_timeout" => BatchOutcome::LockTimeout,
            "statement_timeout" => BatchOutcome::StatementTimeout,
            "deadlock" => BatchOutcome::Deadlock,
            "serialization" => BatchOutcome::Serialization,
            "connection" | "server_restart" | "pool" => BatchOutcome::Connection,
            _ => BatchOutcome::Error,
        }
    }
}

/// What holds a job: the `reason` label of [`THROTTLED`]. A fixed set, so a dashboard can show
/// one line per reason; the details (which standby, how far behind) are in `status` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    /// A standby's replay lag is over `throttle.max_lag`.
    LagSeconds,
    /// A standby is over `throttle.max_lag_bytes`.
    LagBytes,
    /// Fewer standbys streaming than `throttle.min_replicas`.
    Replicas,
    /// A replication slot retains more than `throttle.max_slot_retained_bytes`.
    Slot,
    /// The oldest open transaction is older than `throttle.max_transaction_age`.
    TransactionAge,
    /// Lag cannot be measured (query failed, no privilege, stale, a standby gone silent): fail closed.
    Unknown,
    /// The job is paused (`pgbackfill pause`, or a signal).
    Paused,
    /// Outside the job's `schedule` windows.
    Schedule,
}

impl ThrottleReason {
    pub const ALL: [ThrottleReason; 8] = [
        ThrottleReason::LagSeconds,
        ThrottleReason::LagBytes,
        ThrottleReason::Replicas,
        ThrottleReason::Slot,
        ThrottleReason::TransactionAge,
        ThrottleReason::Unknown,
        ThrottleReason::Paused,
        ThrottleReason::Schedule,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ThrottleReason::LagSeconds => "lag_seconds",
            ThrottleReason::LagBytes => "lag_bytes",
            ThrottleReason::Replicas => "replicas",
            ThrottleReason::Slot => "slot",
            ThrottleReason::TransactionAge => "transaction_age",
            ThrottleReason::Unknown => "unknown",
            ThrottleReason::Paused => "paused",
            ThrottleReason::Schedule => "schedule",
        }
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One job's series. Creating the handles registers the series; [`JobMetrics::declare`] gives the
/// gauges their initial values. Cheap to clone; all clones (and all handles made for the same
/// job name) record into the same series.
#[derive(Clone)]
pub struct JobMetrics {
    rows_updated: Counter,
    rows_scanned: Counter,
    batches: Vec<(BatchOutcome, Counter)>,
    lock_timeouts: Counter,
    batch_duration: Histogram,
    batch_size: Gauge,
    states: Vec<(&'static str, Gauge)>,
    paused: Vec<(&'static str, Gauge)>,
    progress: Gauge,
    eta: Gauge,
    last_batch: Gauge,
    throttled: Vec<(ThrottleReason, Gauge)>,
    throttled_seconds: Counter,
    throttle_scale: Gauge,
}

impl std::fmt::Debug for JobMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobMetrics")
    }
}

impl JobMetrics {
    pub fn new(job: &str) -> Self {
        let j = || (JOB, job.to_string());
        JobMetrics {
            rows_updated: counter!(ROWS_UPDATED, &[j()]),
            rows_scanned: counter!(ROWS_SCANNED, &[j()]),
            batches: BatchOutcome::ALL
                .iter()
                .map(|o| (*o, counter!(BATCHES, &[j(), ("outcome", o.label().to_string())])))
                .collect(),
            lock_timeouts: counter!(LOCK_TIMEOUTS, &[j()]),
            batch_duration: histogram!(BATCH_DURATION, &[j()]),
            batch_size: gauge!(BATCH_SIZE, &[j()]),
            states: JOB_STATES.iter().map(|s| (*s, gauge!(JOB_STATE, &[j(), ("state", s.to_string())]))).collect(),
            paused: PAUSED_BY.iter().map(|b| (*b, gauge!(JOB_PAUSED, &[j(), ("by", b.to_string())]))).collect(),
            progress: gauge!(JOB_PROGRESS, &[j()]),
            eta: gauge!(JOB_ETA, &[j()]),
            last_batch: gauge!(LAST_BATCH, &[j()]),
            throttled: ThrottleReason::ALL
                .iter()
                .map(|r| (*r, gauge!(THROTTLED, &[j(), ("reason", r.label().to_string())])))
                .collect(),
            throttled_seconds: counter!(THROTTLED_SECONDS, &[j()]),
            throttle_scale: gauge!(THROTTLE_SCALE, &[j()]),
        }
    }

    /// Register every series of a job that was just loaded, with gauges at their starting values:
    /// the spec's batch size, no progress, ETA unknown (NaN), not throttled, full speed, and the
    /// last-batch time set to now (the stall clock of a job starts when a daemon loads it).
    /// Call once per job per process: it resets gauges.
    pub fn declare(job: &str, batch_size: i64) -> Self {
        let m = Self::new(job);
        m.batch_size.set(batch_size as f64);
        m.progress.set(0.0);
        m.eta.set(f64::NAN);
        m.last_batch.set(unix_now());
        m.throttle_scale.set(1.0);
        for (_, g) in &m.throttled {
            g.set(0.0);
        }
        m.set_paused(None);
        m
    }

    pub fn batch_committed(&self, updated: i64, scanned: i64, elapsed: Duration) {
        self.rows_updated.increment(updated.max(0) as u64);
        self.rows_scanned.increment(scanned.max(0) as u64);
        self.count(BatchOutcome::Committed);
        self.batch_duration.record(elapsed.as_secs_f64());
        self.last_batch.set(unix_now());
    }

    pub fn batch_failed(&self, outcome: BatchOutcome) {
        self.count(outcome);
        if outcome == BatchOutcome::LockTimeout {
            self.lock_timeouts.increment(1);
        }
    }

    fn count(&self, outcome: BatchOutcome) {
        if let Some((_, c)) = self.batches.iter().find(|(o, _)| *o == outcome) {
            c.increment(1);
        }
    }

    pub fn set_batch_size(&self, rows: i64) {
        self.batch_size.set(rows as f64);
    }

    /// 1 for `state` (one of [`JOB_STATES`]), 0 for the others. Paused also shows as
    /// `pgbackfill_throttled{reason="paused"}`.
    pub fn set_state(&self, state: &str) {
        debug_assert!(JOB_STATES.contains(&state), "job state {state} is not in metrics::JOB_STATES");
        for (s, g) in &self.states {
            g.set(if *s == state { 1.0 } else { 0.0 });
        }
        self.set_held(ThrottleReason::Paused, state == "paused");
    }

    /// No state: the job is gone from the progress table (`pgbackfill forget`).
    pub fn clear_state(&self) {
        for (_, g) in &self.states {
            g.set(0.0);
        }
        self.set_held(ThrottleReason::Paused, false);
    }

    /// While paused: 1 for how (one of [`PAUSED_BY`]), 0 for the other; all 0 when not paused.
    pub fn set_paused(&self, by: Option<&str>) {
        debug_assert!(by.is_none_or(|b| PAUSED_BY.contains(&b)), "paused by {by:?} is not in metrics::PAUSED_BY");
        for (b, g) in &self.paused {
            g.set(if Some(*b) == by { 1.0 } else { 0.0 });
        }
    }

    /// Progress (0–1) and ETA in seconds (`None`: unknown, shown as NaN), as `status` computes them.
    pub fn set_progress(&self, ratio: Option<f64>, eta_seconds: Option<f64>) {
        self.progress.set(ratio.unwrap_or(0.0).clamp(0.0, 1.0));
        self.eta.set(eta_seconds.unwrap_or(f64::NAN));
    }

    /// The throttle holds the job for `reason` (`None`: it runs, at `scale` of full speed).
    /// Leaves `paused` alone: that one follows the job's state.
    pub fn set_throttle(&self, reason: Option<ThrottleReason>, scale: f64) {
        for (r, g) in &self.throttled {
            if *r != ThrottleReason::Paused {
                g.set(if Some(*r) == reason { 1.0 } else { 0.0 });
            }
        }
        self.throttle_scale.set(if reason.is_some() { 0.0 } else { scale });
    }

    fn set_held(&self, reason: ThrottleReason, held: bool) {
        if let Some((_, g)) = self.throttled.iter().find(|(r, _)| *r == reason) {
            g.set(if held { 1.0 } else { 0.0 });
        }
    }

    pub fn add_throttled_seconds(&self, seconds: u64) {
        self.throttled_seconds.increment(seconds);
    }
}

/// One standby's lag gauges (`replica` is its application name, as in `pg_stat_replication`).
pub struct ReplicaMetrics {
    pub lag_seconds: Gauge,
    pub lag_bytes: Gauge,
}

impl ReplicaMetrics {
    pub fn new(replica: &str) -> Self {
        let r = || [(REPLICA, replica.to_string())];
        ReplicaMetrics { lag_seconds: gauge!(REPLICA_LAG_SECONDS, &r()), lag_bytes: gauge!(REPLICA_LAG_BYTES, &r()) }
    }
}

/// The job's `throttle.max_lag`, so a dashboard can draw each standby's lag against the line that
/// holds the job. Set on every scan: tuning changes apply live.
pub fn set_job_max_lag(job: &str, max_lag: Duration) {
    gauge!(JOB_MAX_LAG, &[(JOB, job.to_string())]).set(max_lag.as_secs_f64());
}

/// WAL retained by one replication slot.
pub fn slot_retained_bytes(slot: &str) -> Gauge {
    gauge!(SLOT_RETAINED_BYTES, &[(SLOT, slot.to_string())])
}

/// The daemon-wide gauges.
pub struct DaemonMetrics {
    pub active_workers: Gauge,
    pub spec_errors: Gauge,
    /// Jobs whose spec this daemon refuses (meaning changed, missing privilege, table gone …).
    pub jobs_refused: Gauge,
    pub replicas_streaming: Gauge,
    pub oldest_transaction_seconds: Gauge,
    pub lag_measurement_ok: Gauge,
}

impl DaemonMetrics {
    pub fn get() -> Self {
        DaemonMetrics {
            active_workers: gauge!(ACTIVE_WORKERS),
            spec_errors: gauge!(SPEC_ERRORS),
            jobs_refused: gauge!(JOBS_REFUSED),
            replicas_streaming: gauge!(REPLICAS_STREAMING),
            oldest_transaction_seconds: gauge!(OLDEST_TRANSACTION_SECONDS),
            lag_measurement_ok: gauge!(LAG_MEASUREMENT_OK),
        }
    }
}

/// Register descriptions (shown as `# HELP` lines) and the daemon-wide series with the installed
/// recorder. Call once, right after installing it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(ROWS_UPDATED, "Rows changed by committed backfill batches");
    describe_counter!(ROWS_SCANNED, "Keys visited by committed backfill batches (rows examined)");
    describe_counter!(BATCHES, "Batch attempts by outcome (committed, or the error class of a failed attempt)");
    describe_counter!(LOCK_TIMEOUTS, "Batch attempts that gave up waiting for a row lock (timeouts.lock)");
    describe_histogram!(BATCH_DURATION, Unit::Seconds, "Wall time of committed batches");
    describe_gauge!(BATCH_SIZE, "Current batch size (rows) of the job in this daemon");
    describe_gauge!(JOB_STATE, "1 for the job's current state, 0 for the other states");
    describe_gauge!(JOB_PAUSED, "1 while the job is paused, by how: by=\"signal\" (SIGUSR1) or by=\"cli\"");
    describe_gauge!(JOB_PROGRESS, "Fraction of the job's estimated rows scanned (0-1), as in pgbackfill status");
    describe_gauge!(
        JOB_ETA,
        Unit::Seconds,
        "Estimated time to completion at the working rate (paused and throttled time excluded); NaN if unknown"
    );
    describe_gauge!(
        LAST_BATCH,
        Unit::Seconds,
        "Unix time of the job's last committed batch in this daemon (the load time before the first)"
    );
    describe_gauge!(THROTTLED, "1 while the job is held, with the reason; 0 otherwise");
    describe_counter!(THROTTLED_SECONDS, Unit::Seconds, "Time the job spent held by the throttle");
    describe_gauge!(
        THROTTLE_SCALE,
        "Rate allowed by the throttle: fraction of time spent in batches (1 = full speed, 0 = held)"
    );
    describe_gauge!(JOB_MAX_LAG, Unit::Seconds, "The job's throttle.max_lag: it is held while a standby lags more");
    describe_gauge!(
        REPLICA_LAG_SECONDS,
        Unit::Seconds,
        "Replay lag per standby, as measured on the primary (NaN: unknown)"
    );
    describe_gauge!(REPLICA_LAG_BYTES, Unit::Bytes, "WAL bytes not yet replayed per standby (NaN: unknown)");
    describe_gauge!(SLOT_RETAINED_BYTES, Unit::Bytes, "WAL retained by each replication slot");
    describe_gauge!(BUILD_INFO, "Always 1; the version label says which pgbackfill is running");
    describe_gauge!(ACTIVE_WORKERS, "Range workers running in this daemon");
    describe_gauge!(SPEC_ERRORS, "Spec files in the jobs directory that fail validation");
    describe_gauge!(
        JOBS_REFUSED,
        "Jobs whose spec the daemon refuses against the database (meaning changed, missing privilege, ...)"
    );
    describe_gauge!(REPLICAS_STREAMING, "Standbys in state streaming");
    describe_gauge!(OLDEST_TRANSACTION_SECONDS, Unit::Seconds, "Age of the oldest open transaction");
    describe_gauge!(LAG_MEASUREMENT_OK, "1 when the last lag measurement succeeded (0: the throttle fails closed)");
    describe_gauge!(
        STEP_STATE,
        "1 for the state of each `then` step of a job (pending, waiting, running, done, failed)"
    );

    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let d = DaemonMetrics::get();
    d.active_workers.set(0.0);
    d.spec_errors.set(0.0);
    d.jobs_refused.set(0.0);
    d.replicas_streaming.set(0.0);
    d.oldest_transaction_seconds.set(0.0);
    d.lag_measurement_ok.set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for name in ALL {
            assert!(name.starts_with("pgbackfill_"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
            let is_counter = [ROWS_UPDATED, ROWS_SCANNED, BATCHES, LOCK_TIMEOUTS, THROTTLED_SECONDS].contains(name);
            assert_eq!(name.ends_with("_total"), is_counter, "{name}: _total on counters only");
        }
        let mut sorted = ALL.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ALL.len(), "a name is listed twice");
    }

    /// The README's metrics table is the user's copy of the contract: every name, in a row of its own.
    #[test]
    fn the_readme_documents_every_metric() {
        let readme = include_str!("../README.md");
        for name in ALL {
            assert!(readme.contains(&format!("| `{name}` |")), "README's metrics table lacks {name}");
        }
    }

    #[test]
    fn label_values_are_bounded_and_distinct() {
        let outcomes: Vec<_> = BatchOutcome::ALL.iter().map(|o| o.label()).collect();
        let reasons: Vec<_> = ThrottleReason::ALL.iter().map(|r| r.label()).collect();
        for set in [&outcomes, &reasons, &JOB_STATES.to_vec(), &PAUSED_BY.to_vec()] {
            let mut s = set.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), set.len(), "{set:?}");
            assert!(set.iter().all(|v| v.chars().all(|c| c.is_ascii_lowercase() || c == '_')), "{set:?}");
        }
        assert_eq!(BATCH_DURATION_BUCKETS.first(), Some(&0.005));
        assert_eq!(BATCH_DURATION_BUCKETS.last(), Some(&60.0));
    }

    /// A job's every series renders as soon as it is declared, before any batch: counters at 0
    /// (one per outcome), an empty histogram with the contract's buckets, gauges set.
    #[test]
    fn a_declared_job_renders_every_series() {
        let recorder = crate::http::prometheus_builder().expect("builder").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            JobMetrics::declare("j", 500);
        });
        let text = handle.render();
        let per_job = [
            ROWS_UPDATED,
            ROWS_SCANNED,
            BATCHES,
            LOCK_TIMEOUTS,
            BATCH_SIZE,
            JOB_STATE,
            JOB_PAUSED,
            JOB_PROGRESS,
            JOB_ETA,
            LAST_BATCH,
            THROTTLED,
            THROTTLED_SECONDS,
            THROTTLE_SCALE,
        ];
        for name in per_job {
            assert!(text.contains(&format!("{name}{{job=\"j\"")), "{name} missing:\n{text}");
        }
        assert!(text.contains("pgbackfill_batch_duration_seconds_bucket{job=\"j\",le=\"0.005\"} 0"), "{text}");
        assert!(text.contains("pgbackfill_batch_duration_seconds_bucket{job=\"j\",le=\"60\"} 0"), "{text}");
        assert!(text.contains("pgbackfill_batches_total{job=\"j\",outcome=\"committed\"} 0"), "{text}");
        assert!(text.contains("pgbackfill_batch_size{job=\"j\"} 500"), "{text}");
        assert!(text.contains("# TYPE pgbackfill_batch_duration_seconds histogram"), "{text}");
        assert!(text.contains(&format!("{BUILD_INFO}{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{text}");
    }
}
