//! Which database errors are worth retrying, and how long to wait before the next try.
//!
//! Retryability is decided by SQLSTATE, never by message text: lock and serialization conflicts
//! and lost connections are transient; a statement timeout means the batch was too big; anything
//! else (constraint violation, bad expression, missing column, permission) will fail again.

use std::time::Duration;

use rand::Rng;

/// How a failed batch should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Back off and try the same batch again.
    Retry,
    /// Halve the batch, then retry.
    Shrink,
    /// Fail the job; retrying cannot help.
    Permanent,
}

/// Classify an error from a batch transaction.
pub fn classify(err: &sqlx::Error) -> Disposition {
    match err {
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref().unwrap_or("")),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Disposition::Retry,
        _ => Disposition::Permanent,
    }
}

/// Classify by SQLSTATE.
pub fn classify_sqlstate(code: &str) -> Disposition {
    match code {
        // query_canceled: our statement_timeout fired (or someone cancelled us): do less per batch.
        "57014" => Disposition::Shrink,
        // lock_not_available (lock_timeout), deadlock, serialization failure.
        "55P03" | "40P01" | "40001" => Disposition::Retry,
        // admin/crash shutdown, cannot connect now (starting up / recovery), database dropped conn.
        "57P01" | "57P02" | "57P03" | "57P05" => Disposition::Retry,
        // read-only transaction: we reached a standby during a failover.
        "25006" => Disposition::Retry,
        // too many connections, out of memory/disk: often transient on a busy server.
        c if c.starts_with("08") || c.starts_with("53") => Disposition::Retry,
        _ => Disposition::Permanent,
    }
}

/// A short label for metrics (`error="lock_timeout"`), never containing data.
pub fn label(err: &sqlx::Error) -> &'static str {
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref().unwrap_or("") {
            "57014" => "statement_timeout",
            "55P03" => "lock_timeout",
            "40P01" => "deadlock",
            "40001" => "serialization",
            "57P01" | "57P02" | "57P03" => "server_restart",
            c if c.starts_with("08") => "connection",
            c if c.starts_with("23") => "constraint",
            "42501" => "permission",
            c if c.starts_with("42") => "sql",
            _ => "database",
        },
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => "connection",
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => "pool",
        _ => "other",
    }
}

/// Jittered exponential backoff ("full jitter"): spreads retries of many workers hitting the same
/// lock, instead of having them all come back at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, attempt: 0 }
    }

    /// The next delay; grows until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let cap = exp.min(self.max);
        let millis = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        assert_eq!(classify_sqlstate("57014"), Disposition::Shrink);
        assert_eq!(classify_sqlstate("55P03"), Disposition::Retry);
        assert_eq!(classify_sqlstate("40P01"), Disposition::Retry);
        assert_eq!(classify_sqlstate("40001"), Disposition::Retry);
        assert_eq!(classify_sqlstate("57P01"), Disposition::Retry);
        assert_eq!(classify_sqlstate("08006"), Disposition::Retry);
        assert_eq!(classify_sqlstate("23505"), Disposition::Permanent);
        assert_eq!(classify_sqlstate("42703"), Disposition::Permanent);
        assert_eq!(classify_sqlstate("42501"), Disposition::Permanent);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Disposition::Retry);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d0 = b.next_delay();
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100), "{d0:?}");
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_secs(1), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
