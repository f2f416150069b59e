//! Batch size: how many rows the next batch takes.
//!
//! Two things set it:
//! - `batch.target_time` is the longest a batch may hold its row locks. With it, the size follows a
//!   smoothed (EWMA) per-row cost toward [`HEADROOM`] of that time, so that a batch rarely runs
//!   over it; it grows at most 2x per batch and is cut at once after a batch that ran over.
//!   Without it the size is `batch.size`.
//! - Contention: when other sessions were waiting on the batch's row locks as it finished, the
//!   application is paying for them. The size is halved at once (and the time budget with it), and
//!   grows back by [`RECOVERY`] per batch that nobody waited on. Backfills of rows the application
//!   never touches thus run at full size, and hot ranges in small, short batches.
//!
//! A statement timeout halves the size too.

use std::time::Duration;

/// The current batch size of one worker.
#[derive(Debug, Clone)]
pub struct Sizer {
    size: f64,
    min: f64,
    max: f64,
    /// The fixed size when there is no target time.
    base: f64,
    target: Option<Duration>,
    secs_per_row: Option<f64>,
    /// 1 when nobody waits on our locks; halved per contended batch.
    pressure: f64,
}

const SMOOTHING: f64 = 0.3;
/// The share of `target_time` the size aims at, so that noise rarely pushes a batch over it.
pub const HEADROOM: f64 = 0.8;
/// Growth of the contention factor per batch nobody waited on.
pub const RECOVERY: f64 = 1.25;
/// The lowest contention factor (the size is also never below `batch.min_size`).
const MIN_PRESSURE: f64 = 1.0 / 256.0;

impl Sizer {
    pub fn new(start: i64, min: i64, max: i64, target: Option<Duration>) -> Self {
        let (min, max) = (min.max(1) as f64, max.max(1) as f64);
        let size = (start as f64).clamp(min, max);
        Self { size, min, max, base: size, target, secs_per_row: None, pressure: 1.0 }
    }

    /// Rows for the next batch.
    pub fn size(&self) -> i64 {
        self.size.round() as i64
    }

    /// Learn from a finished batch: its rows, how long it held its locks, and how many other
    /// sessions were waiting on them when it finished.
    pub fn observe(&mut self, rows: i64, elapsed: Duration, waiters: i64) {
        if waiters > 0 {
            self.pressure = (self.pressure * 0.5).max(MIN_PRESSURE);
            self.size = (self.size * 0.5).clamp(self.min, self.max);
        } else {
            self.pressure = (self.pressure * RECOVERY).min(1.0);
        }
        let Some(target) = self.target else {
            if waiters == 0 {
                // Back toward the configured size, no faster than the contention factor allows.
                self.size = (self.size * RECOVERY).min(self.base * self.pressure).max(self.size.min(self.base));
                self.size = self.size.clamp(self.min, self.max);
            }
            return;
        };
        if rows <= 0 {
            return;
        }
        let per_row = elapsed.as_secs_f64() / rows as f64;
        let smoothed = match self.secs_per_row {
            Some(prev) => prev + SMOOTHING * (per_row - prev),
            None => per_row,
        };
        self.secs_per_row = Some(smoothed);
        let budget = target.as_secs_f64() * HEADROOM * self.pressure;
        if elapsed > target {
            // Over the limit: cut straight to what this batch says fits.
            self.size = (budget / per_row).clamp(self.min, self.max).min(self.size);
            return;
        }
        if smoothed <= 0.0 || waiters > 0 {
            return;
        }
        let ideal = budget / smoothed;
        self.size = ideal.min(self.size * 2.0).clamp(self.min, self.max);
    }

    /// After a statement timeout.
    pub fn halve(&mut self) {
        self.size = (self.size / 2.0).max(self.min);
    }

    /// Whether halving can still help.
    pub fn at_min(&self) -> bool {
        self.size <= self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_without_target() {
        let mut s = Sizer::new(1000, 100, 10_000, None);
        s.observe(1000, Duration::from_secs(5), 0);
        assert_eq!(s.size(), 1000);
        s.halve();
        assert_eq!(s.size(), 500);
    }

    #[test]
    fn converges_below_the_target() {
        // 1 ms per row, target 500 ms: the size approaches 400 (80% of the target) and no batch
        // runs over 500 ms.
        let mut s = Sizer::new(100, 10, 100_000, Some(Duration::from_millis(500)));
        for _ in 0..30 {
            let rows = s.size();
            assert!(rows <= 500, "{rows}");
            s.observe(rows, Duration::from_micros(rows as u64 * 1000), 0);
        }
        assert!((380..=420).contains(&s.size()), "{}", s.size());
    }

    #[test]
    fn shrinks_at_once_after_a_slow_batch_and_respects_bounds() {
        let mut s = Sizer::new(10_000, 100, 100_000, Some(Duration::from_millis(500)));
        s.observe(10_000, Duration::from_secs(5), 0);
        assert_eq!(s.size(), 800);
        s.observe(800, Duration::from_secs(60), 0);
        assert_eq!(s.size(), 100);
        for _ in 0..50 {
            s.observe(s.size(), Duration::from_micros(1), 0);
        }
        assert_eq!(s.size(), 100_000);
    }

    #[test]
    fn contention_halves_at_once_and_recovers_gradually() {
        for target in [None, Some(Duration::from_millis(500))] {
            let mut s = Sizer::new(4_000, 10, 100_000, target);
            // 0.1 ms per row: 4,000 rows take 400 ms, inside the target.
            let cost = |rows: i64| Duration::from_micros(rows as u64 * 100);
            for _ in 0..10 {
                s.observe(s.size(), cost(s.size()), 0);
            }
            let full = s.size();
            assert!(full >= 3_900, "{target:?}: {full}");
            for expected in [full / 2, full / 4, full / 8] {
                s.observe(s.size(), cost(s.size()), 1);
                assert!((s.size() - expected).abs() <= 1, "{target:?}: {} vs {expected}", s.size());
            }
            // Nobody waits any more: back to full size within a few dozen batches, not at once.
            s.observe(s.size(), cost(s.size()), 0);
            assert!(s.size() < full / 2, "{target:?}: grows back gradually: {}", s.size());
            for _ in 0..30 {
                s.observe(s.size(), cost(s.size()), 0);
            }
            assert!(s.size() >= full * 95 / 100, "{target:?}: {} vs {full}", s.size());
        }
    }
}
