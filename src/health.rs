//! Liveness from evidence: each long-lived loop stamps "last progress" whenever it completes a step,
//! and `/healthz` compares the stamps with what the loop promised.
//!
//! A loop registers with [`Liveness::watch`], giving its interval and a bound on how long one step
//! may legitimately take (a database call that waits for its pool's acquire timeout is slow, not
//! wedged). It is considered wedged when its last stamp is older than three intervals plus that
//! bound. A loop that ends cleanly calls [`Heartbeat::finished`]; one that panics or hangs keeps its
//! old stamp and shows up as wedged, which is the point.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many missed intervals (on top of the step bound) make a loop wedged.
const MISSED_INTERVALS: u32 = 3;

#[derive(Debug)]
struct LoopState {
    name: &'static str,
    interval: Duration,
    allowed: Duration,
    last: Mutex<Instant>,
    finished: Mutex<bool>,
}

/// The loops this daemon watches. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    loops: Arc<Mutex<Vec<Arc<LoopState>>>>,
}

/// A loop's stamp. [`Heartbeat::default`] is detached: it stamps nothing anyone reads (the demo,
/// tests, CLI commands).
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Option<Arc<LoopState>>);

impl Heartbeat {
    /// The loop completed a step just now.
    pub fn beat(&self) {
        if let Some(s) = &self.0 {
            *s.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }

    /// The loop ended on purpose (shutdown): no longer expected to beat.
    pub fn finished(&self) {
        if let Some(s) = &self.0 {
            *s.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
        }
    }
}

impl Liveness {
    /// Watch a loop that stamps every `interval`, one step of which may take up to `step_bound`.
    /// Stamps once now (the loop is starting).
    pub fn watch(&self, name: &'static str, interval: Duration, step_bound: Duration) -> Heartbeat {
        let state = Arc::new(LoopState {
            name,
            interval,
            allowed: interval * MISSED_INTERVALS + step_bound,
            last: Mutex::new(Instant::now()),
            finished: Mutex::new(false),
        });
        self.loops.lock().unwrap_or_else(|e| e.into_inner()).push(state.clone());
        Heartbeat(Some(state))
    }

    /// `Ok` with a one-line summary when every running loop stamped recently enough; `Err` naming
    /// each wedged loop, how long it has been silent and what was expected.
    pub fn check(&self) -> Result<String, String> {
        let loops = self.loops.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut ok = Vec::new();
        let mut wedged = Vec::new();
        for l in loops {
            if *l.finished.lock().unwrap_or_else(|e| e.into_inner()) {
                continue;
            }
            let silent = l.last.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
            if silent > l.allowed {
                wedged.push(format!(
                    "{} loop has made no progress for {:.0}s (it runs every {}; limit {:.0}s)",
                    l.name,
                    silent.as_secs_f64(),
                    humantime::format_duration(l.interval),
                    l.allowed.as_secs_f64()
                ));
            } else {
                ok.push(format!("{} {:.1}s ago", l.name, silent.as_secs_f64()));
            }
        }
        if !wedged.is_empty() {
            return Err(wedged.join("; "));
        }
        if ok.is_empty() {
            return Ok("ok (starting: no loop running yet)".into());
        }
        Ok(format!("ok: last progress {}", ok.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_loop_is_wedged_and_a_finished_one_is_not() {
        let l = Liveness::default();
        assert!(l.check().is_ok_and(|s| s.contains("starting")));
        let fast = l.watch("supervisor", Duration::from_millis(10), Duration::ZERO);
        let slow = l.watch("throttle", Duration::from_secs(60), Duration::ZERO);
        fast.beat();
        assert!(l.check().is_ok(), "{:?}", l.check());
        std::thread::sleep(Duration::from_millis(50));
        let err = l.check().expect_err("supervisor is silent for 5 of its intervals");
        assert!(err.contains("supervisor loop has made no progress"), "{err}");
        assert!(!err.contains("throttle"), "{err}");
        fast.beat();
        assert!(l.check().is_ok());
        std::thread::sleep(Duration::from_millis(50));
        fast.finished();
        assert!(l.check().is_ok(), "a loop that ended on purpose is not wedged");
        slow.beat();
        Heartbeat::default().beat();
    }
}
