//! Adaptive batch size: steer each batch's duration toward `batch.target_time`.
//!
//! The size follows a smoothed (EWMA) per-row cost so one noisy batch does not swing it, grows at most
//! 2x per batch, and shrinks at once after a batch much slower than the target (a lock wait or a cold
//! cache should not be repeated at full size). A statement timeout halves it.

use std::time::Duration;

/// The current batch size of one worker.
#[derive(Debug, Clone)]
pub struct Sizer {
    size: f64,
    min: f64,
    max: f64,
    target: Option<Duration>,
    secs_per_row: Option<f64>,
}

const SMOOTHING: f64 = 0.3;

impl Sizer {
    pub fn new(start: i64, min: i64, max: i64, target: Option<Duration>) -> Self {
        let (min, max) = (min.max(1) as f64, max.max(1) as f64);
        Self { size: (start as f64).clamp(min, max), min, max, target, secs_per_row: None }
    }

    /// Rows for the next batch.
    pub fn size(&self) -> i64 {
        self.size.round() as i64
    }

    /// Learn from a finished batch.
    pub fn observe(&mut self, rows: i64, elapsed: Duration) {
        let Some(target) = self.target else { return };
        if rows <= 0 {
            return;
        }
        let per_row = elapsed.as_secs_f64() / rows as f64;
        let smoothed = match self.secs_per_row {
            Some(prev) => prev + SMOOTHING * (per_row - prev),
            None => per_row,
        };
        self.secs_per_row = Some(smoothed);
        let target = target.as_secs_f64();
        if elapsed.as_secs_f64() > 2.0 * target {
            // Much too slow: cut straight to what this batch says fits the target.
            self.size = (target / per_row).clamp(self.min, self.max).min(self.size);
            return;
        }
        if smoothed <= 0.0 {
            return;
        }
        let ideal = target / smoothed;
        let next = self.size + 0.5 * (ideal - self.size);
        self.size = next.min(self.size * 2.0).clamp(self.min, self.max);
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
        s.observe(1000, Duration::from_secs(5));
        assert_eq!(s.size(), 1000);
        s.halve();
        assert_eq!(s.size(), 500);
    }

    #[test]
    fn converges_toward_target() {
        // 1 ms per row, target 500 ms: the size should approach 500.
        let mut s = Sizer::new(100, 10, 100_000, Some(Duration::from_millis(500)));
        for _ in 0..30 {
            let rows = s.size();
            s.observe(rows, Duration::from_micros(rows as u64 * 1000));
        }
        assert!((450..=550).contains(&s.size()), "{}", s.size());
    }

    #[test]
    fn shrinks_at_once_after_a_slow_batch_and_respects_bounds() {
        let mut s = Sizer::new(10_000, 100, 100_000, Some(Duration::from_millis(500)));
        s.observe(10_000, Duration::from_secs(5));
        assert_eq!(s.size(), 1_000);
        s.observe(1_000, Duration::from_secs(60));
        assert_eq!(s.size(), 100);
        for _ in 0..50 {
            s.observe(s.size(), Duration::from_micros(1));
        }
        assert_eq!(s.size(), 100_000);
    }
}
