//! Batch size: how many rows the next batch takes.
//!
//! Two things set it:
//! - `batch.target_time` is the longest a batch may hold its row locks. With it, the size follows a
//!   smoothed (EWMA) per-row cost toward [`HEADROOM`] of that time, so that a batch rarely runs
//!   over it; it grows at most 2x per batch and is cut at once after a batch that ran over.
//!   Without it (a spec that sets `batch.size` and no `target_time`) the size is `batch.size`;
//!   a spec that sets neither gets [`crate::spec::DEFAULT_TARGET_TIME`].
//! - Contention: when other sessions were waiting on the batch's row locks as it finished, the
//!   application is paying for them. The size is halved at once (and the time budget with it), and
//!   grows back by doubling per [`RECOVERY_DOUBLING`] of wall time in which nobody waited.
//!   Backfills of rows the application never touches thus run at full size, and hot ranges in
//!   small, short batches.
//!
//!   Recovery is by time, not per batch, because of what the application sees: when it touches
//!   rows at random, the number of its statements that queue behind batches per *second* grows
//!   with the batch size, whatever the batch rate (a batch twice as big holds twice the rows for
//!   twice as long, once per twice as long). Halving on every contended batch and doubling per
//!   second of calm settles near one contended batch a second, a small share of any busy
//!   application's statements, while per-batch recovery settled where many batches a second were
//!   contended (measured: 35 of 143 batches, application p99 6× its p99 alone).
//!
//! A statement timeout halves the size too.

use std::time::{Duration, Instant};

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
    /// When the previous batch was observed: recovery is measured in wall time.
    last_observed: Option<Instant>,
}

const SMOOTHING: f64 = 0.3;
/// The share of `target_time` the size aims at, so that noise rarely pushes a batch over it.
pub const HEADROOM: f64 = 0.8;
/// Wall time in which the contention factor doubles while nobody waits on our locks.
pub const RECOVERY_DOUBLING: Duration = Duration::from_secs(1);
/// The lowest contention factor (the size is also never below `batch.min_size`).
const MIN_PRESSURE: f64 = 1.0 / 256.0;

impl Sizer {
    pub fn new(start: i64, min: i64, max: i64, target: Option<Duration>) -> Self {
        let (min, max) = (min.max(1) as f64, max.max(1) as f64);
        let size = (start as f64).clamp(min, max);
        Self { size, min, max, base: size, target, secs_per_row: None, pressure: 1.0, last_observed: None }
    }

    /// Rows for the next batch.
    pub fn size(&self) -> i64 {
        self.size.round() as i64
    }

    /// Learn from a finished batch: its rows, how long it held its locks, and how many other
    /// sessions were waiting on them when it finished.
    pub fn observe(&mut self, rows: i64, elapsed: Duration, waiters: i64) {
        self.observe_at(Instant::now(), rows, elapsed, waiters);
    }

    /// [`Self::observe`] for a batch that finished at `now`.
    pub fn observe_at(&mut self, now: Instant, rows: i64, elapsed: Duration, waiters: i64) {
        // Calm since the previous batch (its own duration at least: the first batch has none).
        let calm = self.last_observed.map_or(elapsed, |t| now.saturating_duration_since(t)).max(elapsed);
        self.last_observed = Some(now);
        if waiters > 0 {
            self.pressure = (self.pressure * 0.5).max(MIN_PRESSURE);
            self.size = (self.size * 0.5).clamp(self.min, self.max);
        } else {
            // At most doubled per batch: after a long pause nothing says the rows are calm now.
            let growth = 2f64.powf(calm.as_secs_f64() / RECOVERY_DOUBLING.as_secs_f64()).min(2.0);
            self.pressure = (self.pressure * growth).min(1.0);
        }
        let Some(target) = self.target else {
            if waiters == 0 {
                // Back toward the configured size, no faster than the contention factor allows, and
                // at most twofold per batch (after a statement timeout halved it, too).
                self.size = (self.size * 2.0).min(self.base * self.pressure).max(self.size.min(self.base));
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

    /// `batches` from `now`, each taking `cost(rows)`, with `gap` before the next. Returns when
    /// the last one ended.
    fn run(s: &mut Sizer, mut now: Instant, batches: usize, waiters: i64, gap: Duration) -> Instant {
        for _ in 0..batches {
            let rows = s.size();
            now += cost(rows);
            s.observe_at(now, rows, cost(rows), waiters);
            now += gap;
        }
        now - gap
    }

    /// 0.1 ms per row: 4,000 rows take 400 ms.
    fn cost(rows: i64) -> Duration {
        Duration::from_micros(rows as u64 * 100)
    }

    #[test]
    fn contention_halves_at_once_and_recovers_by_time() {
        for target in [None, Some(Duration::from_millis(500))] {
            let mut s = Sizer::new(4_000, 10, 100_000, target);
            let mut now = run(&mut s, Instant::now(), 10, 0, Duration::ZERO);
            let full = s.size();
            assert!(full >= 3_900, "{target:?}: {full}");
            for expected in [full / 2, full / 4, full / 8] {
                now = run(&mut s, now, 1, 1, Duration::ZERO);
                assert!((s.size() - expected).abs() <= 1, "{target:?}: {} vs {expected}", s.size());
            }
            // Nobody waits any more: a second of batches back to back does not restore the size…
            let calm_from = now;
            while now < calm_from + Duration::from_secs(1) {
                now = run(&mut s, now, 1, 0, Duration::ZERO);
            }
            assert!(s.size() <= full / 2, "{target:?}: a second after contention: {}", s.size());
            // …but seconds of calm do (doubling per second): 40 batches with a 100 ms pause each.
            run(&mut s, now, 40, 0, Duration::from_millis(100));
            assert!(s.size() >= full * 95 / 100, "{target:?}: {} vs {full}", s.size());
        }
    }

    #[test]
    fn a_long_gap_grows_the_size_at_most_twofold() {
        let mut s = Sizer::new(4_000, 10, 100_000, None);
        let now = run(&mut s, Instant::now(), 4, 1, Duration::ZERO);
        assert_eq!(s.size(), 250);
        s.observe_at(now + Duration::from_secs(600), 250, cost(250), 0);
        assert_eq!(s.size(), 500);
    }
}
