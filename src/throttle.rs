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
                            reason: format!("replication slot {} retains {b} bytes of WAL, over {} bytes", slot.name, limit as u64),
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
    if fraction_of_limit <= 0.5 {
        1.0
    } else {
        (1.0 - (fraction_of_limit - 0.5) * 1.8).clamp(0.1, 1.0)
    }
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
            standbys: vec![Standby { name: "s1".into(), lag_seconds: Some(lag), lag_bytes: Some(bytes), streaming: true }],
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
        let mut g = Gate::new(ThrottleSpec {
            min_replicas: 1,
            max_lag_bytes: Some(bytesize::ByteSize::mb(1)),
            ..spec()
        });
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
