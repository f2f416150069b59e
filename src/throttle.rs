//! Throttle: measure replica lag and other health signals on the primary, and gate the workers.
//!
//! One [`Controller`] per database polls `pg_stat_replication` (and, when any job asks, replication
//! slots and the oldest open transaction) and publishes each [`Measurement`] on a `watch` channel.
//! Every worker owns a [`Gate`] built from its job's `throttle` section, and asks it before each
//! batch. The batch in flight always finishes; the next one waits.
//!
//! The gate fails closed: a measurement it cannot trust (query error, missing privilege, stale
//! standby replies, no measurement yet) stops the job, with the reason and the fix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::spec::ThrottleSpec;

/// One standby (or other replication client that replays WAL) as seen from the primary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standby {
    pub name: String,
    /// Replay lag in seconds; `None` when it cannot be known (stale replies, no privilege).
    pub lag_seconds: Option<f64>,
    /// WAL bytes not yet replayed; `None` when unknown.
    pub lag_bytes: Option<i64>,
    pub streaming: bool,
}

/// A replication slot's retained WAL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slot {
    pub name: String,
    pub retained_bytes: Option<i64>,
    pub active: bool,
}

/// Everything the controller learned in one poll.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    #[serde(skip)]
    pub at: Instant,
    pub standbys: Vec<Standby>,
    pub slots: Vec<Slot>,
    pub oldest_transaction_seconds: Option<f64>,
    /// Why lag could not be measured, with the fix. Fail closed while this is set.
    pub error: Option<String>,
}

impl Measurement {
    /// The state before the first poll: nothing is known, so nothing may run.
    pub fn unknown() -> Self {
        Self {
            at: Instant::now(),
            standbys: Vec::new(),
            slots: Vec::new(),
            oldest_transaction_seconds: None,
            error: Some("no replication lag measurement yet".into()),
        }
    }

    pub fn streaming_count(&self) -> usize {
        self.standbys.iter().filter(|s| s.streaming).count()
    }
}

/// Shared receiving end of the controller's measurements.
pub type Measurements = watch::Receiver<Arc<Measurement>>;

/// What a worker should do before its next batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run; `scale` (0 < scale <= 1) shrinks the batch as lag approaches the limit.
    Go { scale: f64 },
    /// Do not write; the reason names the signal and, where one exists, the fix.
    Wait { reason: String },
}

/// Measurements older than this are not trusted (the controller is stuck or the database is gone).
pub const MAX_MEASUREMENT_AGE: Duration = Duration::from_secs(15);

/// One job's view of the throttle, with hysteresis: once throttled, it stays so until every signal
/// is below its resume level, so the job does not flap around the limit.
#[derive(Debug, Clone)]
pub struct Gate {
    spec: ThrottleSpec,
    throttled: bool,
}

impl Gate {
    pub fn new(spec: ThrottleSpec) -> Self {
        Self { spec, throttled: false }
    }

    pub fn decide(&mut self, m: &Measurement) -> Decision {
        let decision = self.evaluate(m);
        self.throttled = matches!(decision, Decision::Wait { .. });
        decision
    }

    fn evaluate(&self, m: &Measurement) -> Decision {
        if let Some(err) = &m.error {
            return Decision::Wait { reason: format!("lag unknown: {err}") };
        }
        if m.at.elapsed() > MAX_MEASUREMENT_AGE {
            return Decision::Wait { reason: format!("lag unknown: last measurement is {:?} old", m.at.elapsed()) };
        }
        let min = self.spec.min_replicas.max(0) as usize;
        if m.streaming_count() < min {
            return Decision::Wait {
                reason: format!("{} standby(s) streaming, throttle.min_replicas is {min}", m.streaming_count()),
            };
        }
        let max_lag = self.spec.max_lag.as_secs_f64();
        let resume_lag = self.spec.effective_resume_lag().as_secs_f64();
        // While throttled, the bar to pass is the resume level (hysteresis).
        let (lag_limit, byte_factor) = if self.throttled { (resume_lag, resume_lag / max_lag) } else { (max_lag, 1.0) };
        let mut worst_fraction: f64 = 0.0;
        for s in &m.standbys {
            let Some(lag) = s.lag_seconds else {
                return Decision::Wait { reason: format!("lag unknown for standby {}", s.name) };
            };
            if lag > lag_limit {
                return Decision::Wait {
                    reason: format!("standby {} replay lag {lag:.1}s over {}s", s.name, fmt_secs(lag_limit)),
                };
            }
            worst_fraction = worst_fraction.max(lag / max_lag);
            if let Some(max_bytes) = self.spec.max_lag_bytes {
                let limit = max_bytes.as_u64() as f64 * byte_factor;
                match s.lag_bytes {
                    None => return Decision::Wait { reason: format!("byte lag unknown for standby {}", s.name) },
                    Some(b) if b as f64 > limit => {
                        return Decision::Wait {
                            reason: format!("standby {} is {b} bytes behind, over {} bytes", s.name, limit as u64),
                        };
                    }
                    Some(b) => worst_fraction = worst_fraction.max(b as f64 / max_bytes.as_u64() as f64),
                }
            }
        }
        if let Some(max_slot) = self.spec.max_slot_retained_bytes {
            let limit = max_slot.as_u64() as f64 * if self.throttled { 0.5 } else { 1.0 };
            for slot in &m.slots {
                match slot.retained_bytes {
                    Some(b) if b as f64 > limit => {
                        return Decision::Wait {
                            reason: format!(
                                "replication slot {} retains {b} bytes of WAL, over {} bytes",
                                slot.name, limit as u64
                            ),
                        };
                    }
                    Some(b) => worst_fraction = worst_fraction.max(b as f64 / max_slot.as_u64() as f64),
                    None => {}
                }
            }
        }
        if let Some(max_age) = self.spec.max_transaction_age {
            let limit = max_age.as_secs_f64() * if self.throttled { 0.5 } else { 1.0 };
            match m.oldest_transaction_seconds {
                Some(age) if age > limit => {
                    return Decision::Wait {
                        reason: format!("oldest open transaction is {age:.0}s old, over {}s", fmt_secs(limit)),
                    };
                }
                _ => {}
            }
        }
        Decision::Go { scale: scale_for(worst_fraction) }
    }
}

/// Slow down smoothly as a signal approaches its limit instead of sawtoothing between full speed and
/// stop: full speed below half the limit, then linearly down to 10% at the limit.
pub fn scale_for(fraction_of_limit: f64) -> f64 {
    if fraction_of_limit <= 0.5 { 1.0 } else { (1.0 - (fraction_of_limit - 0.5) * 1.8).clamp(0.1, 1.0) }
}

fn fmt_secs(s: f64) -> String {
    if s.fract() == 0.0 { format!("{s:.0}") } else { format!("{s:.1}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(lag: f64, bytes: i64) -> Measurement {
        Measurement {
            at: Instant::now(),
            standbys: vec![Standby {
                name: "s1".into(),
                lag_seconds: Some(lag),
                lag_bytes: Some(bytes),
                streaming: true,
            }],
            slots: vec![],
            oldest_transaction_seconds: None,
            error: None,
        }
    }

    fn spec() -> ThrottleSpec {
        ThrottleSpec { max_lag: Duration::from_secs(10), ..ThrottleSpec::default() }
    }

    #[test]
    fn hysteresis() {
        let mut g = Gate::new(spec());
        assert!(matches!(g.decide(&measured(1.0, 0)), Decision::Go { scale } if scale == 1.0));
        assert!(matches!(g.decide(&measured(11.0, 0)), Decision::Wait { .. }));
        // Below max but above resume (5s): still waiting.
        assert!(matches!(g.decide(&measured(7.0, 0)), Decision::Wait { .. }));
        assert!(matches!(g.decide(&measured(4.0, 0)), Decision::Go { .. }));
        // Not throttled any more: 7s is allowed again, at reduced speed.
        assert!(matches!(g.decide(&measured(7.0, 0)), Decision::Go { scale } if scale < 1.0));
    }

    #[test]
    fn fails_closed() {
        let mut g = Gate::new(spec());
        assert!(matches!(g.decide(&Measurement::unknown()), Decision::Wait { .. }));
        let mut m = measured(0.0, 0);
        m.standbys[0].lag_seconds = None;
        assert!(matches!(g.decide(&m), Decision::Wait { reason } if reason.contains("unknown")));
    }

    #[test]
    fn min_replicas_and_bytes() {
        let mut g =
            Gate::new(ThrottleSpec { min_replicas: 1, max_lag_bytes: Some(bytesize::ByteSize::mb(1)), ..spec() });
        let mut none = measured(0.0, 0);
        none.standbys.clear();
        assert!(matches!(g.decide(&none), Decision::Wait { reason } if reason.contains("min_replicas")));
        assert!(matches!(g.decide(&measured(0.0, 2_000_000)), Decision::Wait { reason } if reason.contains("bytes")));
        assert!(matches!(g.decide(&measured(0.0, 100)), Decision::Go { .. }));
    }

    #[test]
    fn scale_is_smooth() {
        assert_eq!(scale_for(0.2), 1.0);
        assert!(scale_for(0.75) < 1.0 && scale_for(0.75) > scale_for(0.95));
        assert!((scale_for(1.0) - 0.1).abs() < 1e-9);
    }
}

/// Settings of the lag poller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub poll_interval: Duration,
    /// A standby whose last reply is older than this has unknown lag (its `replay_lag` freezes when
    /// it stops replying). Standbys reply at least every `wal_receiver_status_interval` (10 s by default).
    pub max_reply_age: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self { poll_interval: Duration::from_secs(1), max_reply_age: Duration::from_secs(30) }
    }
}

/// The primary's WAL position over time, to turn a standby's replay position into a time lag that
/// needs only the primary's clock: "how long ago was the primary where the standby is now?"
#[derive(Debug, Default)]
pub struct LsnHistory {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

/// An hour of samples at the default poll interval.
const HISTORY_CAP: usize = 3600;

impl LsnHistory {
    pub fn record(&mut self, at: Instant, lsn: u64) {
        if self.samples.len() == HISTORY_CAP {
            self.samples.pop_front();
        }
        self.samples.push_back((at, lsn));
    }

    /// Time lag of a standby that has replayed up to `replay`, as of `now`. `None` when the history
    /// cannot tell (no sample yet).
    pub fn lag(&self, replay: u64, now: Instant) -> Option<Duration> {
        let &(_, current) = self.samples.back()?;
        if replay >= current {
            return Some(Duration::ZERO);
        }
        let i = self.samples.iter().position(|&(_, lsn)| lsn > replay)?;
        if i == 0 {
            // Already past `replay` at the oldest sample: at least that long ago.
            return Some(now.duration_since(self.samples[0].0));
        }
        let (t0, l0) = self.samples[i - 1];
        let (t1, l1) = self.samples[i];
        let frac = (replay - l0) as f64 / (l1 - l0).max(1) as f64;
        let passed = t0 + t1.duration_since(t0).mul_f64(frac);
        Some(now.saturating_duration_since(passed))
    }
}

/// Byte lag below which a NULL `replay_lag` means "caught up" (an idle system reports NULL).
const CAUGHT_UP_BYTES: i64 = 1024 * 1024;

/// Byte lag below which the primary-side time estimate is not used.
const SMALL_GAP_BYTES: i64 = 64 * 1024;

/// Poll the primary until cancelled, publishing every measurement.
pub fn spawn_controller(
    pool: sqlx::PgPool,
    cfg: ControllerConfig,
    cancel: tokio_util::sync::CancellationToken,
) -> Measurements {
    let (tx, rx) = watch::channel(Arc::new(Measurement::unknown()));
    tokio::spawn(async move {
        let mut history = LsnHistory::default();
        let mut last_error: Option<String> = None;
        loop {
            let m = measure(&pool, &cfg, &mut history).await;
            publish_metrics(&m);
            if m.error != last_error {
                match &m.error {
                    Some(e) => tracing::warn!(error = %e, "replica lag unknown: throttling every job (fail closed)"),
                    None => tracing::info!("replica lag measurement ok"),
                }
                last_error = m.error.clone();
            }
            if tx.send(Arc::new(m)).is_err() {
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(cfg.poll_interval) => {}
            }
        }
    });
    rx
}

type ReplicationRow = (String, Option<String>, Option<f64>, Option<f64>, Option<f64>);

/// One poll. Never fails: a failure is a measurement with `error` set.
pub async fn measure(pool: &sqlx::PgPool, cfg: &ControllerConfig, history: &mut LsnHistory) -> Measurement {
    match try_measure(pool, cfg, history).await {
        Ok(m) => m,
        Err(e) => {
            Measurement { error: Some(format!("cannot read pg_stat_replication: {e}")), ..Measurement::unknown() }
        }
    }
}

async fn try_measure(
    pool: &sqlx::PgPool,
    cfg: &ControllerConfig,
    history: &mut LsnHistory,
) -> Result<Measurement, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *conn).await?;
    if in_recovery {
        return Ok(Measurement {
            error: Some("connected to a standby: point --database-url at the primary".into()),
            ..Measurement::unknown()
        });
    }
    let current: f64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8").fetch_one(&mut *conn).await?;
    let now = Instant::now();
    history.record(now, current as u64);
    let rows: Vec<ReplicationRow> = sqlx::query_as(
        "SELECT coalesce(nullif(application_name, ''), 'pid ' || pid) || coalesce(' (' || client_addr || ')', ''), \
                state, pg_wal_lsn_diff(replay_lsn, '0/0')::float8, extract(epoch FROM replay_lag)::float8, \
                extract(epoch FROM clock_timestamp() - reply_time)::float8 \
         FROM pg_stat_replication ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut standbys = Vec::new();
    let mut error = None;
    for (name, state, replay, replay_lag, reply_age) in rows {
        let Some(state) = state else {
            // Without pg_monitor / pg_read_all_stats every column but the name is NULL.
            error = Some(
                "the role cannot see replication status (pg_stat_replication columns are NULL): GRANT pg_monitor TO <role>"
                    .to_string(),
            );
            continue;
        };
        let Some(replay) = replay else {
            // pg_receivewal, backup tools: they never replay, so they cannot lag in the sense we mean.
            continue;
        };
        let streaming = state == "streaming";
        let lag_bytes = (current - replay).max(0.0) as i64;
        let stale = reply_age.is_none_or(|age| age > cfg.max_reply_age.as_secs_f64());
        // A few KiB behind is a standby between replies, not lag; the primary-side estimate would
        // otherwise count a tiny gap in an idle system as ever-growing time.
        let computed = if lag_bytes > SMALL_GAP_BYTES {
            history.lag(replay as u64, now).map(|d| d.as_secs_f64())
        } else {
            Some(0.0)
        };
        let lag_seconds = if stale {
            None
        } else {
            match (replay_lag, computed) {
                (Some(r), Some(c)) => Some(r.max(c)),
                (Some(r), None) => Some(r),
                (None, Some(c)) => Some(c),
                (None, None) if lag_bytes <= CAUGHT_UP_BYTES => Some(0.0),
                (None, None) => None,
            }
        };
        standbys.push(Standby { name, lag_seconds, lag_bytes: Some(lag_bytes), streaming });
    }
    let slots: Vec<(String, bool, Option<i64>)> = sqlx::query_as(
        "SELECT slot_name::text, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 FROM pg_replication_slots",
    )
    .fetch_all(&mut *conn)
    .await?;
    let oldest: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(clock_timestamp() - xact_start))::float8 FROM pg_stat_activity \
         WHERE xact_start IS NOT NULL AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Measurement {
        at: now,
        standbys,
        slots: slots.into_iter().map(|(name, active, retained_bytes)| Slot { name, retained_bytes, active }).collect(),
        oldest_transaction_seconds: oldest,
        error,
    })
}

fn publish_metrics(m: &Measurement) {
    use crate::metrics as names;
    metrics::gauge!(names::LAG_MEASUREMENT_OK).set(if m.error.is_none() { 1.0 } else { 0.0 });
    metrics::gauge!(names::REPLICAS_STREAMING).set(m.streaming_count() as f64);
    for s in &m.standbys {
        if let Some(l) = s.lag_seconds {
            metrics::gauge!(names::REPLICA_LAG_SECONDS, "standby" => s.name.clone()).set(l);
        }
        if let Some(b) = s.lag_bytes {
            metrics::gauge!(names::REPLICA_LAG_BYTES, "standby" => s.name.clone()).set(b as f64);
        }
    }
    for s in &m.slots {
        if let Some(b) = s.retained_bytes {
            metrics::gauge!(names::SLOT_RETAINED_BYTES, "slot" => s.name.clone()).set(b as f64);
        }
    }
    if let Some(age) = m.oldest_transaction_seconds {
        metrics::gauge!(names::OLDEST_TRANSACTION_SECONDS).set(age);
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;

    #[test]
    fn time_lag_from_primary_positions() {
        let t0 = Instant::now();
        let mut h = LsnHistory::default();
        h.record(t0, 1000);
        h.record(t0 + Duration::from_secs(1), 2000);
        h.record(t0 + Duration::from_secs(2), 3000);
        let now = t0 + Duration::from_secs(2);
        assert_eq!(h.lag(3000, now), Some(Duration::ZERO));
        // The primary was at 1500 half-way between the first two samples: 1.5 s ago.
        let lag = h.lag(1500, now).unwrap().as_secs_f64();
        assert!((lag - 1.5).abs() < 0.01, "{lag}");
        // Behind the oldest sample: at least the whole history.
        assert_eq!(h.lag(10, now), Some(Duration::from_secs(2)));
        // A paused standby's lag grows in real time without new samples.
        let later = now + Duration::from_secs(5);
        assert!(h.lag(1500, later).unwrap() > Duration::from_secs(6));
    }
}
