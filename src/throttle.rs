//! Throttle: measure replica lag and other health signals on the primary, and gate the workers.
//!
//! One [`Controller`] per database polls `pg_stat_replication` (and, when any job asks, replication
//! slots and the oldest open transaction) and publishes each [`Measurement`] on a `watch` channel.
//! Every worker owns a [`Gate`] built from its job's `throttle` section, and asks it before each
//! batch. The batch in flight always finishes; the next one waits.
//!
//! The gate fails closed: a measurement it cannot trust (query error, missing privilege, stale
//! standby replies, no measurement yet) stops the job, with the reason and the fix.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::ThrottleReason;
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
    /// Why `lag_seconds` is unknown (e.g. no reply for a while), for the throttle reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// A replication slot's retained WAL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slot {
    pub name: String,
    pub retained_bytes: Option<i64>,
    pub active: bool,
}

/// A database session, as `status` names it when it holds jobs up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    pub pid: i32,
    pub application_name: String,
    pub state: Option<String>,
    pub age_seconds: f64,
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let app = if self.application_name.is_empty() { "(none)" } else { &self.application_name };
        write!(f, "pid {}, application {app:?}", self.pid)?;
        if let Some(state) = &self.state {
            write!(f, ", {state}")?;
        }
        write!(f, ", transaction open {:.0}s", self.age_seconds)
    }
}

/// Everything the controller learned in one poll.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    #[serde(skip)]
    pub at: Instant,
    pub standbys: Vec<Standby>,
    pub slots: Vec<Slot>,
    pub oldest_transaction_seconds: Option<f64>,
    /// The session holding the oldest open transaction: who to ask (or cancel) when
    /// `max_transaction_age` holds jobs.
    pub oldest_transaction: Option<Session>,
    /// Why lag could not be measured, with the fix. Fail closed while this is set.
    pub error: Option<String>,
    /// How long after `at` the measurement may be trusted: the controller sets it from its poll
    /// interval ([`ControllerConfig::measurement_valid_for`]), so a stuck controller stops jobs
    /// within a few polls rather than after a fixed time that may exceed `max_lag`.
    #[serde(skip)]
    pub valid_for: Duration,
    /// The primary's WAL positions over time, from just before the slowest standby's replay
    /// position: what a worker needs to turn its own fresh reading at batch start into a time lag
    /// ([`Gate::veto`]).
    #[serde(skip)]
    pub history: Arc<LsnHistory>,
}

impl Measurement {
    /// The state before the first poll: nothing is known, so nothing may run.
    pub fn unknown() -> Self {
        Self {
            at: Instant::now(),
            standbys: Vec::new(),
            slots: Vec::new(),
            oldest_transaction_seconds: None,
            oldest_transaction: None,
            error: Some("no replication lag measurement yet".into()),
            valid_for: MAX_MEASUREMENT_AGE,
            history: Arc::default(),
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
    /// Run at `scale` (0 < scale <= 1) of full speed: the worker spends `scale` of its time in
    /// batches and sleeps the rest, so the WAL rate falls with it as lag approaches the limit.
    Go { scale: f64 },
    /// Do not write; the reason names the signal and, where one exists, the fix. `signal` is a
    /// stable key for what holds the job (`lag:<standby>`, `slot:<name>` …): the reason's numbers
    /// change every poll, so callers log and record a *new* throttle only when the signal changes.
    /// `kind` is the fixed-set reason for `pgbackfill_throttled{reason}`.
    Wait { reason: String, signal: String, kind: ThrottleReason },
}

impl Decision {
    fn wait(kind: ThrottleReason, signal: impl Into<String>, reason: impl Into<String>) -> Self {
        Decision::Wait { reason: reason.into(), signal: signal.into(), kind }
    }
}

/// The shortest time a measurement is trusted for, however fast the controller polls (and the
/// validity of [`Measurement::unknown`]). Each measurement carries its own limit in
/// [`Measurement::valid_for`]; past it the controller is stuck or the database is gone.
pub const MAX_MEASUREMENT_AGE: Duration = Duration::from_secs(3);

/// One job's view of the throttle, with hysteresis: once throttled, it stays so until every signal
/// is below its resume level, so the job does not flap around the limit.
///
/// Below the limit the gate also sets the job's rate, AIMD-style like TCP congestion control: while
/// the worst signal is above [`APPROACH`] of its limit, each new measurement multiplies the rate by
/// [`DECREASE`]; below it, the rate grows by [`INCREASE`] per measurement back to full speed. After a
/// full stop the job restarts at [`RESTART_RATE`]. The job thus settles just under its limit instead
/// of sawtoothing between full speed and stop.
#[derive(Debug, Clone)]
pub struct Gate {
    spec: ThrottleSpec,
    throttled: bool,
    rate: f64,
    /// The measurement the rate was last adjusted for: one adjustment per poll, however many
    /// batches run in between.
    adjusted_for: Option<Instant>,
    /// Whether any measurement succeeded yet. Waiting for the very first one is no sign of lag, so
    /// it does not restart the job at [`RESTART_RATE`]: that cost a short job most of its first
    /// seconds (measured: a sleep of ~2/3 of every batch's time for the first 5 s).
    measured: bool,
}

/// Fraction of a limit above which the rate is cut.
pub const APPROACH: f64 = 0.5;
/// Multiplicative decrease per measurement while approaching a limit.
pub const DECREASE: f64 = 0.7;
/// Additive increase per measurement while well below every limit.
pub const INCREASE: f64 = 0.1;
/// The slowest a job goes short of stopping.
pub const MIN_RATE: f64 = 0.1;
/// The rate a job resumes at after being held.
pub const RESTART_RATE: f64 = 0.5;

impl Gate {
    pub fn new(spec: ThrottleSpec) -> Self {
        Self { spec, throttled: false, rate: 1.0, adjusted_for: None, measured: false }
    }

    pub fn decide(&mut self, m: &Measurement) -> Decision {
        let decision = self.evaluate(m);
        self.measured |= m.error.is_none();
        match &decision {
            Decision::Wait { .. } => {
                self.throttled = true;
                if self.measured {
                    self.rate = RESTART_RATE;
                }
                self.adjusted_for = Some(m.at);
                decision
            }
            Decision::Go { scale: worst_fraction } => {
                self.throttled = false;
                if self.adjusted_for != Some(m.at) {
                    self.adjusted_for = Some(m.at);
                    self.rate = if *worst_fraction > APPROACH {
                        (self.rate * DECREASE).max(MIN_RATE)
                    } else {
                        (self.rate + INCREASE).min(1.0)
                    };
                }
                Decision::Go { scale: self.rate }
            }
        }
    }

    /// The check at the start of a batch, on a reading taken inside the batch's transaction: the
    /// controller's measurement (`m`, which let the job go) with each standby's byte and time lag
    /// replaced by the fresh reading's. Some(wait) when any limit is crossed: the batch must not
    /// run. Only vetoes; the rate and the hysteresis stay the controller's business.
    pub fn veto(&self, m: &Measurement, fresh: &FreshLag) -> Option<Decision> {
        let mut history = (*m.history).clone();
        history.record(fresh.at, fresh.current);
        let mut now = m.clone();
        now.at = fresh.at;
        for s in &mut now.standbys {
            let Some((_, replay, replay_lag)) = fresh.standbys.iter().find(|f| f.0 == s.name) else { continue };
            let lag_bytes = fresh.current.saturating_sub(*replay) as i64;
            s.lag_bytes = Some(lag_bytes);
            match standby_lag(lag_bytes, *replay_lag, history.lag(*replay, fresh.at)) {
                Ok(lag) => s.lag_seconds = Some(lag),
                Err(why) => {
                    s.lag_seconds = None;
                    s.unknown = Some(why);
                }
            }
        }
        // A standby that connected since the controller's poll counts too.
        for (name, replay, replay_lag) in &fresh.standbys {
            if now.standbys.iter().any(|s| &s.name == name) {
                continue;
            }
            let lag_bytes = fresh.current.saturating_sub(*replay) as i64;
            let lag = standby_lag(lag_bytes, *replay_lag, history.lag(*replay, fresh.at));
            now.standbys.push(Standby {
                name: name.clone(),
                lag_seconds: lag.as_ref().ok().copied(),
                lag_bytes: Some(lag_bytes),
                streaming: true,
                unknown: lag.err(),
            });
        }
        match self.evaluate(&now) {
            wait @ Decision::Wait { .. } => Some(wait),
            Decision::Go { .. } => None,
        }
    }

    /// A batch's own reading crossed a limit ([`Gate::veto`]): throttled, as if the controller
    /// had said so, so the job resumes only under the resume levels.
    pub fn hold(&mut self) {
        self.throttled = true;
        self.rate = RESTART_RATE;
    }

    fn evaluate(&self, m: &Measurement) -> Decision {
        if let Some(err) = &m.error {
            return Decision::wait(ThrottleReason::Unknown, "unknown", format!("lag unknown: {err}"));
        }
        let age = m.at.elapsed();
        if age > m.valid_for {
            return Decision::wait(
                ThrottleReason::Unknown,
                "stale",
                format!(
                    "lag unknown: no lag measurement for {:.1}s (over its {}s validity: the database is \
                     unreachable or slow to answer)",
                    age.as_secs_f64(),
                    fmt_secs(m.valid_for.as_secs_f64())
                ),
            );
        }
        let min = self.spec.min_replicas.max(0) as usize;
        if m.streaming_count() < min {
            return Decision::wait(
                ThrottleReason::Replicas,
                "min_replicas",
                format!("{} standby(s) streaming, throttle.min_replicas is {min}", m.streaming_count()),
            );
        }
        let max_lag = self.spec.max_lag.as_secs_f64();
        let resume_lag = self.spec.effective_resume_lag().as_secs_f64();
        // While throttled, the bar to pass is the resume level (hysteresis). The other signals have
        // no resume setting: they resume at half their limit.
        let resume_factor = if self.throttled { resume_lag / max_lag } else { 1.0 };
        let other_factor = if self.throttled { 0.5 } else { 1.0 };
        // "over the limit" the first time; while throttled, what it must fall under to resume.
        let over = |value: String, limit: String, setting: &str| {
            if self.throttled {
                let of = if setting == "max_lag" {
                    "throttle.resume_lag".into()
                } else {
                    format!("half of throttle.{setting}")
                };
                format!("{value}, waiting for it to fall under {limit} ({of})")
            } else {
                format!("{value}, over {limit} (throttle.{setting})")
            }
        };
        let mut worst_fraction: f64 = 0.0;
        for s in &m.standbys {
            let Some(lag) = s.lag_seconds else {
                let why = s.unknown.as_deref().unwrap_or("no lag reported");
                return Decision::wait(
                    ThrottleReason::Unknown,
                    format!("lag:{}", s.name),
                    format!("lag unknown for standby {}: {why}", s.name),
                );
            };
            let lag_limit = max_lag * resume_factor;
            if lag > lag_limit {
                return Decision::wait(
                    ThrottleReason::LagSeconds,
                    format!("lag:{}", s.name),
                    over(
                        format!("standby {} replay lag {lag:.1}s", s.name),
                        format!("{}s", fmt_secs(lag_limit)),
                        "max_lag",
                    ),
                );
            }
            worst_fraction = worst_fraction.max(lag / max_lag);
            if let Some(max_bytes) = self.spec.max_lag_bytes {
                let limit = max_bytes.as_u64() as f64 * resume_factor;
                match s.lag_bytes {
                    None => {
                        return Decision::wait(
                            ThrottleReason::Unknown,
                            format!("bytes:{}", s.name),
                            format!("byte lag unknown for standby {}", s.name),
                        );
                    }
                    Some(b) if b as f64 > limit => {
                        return Decision::wait(
                            ThrottleReason::LagBytes,
                            format!("bytes:{}", s.name),
                            over(
                                format!("standby {} is {b} bytes behind", s.name),
                                format!("{} bytes", limit as u64),
                                "max_lag_bytes",
                            ),
                        );
                    }
                    Some(b) => worst_fraction = worst_fraction.max(b as f64 / max_bytes.as_u64() as f64),
                }
            }
        }
        if let Some(max_slot) = self.spec.max_slot_retained_bytes {
            let limit = max_slot.as_u64() as f64 * other_factor;
            for slot in &m.slots {
                match slot.retained_bytes {
                    Some(b) if b as f64 > limit => {
                        return Decision::wait(
                            ThrottleReason::Slot,
                            format!("slot:{}", slot.name),
                            over(
                                format!("replication slot {} retains {b} bytes of WAL", slot.name),
                                format!("{} bytes", limit as u64),
                                "max_slot_retained_bytes",
                            ),
                        );
                    }
                    Some(b) => worst_fraction = worst_fraction.max(b as f64 / max_slot.as_u64() as f64),
                    None => {}
                }
            }
        }
        if let Some(max_age) = self.spec.max_transaction_age {
            let limit = max_age.as_secs_f64() * other_factor;
            match m.oldest_transaction_seconds {
                Some(age) if age > limit => {
                    return Decision::wait(
                        ThrottleReason::TransactionAge,
                        "transaction",
                        over(
                            match &m.oldest_transaction {
                                Some(session) => format!("oldest open transaction is {age:.0}s old ({session})"),
                                None => format!("oldest open transaction is {age:.0}s old"),
                            },
                            format!("{}s", fmt_secs(limit)),
                            "max_transaction_age",
                        ),
                    );
                }
                _ => {}
            }
        }
        // `decide` turns this into the job's rate.
        Decision::Go { scale: worst_fraction }
    }
}

fn fmt_secs(s: f64) -> String {
    if s.fract() == 0.0 { format!("{s:.0}") } else { format!("{s:.1}") }
}

/// Settings of the lag poller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub poll_interval: Duration,
    /// A standby whose last reply is older than this has unknown lag (its `replay_lag` freezes when
    /// it stops replying). Standbys reply at least every `wal_receiver_status_interval` (10 s by default).
    pub max_reply_age: Duration,
    /// A standby that disconnects drops out of `pg_stat_replication`; until it comes back, or
    /// for this long, its lag counts as unknown (fail closed) instead of the standby being ignored.
    /// Zero disables (a standby that leaves is forgotten at once).
    pub forget_standby_after: Duration,
    /// Stamped after every poll, for `/healthz` (detached by default).
    pub heartbeat: crate::health::Heartbeat,
    /// Where standbys seen are remembered across restarts (see [`Tracker`]); `None`: only in memory.
    pub memory: Option<crate::progress::Progress>,
    /// Record the standbys seen in `memory` (the daemon); `false` only reads it (`status`).
    pub remember: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            max_reply_age: Duration::from_secs(30),
            forget_standby_after: Duration::from_secs(300),
            heartbeat: crate::health::Heartbeat::default(),
            memory: None,
            remember: false,
        }
    }
}

impl ControllerConfig {
    /// How long a measurement is trusted: three polls, so one slow or lost poll does not stop
    /// every job, but never less than [`MAX_MEASUREMENT_AGE`].
    pub fn measurement_valid_for(&self) -> Duration {
        (self.poll_interval * 3).max(MAX_MEASUREMENT_AGE)
    }

    /// How long one poll may take, client side (the whole poll, connection included) and server
    /// side (`statement_timeout` of each of its queries): five polls, between 5 s and 30 s. A
    /// hung poll then publishes an error instead of leaving the last measurement to go stale.
    pub fn poll_timeout(&self) -> Duration {
        (self.poll_interval * 5).clamp(Duration::from_secs(5), Duration::from_secs(30))
    }
}

/// The primary's WAL position over time, to turn a standby's replay position into a time lag that
/// needs only the primary's clock: "how long ago was the primary where the standby is now?"
#[derive(Debug, Default, Clone)]
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

    /// The samples from the last one at or before `lsn` on: enough to interpolate the time lag of
    /// any standby that has replayed at least up to `lsn`. Just the newest sample when `lsn` is None.
    pub fn since(&self, lsn: Option<u64>) -> LsnHistory {
        let from = match lsn {
            Some(lsn) => self.samples.iter().rposition(|&(_, l)| l <= lsn).unwrap_or(0),
            None => self.samples.len().saturating_sub(1),
        };
        LsnHistory { samples: self.samples.iter().skip(from).copied().collect() }
    }

    /// Time lag of a standby that has replayed up to `replay`, as of `now`. `None` when the history
    /// cannot tell (no sample yet).
    pub fn lag(&self, replay: u64, now: Instant) -> Option<TimeLag> {
        let &(_, current) = self.samples.back()?;
        if replay >= current {
            return Some(TimeLag::Exact(Duration::ZERO));
        }
        let i = self.samples.iter().position(|&(_, lsn)| lsn > replay)?;
        if i == 0 {
            // Already past `replay` at the oldest sample: at least that long ago, and right after
            // start-up that bound is about zero whatever the real lag is.
            return Some(TimeLag::AtLeast(now.saturating_duration_since(self.samples[0].0)));
        }
        let (t0, l0) = self.samples[i - 1];
        let (t1, l1) = self.samples[i];
        let frac = (replay - l0) as f64 / (l1 - l0).max(1) as f64;
        let passed = t0 + t1.duration_since(t0).mul_f64(frac);
        Some(TimeLag::Exact(now.saturating_duration_since(passed)))
    }
}

/// A time lag from [`LsnHistory`]: interpolated between two samples, or only a lower bound when
/// the standby is behind the oldest sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeLag {
    Exact(Duration),
    AtLeast(Duration),
}

impl TimeLag {
    /// The lag, or its lower bound.
    pub fn at_least(self) -> Duration {
        match self {
            TimeLag::Exact(d) | TimeLag::AtLeast(d) => d,
        }
    }
}

/// One standby's time lag (seconds) from what the primary shows, or why it is unknown.
///
/// `replay_lag` (the standby's own report) and the primary-side `estimate` may each be behind the
/// truth, so the larger counts. A NULL `replay_lag` means "caught up" only while the byte lag is
/// small: past [`SMALL_GAP_BYTES`] the estimate must stand alone, and a mere lower bound (the
/// standby is behind everything this controller has seen, as right after it starts) is no
/// measurement at all — fail closed until the history covers the standby's position.
fn standby_lag(lag_bytes: i64, replay_lag: Option<f64>, estimate: Option<TimeLag>) -> Result<f64, String> {
    if lag_bytes == 0 {
        // Replayed everything we had written when this poll began. `replay_lag` still shows the
        // lag of the last WAL it replayed (for up to one status interval after a catch-up, or
        // until the next write): history, not lag.
        return Ok(0.0);
    }
    let estimate = if lag_bytes > SMALL_GAP_BYTES { estimate } else { Some(TimeLag::Exact(Duration::ZERO)) };
    match (replay_lag, estimate) {
        // `replay_lag` covers small gaps held back by recovery_min_apply_delay; the estimate keeps
        // growing while the standby is stuck.
        (Some(reported), estimate) => Ok(reported.max(estimate.map_or(0.0, |e| e.at_least().as_secs_f64()))),
        (None, Some(TimeLag::Exact(d))) => Ok(d.as_secs_f64()),
        (None, Some(TimeLag::AtLeast(d))) => Err(format!(
            "replay_lag is NULL and it is {lag_bytes} bytes behind the oldest WAL position pgbackfill has \
             sampled, so its lag is only known to be at least {:.1}s (it is known once the standby \
             replays past that position, or once pgbackfill has watched the primary for longer)",
            d.as_secs_f64()
        )),
        (None, None) => Err(format!("replay_lag is NULL and it is {lag_bytes} bytes behind, with no WAL history yet")),
    }
}

/// Byte lag below which the primary-side time estimate is not used: a few KiB behind is a standby
/// between replies, not lag, and would otherwise count as ever-growing time in an idle system.
const SMALL_GAP_BYTES: i64 = 64 * 1024;

/// What the controller remembers between polls.
#[derive(Debug, Default)]
pub struct Tracker {
    history: LsnHistory,
    /// Per walsender pid: its last `reply_time` and when (on our clock) we saw it change. A frozen
    /// walreceiver keeps its row, its state `streaming` and its last `replay_lag`; only a
    /// `reply_time` that stops changing shows it. Comparing `reply_time` with the primary's clock
    /// instead would mix two machines' clocks.
    replies: HashMap<i32, (Option<f64>, Instant)>,
    /// Standbys by identity (`slot:<slot>`, else `name:<application_name (address)>`): their name,
    /// and when they were last in `pg_stat_replication`. Two standbys with one application_name
    /// but different slots or addresses stay apart.
    seen: HashMap<String, (String, Instant)>,
    /// The standbys remembered in the progress schema have been loaded (first successful poll).
    loaded: bool,
    /// When the standbys present were last written to the progress schema, and which they were.
    remembered: Option<(Instant, Vec<String>)>,
}

/// How often a daemon refreshes `last_seen` of the standbys present (and at once when the set
/// changes): often enough that a restart's "seen N s ago" is close, rare enough to write little.
const REMEMBER_EVERY: Duration = Duration::from_secs(10);

impl Tracker {
    /// Seed the tracker with standbys seen by earlier daemons: `(id, name, seconds ago)`. One
    /// that is not streaming now is missing from the first poll on (fail closed), until it
    /// returns or `forget_after` has passed since it was last seen.
    pub fn recall(&mut self, known: Vec<(String, String, f64)>, now: Instant) {
        for (id, name, ago) in known {
            let last = now.checked_sub(Duration::from_secs_f64(ago.max(0.0))).unwrap_or(now);
            let entry = self.seen.entry(id).or_insert((name, last));
            entry.1 = entry.1.max(last);
        }
    }

    /// Remember the standbys present now (`(id, name)`); return the ones that disappeared less
    /// than `forget_after` ago, with unknown lag. A standby that disconnects (network, restart,
    /// crash) is the most common standby trouble, and ignoring it would fail *open*.
    fn missing_standbys(&mut self, present: &[(String, String)], now: Instant, forget_after: Duration) -> Vec<Standby> {
        for (id, name) in present {
            self.seen.insert(id.clone(), (name.clone(), now));
        }
        self.seen.retain(|_, (_, last)| now.duration_since(*last) <= forget_after);
        let mut missing: Vec<Standby> = self
            .seen
            .iter()
            .filter(|(id, _)| !present.iter().any(|(p, _)| p == *id))
            .map(|(_, (name, last))| Standby {
                name: name.clone(),
                lag_seconds: None,
                lag_bytes: None,
                streaming: false,
                unknown: Some(format!(
                    "disconnected {}s ago; held until it reconnects, or for --forget-standby-after {}s",
                    now.duration_since(*last).as_secs(),
                    forget_after.as_secs()
                )),
            })
            .collect();
        missing.sort_by(|a, b| a.name.cmp(&b.name));
        missing
    }

    /// How long the standby behind walsender `pid` has sent nothing new, on the primary's clock.
    fn silent_for(&mut self, pid: i32, reply_time: Option<f64>, now: Instant) -> Duration {
        let entry = self.replies.entry(pid).or_insert((reply_time, now));
        if entry.0 != reply_time {
            *entry = (reply_time, now);
        }
        now.duration_since(entry.1)
    }
}

/// Poll the primary until cancelled, publishing every measurement.
pub fn spawn_controller(
    pool: sqlx::PgPool,
    cfg: ControllerConfig,
    cancel: tokio_util::sync::CancellationToken,
) -> Measurements {
    let (tx, rx) = watch::channel(Arc::new(Measurement::unknown()));
    tokio::spawn(async move {
        let mut tracker = Tracker::default();
        let mut published = PublishedMetrics::default();
        let mut last_error: Option<String> = None;
        loop {
            let m = tokio::select! {
                _ = cancel.cancelled() => break,
                m = poll_with_timeout(measure(&pool, &cfg, &mut tracker), cfg.poll_timeout(), &cfg) => m,
            };
            published.publish(&m);
            if m.error != last_error {
                match &m.error {
                    Some(e) => tracing::warn!(error = %e, "replica lag unknown: throttling every job (fail closed)"),
                    None => tracing::info!(standbys = m.standbys.len(), "replica lag measurement ok"),
                }
                last_error = m.error.clone();
            }
            // A poll that failed still completed: the loop is alive, the database is what is not.
            cfg.heartbeat.beat();
            if tx.send(Arc::new(m)).is_err() {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(cfg.poll_interval) => {}
            }
        }
        cfg.heartbeat.finished();
    });
    rx
}

/// One poll bounded by [`ControllerConfig::poll_timeout`]: a poll that hangs (a connection that
/// never answers, a lock on a catalog) publishes an error, so workers fail closed and say why,
/// and the controller tries again at its next poll instead of freezing.
async fn poll_with_timeout(
    poll: impl std::future::Future<Output = Measurement>,
    timeout: Duration,
    cfg: &ControllerConfig,
) -> Measurement {
    match tokio::time::timeout(timeout, poll).await {
        Ok(m) => m,
        Err(_) => Measurement {
            error: Some(format!("lag query timed out after {}", humantime::format_duration(timeout))),
            valid_for: cfg.measurement_valid_for(),
            ..Measurement::unknown()
        },
    }
}

/// The replication slot a walsender streams from, in a reading of `pg_stat_replication`.
const STANDBY_SLOT: &str =
    "(SELECT s.slot_name::text FROM pg_replication_slots s WHERE s.active_pid = pg_stat_replication.pid LIMIT 1)";

/// How a standby is named, in every reading of `pg_stat_replication`: application_name, client
/// address and slot, so two standbys that share an application_name (the default `walreceiver`)
/// are told apart.
const STANDBY_NAME: &str = "coalesce(nullif(application_name, ''), 'pid ' || pid) \
     || coalesce(' (' || host(client_addr) || ')', '') \
     || coalesce(' slot ' || (SELECT s.slot_name::text FROM pg_replication_slots s WHERE s.active_pid = pg_stat_replication.pid LIMIT 1), '')";

/// A reading of replica lag taken by a worker at the start of its batch, on the batch's own
/// connection, so that no batch starts on a measurement older than the previous commit.
#[derive(Debug, Clone)]
pub struct FreshLag {
    pub at: Instant,
    /// The primary's WAL position (bytes from 0/0).
    pub current: u64,
    /// Standbys that replay: name, replay position, `replay_lag` (seconds).
    pub standbys: Vec<(String, u64, Option<f64>)>,
}

/// One round trip: the primary's position and every replaying standby's, as the controller reads
/// them ([`try_measure`]). One scan of `pg_stat_replication`, which reads every backend's status:
/// a subquery per column made this read about 1 ms of every batch. Without `pg_monitor` the
/// positions are NULL and nothing is vetoed (the controller's measurement already holds every job
/// then).
pub async fn read_fresh_lag(conn: &mut sqlx::PgConnection) -> Result<FreshLag, sqlx::Error> {
    type Row = (f64, Option<Vec<String>>, Option<Vec<f64>>, Option<Vec<Option<f64>>>);
    let (current, names, replays, lags): Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
                array_agg({STANDBY_NAME} ORDER BY pid), \
                array_agg(pg_wal_lsn_diff(replay_lsn, '0/0')::float8 ORDER BY pid), \
                array_agg(extract(epoch FROM replay_lag)::float8 ORDER BY pid) \
         FROM pg_stat_replication WHERE replay_lsn IS NOT NULL"
    )))
    .fetch_one(conn)
    .await?;
    let at = Instant::now();
    let (names, replays, lags) = (names.unwrap_or_default(), replays.unwrap_or_default(), lags.unwrap_or_default());
    let standbys = names
        .into_iter()
        .zip(replays)
        .zip(lags.into_iter().chain(std::iter::repeat(None)))
        .map(|((name, replay), lag)| (name, replay as u64, lag))
        .collect();
    Ok(FreshLag { at, current: current as u64, standbys })
}

/// pid, name, state, replay position, `replay_lag`, `reply_time` (epoch seconds), slot.
type ReplicationRow = (i32, String, Option<String>, Option<f64>, Option<f64>, Option<f64>, Option<String>);

/// Load the standbys earlier daemons saw (once), and record the ones present now. Best effort:
/// without the progress schema (`status` before any daemon ran) there is nothing to recall.
async fn remember_standbys(
    memory: &crate::progress::Progress,
    write: bool,
    tracker: &mut Tracker,
    present: &[(String, String)],
    now: Instant,
) {
    if !tracker.loaded {
        match memory.known_standbys().await {
            Ok(known) => {
                tracker.recall(known, now);
                tracker.loaded = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the standbys seen earlier"),
        }
    }
    if !write || present.is_empty() {
        return;
    }
    let ids: Vec<String> = present.iter().map(|(id, _)| id.clone()).collect();
    let due = match &tracker.remembered {
        Some((at, before)) => *before != ids || now.duration_since(*at) >= REMEMBER_EVERY,
        None => true,
    };
    if due {
        match memory.remember_standbys(present).await {
            Ok(()) => tracker.remembered = Some((now, ids)),
            Err(e) => tracing::debug!(error = %e, "cannot record the standbys seen"),
        }
    }
}

/// One poll. Never fails: a failure is a measurement with `error` set.
pub async fn measure(pool: &sqlx::PgPool, cfg: &ControllerConfig, tracker: &mut Tracker) -> Measurement {
    let mut m = match try_measure(pool, cfg, tracker).await {
        Ok(m) => m,
        Err(e) => Measurement {
            error: Some(format!("cannot read pg_stat_replication: {}", crate::error::sql(&e))),
            ..Measurement::unknown()
        },
    };
    m.valid_for = cfg.measurement_valid_for();
    m
}

async fn try_measure(
    pool: &sqlx::PgPool,
    cfg: &ControllerConfig,
    tracker: &mut Tracker,
) -> Result<Measurement, sqlx::Error> {
    // One transaction per poll, so the server-side limit below is scoped to it and leaves the
    // pooled connection as it was. The client-side timeout alone would leave a stuck query
    // running on the server after the poll gave up on it.
    let mut conn = pool.begin().await?;
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", cfg.poll_timeout().as_millis()))
        .execute(&mut *conn)
        .await?;
    let (in_recovery, role, can_read): (bool, String, bool) =
        sqlx::query_as("SELECT pg_is_in_recovery(), current_user::text, pg_has_role('pg_read_all_stats', 'USAGE')")
            .fetch_one(&mut *conn)
            .await?;
    if in_recovery {
        return Ok(Measurement {
            error: Some("connected to a standby: point --database-url at the primary".into()),
            ..Measurement::unknown()
        });
    }
    if !can_read {
        // Checked up front, not inferred from NULL columns: with no standby connected there is no
        // row to show it, and pg_stat_activity would hide other roles' transactions just the same.
        let role = crate::ident::quote_ident(&role);
        return Ok(Measurement {
            error: Some(format!(
                "role {role} cannot read replication status (pg_stat_replication lags and LSNs are NULL \
                 without it): GRANT pg_monitor TO {role}"
            )),
            ..Measurement::unknown()
        });
    }
    let current: f64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8").fetch_one(&mut *conn).await?;
    let now = Instant::now();
    tracker.history.record(now, current as u64);
    let rows: Vec<ReplicationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT pid, {STANDBY_NAME}, state, pg_wal_lsn_diff(replay_lsn, '0/0')::float8, \
                extract(epoch FROM replay_lag)::float8, extract(epoch FROM reply_time)::float8, {STANDBY_SLOT} \
         FROM pg_stat_replication ORDER BY 2, 1"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let slowest = rows.iter().filter_map(|r| r.3).fold(None, |min: Option<f64>, r| Some(min.map_or(r, |m| m.min(r))));
    let pids: Vec<i32> = rows.iter().map(|r| r.0).collect();
    tracker.replies.retain(|pid, _| pids.contains(pid));
    let mut standbys = Vec::new();
    let mut present: Vec<(String, String)> = Vec::new();
    for (pid, name, state, replay, replay_lag, reply_time, slot) in rows {
        let Some(replay) = replay else {
            // pg_receivewal, backup tools: they never replay, so they cannot lag in the sense we
            // mean. (A standby that has not reported yet is also here; it is not `streaming`.)
            continue;
        };
        let streaming = state.as_deref() == Some("streaming");
        let lag_bytes = (current - replay).max(0.0) as i64;
        let silent = tracker.silent_for(pid, reply_time, now);
        let (lag_seconds, unknown) = if silent > cfg.max_reply_age {
            // Its replay_lag is frozen at whatever it was: unknown, fail closed.
            let why = format!(
                "no reply for {}s (over --max-reply-age {}s): its walreceiver is stuck or the network is",
                silent.as_secs(),
                cfg.max_reply_age.as_secs()
            );
            (None, Some(why))
        } else {
            // The primary-side estimate needs only our clock and keeps growing while the standby is
            // stuck.
            match standby_lag(lag_bytes, replay_lag, tracker.history.lag(replay as u64, now)) {
                Ok(lag) => (Some(lag), None),
                Err(why) => (None, Some(why)),
            }
        };
        let id = match slot {
            Some(slot) => format!("slot:{slot}"),
            None => format!("name:{name}"),
        };
        present.push((id, name.clone()));
        standbys.push(Standby { name, lag_seconds, lag_bytes: Some(lag_bytes), streaming, unknown });
    }
    let slots: Vec<(String, bool, Option<i64>)> = sqlx::query_as(
        "SELECT slot_name::text, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 FROM pg_replication_slots ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    if let Some(memory) = &cfg.memory {
        remember_standbys(memory, cfg.remember, tracker, &present, now).await;
    }
    // A standby that streamed from a slot cannot come back as itself once the slot is gone
    // (dropped when it was retired, or absent on a promoted standby, which does not inherit the
    // old primary's slots): stop waiting for it.
    tracker.seen.retain(|id, _| id.strip_prefix("slot:").is_none_or(|slot| slots.iter().any(|s| s.0 == slot)));
    standbys.extend(tracker.missing_standbys(&present, now, cfg.forget_standby_after));
    let oldest_session: Option<(i32, String, Option<String>, f64)> = sqlx::query_as(
        "SELECT pid, coalesce(application_name, ''), state, extract(epoch FROM clock_timestamp() - xact_start)::float8 \
         FROM pg_stat_activity \
         WHERE xact_start IS NOT NULL AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
         ORDER BY xact_start LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let oldest = oldest_session.as_ref().map(|s| s.3);
    let oldest_transaction = oldest_session.map(|(pid, application_name, state, age_seconds)| Session {
        pid,
        application_name,
        state,
        age_seconds,
    });
    conn.commit().await?;
    Ok(Measurement {
        at: now,
        standbys,
        slots: slots.into_iter().map(|(name, active, retained_bytes)| Slot { name, retained_bytes, active }).collect(),
        oldest_transaction_seconds: oldest,
        oldest_transaction,
        error: None,
        valid_for: cfg.measurement_valid_for(),
        history: Arc::new(tracker.history.since(slowest.map(|r| r as u64))),
    })
}

/// The per-standby and per-slot gauges published so far. The `metrics` facade cannot delete a
/// series, so a standby that went away (or whose lag became unknown) is set to NaN rather than
/// left showing its last, reassuring value.
#[derive(Default)]
struct PublishedMetrics {
    standbys: std::collections::BTreeSet<String>,
    slots: std::collections::BTreeSet<String>,
}

impl PublishedMetrics {
    fn publish(&mut self, m: &Measurement) {
        use crate::metrics::{DaemonMetrics, ReplicaMetrics, slot_retained_bytes};
        let daemon = DaemonMetrics::get();
        daemon.lag_measurement_ok.set(if m.error.is_none() { 1.0 } else { 0.0 });
        daemon.replicas_streaming.set(m.streaming_count() as f64);
        let mut seen = std::collections::BTreeSet::new();
        for s in &m.standbys {
            let r = ReplicaMetrics::new(&s.name);
            r.lag_seconds.set(s.lag_seconds.unwrap_or(f64::NAN));
            r.lag_bytes.set(s.lag_bytes.map_or(f64::NAN, |b| b as f64));
            seen.insert(s.name.clone());
        }
        for gone in self.standbys.difference(&seen) {
            let r = ReplicaMetrics::new(gone);
            r.lag_seconds.set(f64::NAN);
            r.lag_bytes.set(f64::NAN);
        }
        // A failed poll knows nothing about standbys: keep the names so they come back.
        if m.error.is_none() {
            self.standbys = seen;
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &m.slots {
            slot_retained_bytes(&s.name).set(s.retained_bytes.map_or(f64::NAN, |b| b as f64));
            seen.insert(s.name.clone());
        }
        for gone in self.slots.difference(&seen) {
            slot_retained_bytes(gone).set(f64::NAN);
        }
        if m.error.is_none() {
            self.slots = seen;
        }
        daemon.oldest_transaction_seconds.set(m.oldest_transaction_seconds.unwrap_or(0.0));
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
        assert_eq!(h.lag(3000, now), Some(TimeLag::Exact(Duration::ZERO)));
        // The primary was at 1500 half-way between the first two samples: 1.5 s ago.
        let Some(TimeLag::Exact(lag)) = h.lag(1500, now) else { panic!() };
        assert!((lag.as_secs_f64() - 1.5).abs() < 0.01, "{lag:?}");
        // Behind the oldest sample: at least the whole history, and only that is known.
        assert_eq!(h.lag(10, now), Some(TimeLag::AtLeast(Duration::from_secs(2))));
        // A paused standby's lag grows in real time without new samples.
        let later = now + Duration::from_secs(5);
        assert!(matches!(h.lag(1500, later), Some(TimeLag::Exact(d)) if d > Duration::from_secs(6)));
        assert_eq!(LsnHistory::default().lag(10, now), None);
    }

    #[test]
    fn null_replay_lag_with_a_large_gap_right_after_start_is_unknown() {
        // The controller has just started: one sample, and the standby is far behind it.
        let t0 = Instant::now();
        let mut h = LsnHistory::default();
        h.record(t0, 100_000_000);
        let estimate = h.lag(1_000, t0);
        assert_eq!(estimate, Some(TimeLag::AtLeast(Duration::ZERO)));
        let why = standby_lag(99_999_000, None, estimate).unwrap_err();
        assert!(why.contains("replay_lag is NULL") && why.contains("at least 0.0s"), "{why}");
        assert!(standby_lag(99_999_000, None, None).is_err());
        // Once the history covers the standby's position, the estimate is exact and stands alone.
        assert_eq!(standby_lag(99_999_000, None, Some(TimeLag::Exact(Duration::from_secs(4)))), Ok(4.0));
        // A small gap with NULL replay_lag is a standby between replies: caught up.
        assert_eq!(standby_lag(500, None, estimate), Ok(0.0));
        assert_eq!(standby_lag(0, None, None), Ok(0.0));
        // With replay_lag reported, the larger of the two counts, a lower bound included.
        assert_eq!(standby_lag(99_999_000, Some(2.0), estimate), Ok(2.0));
        assert_eq!(standby_lag(99_999_000, Some(2.0), Some(TimeLag::AtLeast(Duration::from_secs(7)))), Ok(7.0));
        assert_eq!(standby_lag(99_999_000, Some(2.0), Some(TimeLag::Exact(Duration::from_secs(1)))), Ok(2.0));
        // Small gap: the estimate is ignored, replay_lag (apply delay) counts.
        assert_eq!(standby_lag(500, Some(5.0), Some(TimeLag::Exact(Duration::from_secs(60)))), Ok(5.0));
        // Fully replayed: replay_lag is history.
        assert_eq!(standby_lag(0, Some(5.0), None), Ok(0.0));
    }

    #[test]
    fn limits_derive_from_the_poll_interval() {
        let cfg = |ms| ControllerConfig { poll_interval: Duration::from_millis(ms), ..ControllerConfig::default() };
        assert_eq!(cfg(200).measurement_valid_for(), Duration::from_secs(3));
        assert_eq!(cfg(1000).measurement_valid_for(), Duration::from_secs(3));
        assert_eq!(cfg(5000).measurement_valid_for(), Duration::from_secs(15));
        assert_eq!(cfg(200).poll_timeout(), Duration::from_secs(5));
        assert_eq!(cfg(2000).poll_timeout(), Duration::from_secs(10));
        assert_eq!(cfg(60_000).poll_timeout(), Duration::from_secs(30));
        // The default stays below the default max_lag (10 s).
        assert!(ControllerConfig::default().measurement_valid_for() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_hung_poll_publishes_an_error() {
        let cfg = ControllerConfig::default();
        // A shorter timeout than the real one (5 s), to keep the test quick.
        let started = Instant::now();
        let m = poll_with_timeout(std::future::pending(), Duration::from_millis(50), &cfg).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(m.valid_for, cfg.measurement_valid_for());
        assert!(m.error.as_deref().unwrap().starts_with("lag query timed out after"), "{:?}", m.error);
        let mut g = Gate::new(ThrottleSpec::default());
        assert!(matches!(g.decide(&m), Decision::Wait { reason, .. } if reason.contains("timed out")));
        // A poll that answers in time passes through.
        let ok = poll_with_timeout(
            async { Measurement { error: None, ..Measurement::unknown() } },
            cfg.poll_timeout(),
            &cfg,
        )
        .await;
        assert_eq!(ok.error, None);
    }
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
                unknown: None,
            }],
            slots: vec![],
            oldest_transaction_seconds: None,
            oldest_transaction: None,
            error: None,
            valid_for: Duration::from_secs(3),
            history: Arc::default(),
        }
    }

    fn spec() -> ThrottleSpec {
        ThrottleSpec { max_lag: Duration::from_secs(10), ..ThrottleSpec::default() }
    }

    #[test]
    fn staleness_follows_the_measurement() {
        let mut g = Gate::new(spec());
        let mut m = measured(1.0, 0);
        m.at = Instant::now() - Duration::from_secs(2);
        m.valid_for = Duration::from_secs(5);
        assert!(matches!(g.decide(&m), Decision::Go { .. }));
        m.valid_for = Duration::from_secs(1);
        let d = g.decide(&m);
        assert!(
            matches!(&d, Decision::Wait { signal, reason, .. } if signal == "stale" && reason.contains("1s validity")),
            "{d:?}"
        );
        // Before the first poll nothing may run, and the default validity is below max_lag.
        assert!(MAX_MEASUREMENT_AGE < spec().max_lag);
        assert_eq!(Measurement::unknown().valid_for, MAX_MEASUREMENT_AGE);
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
        assert!(matches!(g.decide(&m), Decision::Wait { reason, .. } if reason.contains("unknown")));
    }

    #[test]
    fn min_replicas_and_bytes() {
        let mut g =
            Gate::new(ThrottleSpec { min_replicas: 1, max_lag_bytes: Some(bytesize::ByteSize::mb(1)), ..spec() });
        let mut none = measured(0.0, 0);
        none.standbys.clear();
        assert!(matches!(g.decide(&none), Decision::Wait { reason, .. } if reason.contains("min_replicas")));
        assert!(
            matches!(g.decide(&measured(0.0, 2_000_000)), Decision::Wait { reason, .. } if reason.contains("bytes"))
        );
        assert!(matches!(g.decide(&measured(0.0, 100)), Decision::Go { .. }));
    }

    #[test]
    fn aimd_rate() {
        let rate = |d: Decision| match d {
            Decision::Go { scale } => scale,
            other => panic!("{other:?}"),
        };
        let mut g = Gate::new(spec());
        assert_eq!(rate(g.decide(&measured(1.0, 0))), 1.0);
        // Approaching max_lag (10s): multiplicative decrease, once per measurement.
        let m = measured(7.0, 0);
        assert!((rate(g.decide(&m)) - 0.7).abs() < 1e-9);
        assert!((rate(g.decide(&m)) - 0.7).abs() < 1e-9, "same measurement, no second cut");
        assert!((rate(g.decide(&measured(8.0, 0))) - 0.49).abs() < 1e-9);
        for _ in 0..20 {
            g.decide(&measured(9.0, 0));
        }
        assert!((rate(g.decide(&measured(9.0, 0))) - MIN_RATE).abs() < 1e-9, "floored");
        // Well below: additive increase back to full speed.
        assert!((rate(g.decide(&measured(1.0, 0))) - (MIN_RATE + INCREASE)).abs() < 1e-9);
        for _ in 0..20 {
            g.decide(&measured(1.0, 0));
        }
        assert_eq!(rate(g.decide(&measured(1.0, 0))), 1.0);
        // After a stop, restart at half speed and climb.
        assert!(matches!(g.decide(&measured(11.0, 0)), Decision::Wait { .. }));
        assert!((rate(g.decide(&measured(1.0, 0))) - (RESTART_RATE + INCREASE)).abs() < 1e-9);
    }

    /// Standbys identified by their names.
    fn ids(names: &[&str]) -> Vec<(String, String)> {
        names.iter().map(|n| (format!("name:{n}"), n.to_string())).collect()
    }

    #[test]
    fn standbys_sharing_an_application_name_stay_apart() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let forget = Duration::from_secs(300);
        let both = vec![
            ("slot:a".to_string(), "walreceiver (10.0.0.1)".to_string()),
            ("slot:b".to_string(), "walreceiver (10.0.0.1)".to_string()),
        ];
        assert!(t.missing_standbys(&both, t0, forget).is_empty());
        let gone = t.missing_standbys(&both[..1], t0 + Duration::from_secs(5), forget);
        assert_eq!(gone.len(), 1, "the standby on slot b is missing even though one with its name streams");
    }

    #[test]
    fn a_standby_seen_by_an_earlier_daemon_is_missing_until_forgotten() {
        let forget = Duration::from_secs(300);
        let t0 = Instant::now() + Duration::from_secs(1000);
        let mut t = Tracker::default();
        t.recall(vec![("slot:s".into(), "walreceiver slot s".into(), 30.0)], t0);
        let gone = t.missing_standbys(&[], t0, forget);
        assert_eq!(gone.len(), 1);
        assert!(gone[0].unknown.as_deref().is_some_and(|w| w.contains("disconnected 30s ago")), "{gone:?}");
        // Seen longer ago than forget_after: not held for.
        let mut t = Tracker::default();
        t.recall(vec![("slot:s".into(), "walreceiver slot s".into(), 301.0)], t0);
        assert!(t.missing_standbys(&[], t0, forget).is_empty());
    }

    #[test]
    fn a_disconnected_standby_counts_as_unknown_until_forgotten() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let forget = Duration::from_secs(300);
        assert!(t.missing_standbys(&ids(&["s1", "s2"]), t0, forget).is_empty());
        // s2 drops out: reported, lag unknown, so the gate holds jobs.
        let gone = t.missing_standbys(&ids(&["s1"]), t0 + Duration::from_secs(10), forget);
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].name.as_str(), gone[0].lag_seconds, gone[0].streaming), ("s2", None, false));
        assert!(gone[0].unknown.as_deref().is_some_and(|w| w.contains("disconnected 10s ago")), "{gone:?}");
        let m = Measurement {
            at: Instant::now(),
            standbys: gone,
            slots: vec![],
            oldest_transaction_seconds: None,
            oldest_transaction: None,
            error: None,
            valid_for: Duration::from_secs(3),
            history: Arc::default(),
        };
        assert!(
            matches!(Gate::new(ThrottleSpec::default()).decide(&m), Decision::Wait { reason, .. } if reason.contains("disconnected"))
        );
        // Back again: nothing missing.
        assert!(t.missing_standbys(&ids(&["s1", "s2"]), t0 + Duration::from_secs(20), forget).is_empty());
        // Gone for longer than forget_after: forgotten.
        assert!(t.missing_standbys(&ids(&["s1"]), t0 + Duration::from_secs(400), forget).is_empty());
        // Zero disables the memory.
        let mut t = Tracker::default();
        assert!(t.missing_standbys(&ids(&["s1"]), t0, Duration::ZERO).is_empty());
        assert!(t.missing_standbys(&[], t0 + Duration::from_millis(1), Duration::ZERO).is_empty());
    }

    #[test]
    fn waiting_for_the_first_measurement_does_not_slow_the_start() {
        let mut g = Gate::new(spec());
        assert!(matches!(g.decide(&Measurement::unknown()), Decision::Wait { .. }));
        assert!(matches!(g.decide(&measured(1.0, 0)), Decision::Go { scale } if scale == 1.0));
        // A measurement that fails later is another matter: restart at RESTART_RATE.
        assert!(matches!(g.decide(&Measurement::unknown()), Decision::Wait { .. }));
        assert!(
            matches!(g.decide(&measured(1.0, 0)), Decision::Go { scale } if (scale - RESTART_RATE - INCREASE).abs() < 1e-9)
        );
    }

    #[test]
    fn a_fresh_reading_vetoes_the_batch_the_last_poll_let_go() {
        let t0 = Instant::now();
        let mut h = LsnHistory::default();
        for i in 0..5u64 {
            h.record(t0 + Duration::from_secs(i), 1_000_000 * (i + 1));
        }
        let mut polled = measured(0.0, 0);
        polled.at = t0 + Duration::from_secs(4);
        polled.history = Arc::new(h.since(Some(5_000_000)));
        assert_eq!(polled.history.samples.len(), 1);
        polled.history = Arc::new(h.since(Some(2_500_000)));
        assert_eq!(polled.history.samples.len(), 4, "from the sample at or before the slowest standby");
        let gate = Gate::new(ThrottleSpec { max_lag_bytes: Some(bytesize::ByteSize::mb(2)), ..spec() });
        let fresh = |current: u64, replay: u64, lag: Option<f64>, at: Instant| FreshLag {
            at,
            current,
            standbys: vec![("s1".into(), replay, lag)],
        };
        // Caught up: go.
        assert_eq!(gate.veto(&polled, &fresh(5_000_000, 5_000_000, None, t0 + Duration::from_secs(4))), None);
        // The standby stopped replaying at 2 MB while the primary wrote on: bytes over 2 MB.
        let v = gate.veto(&polled, &fresh(5_000_000, 2_000_000, Some(0.1), t0 + Duration::from_secs(4)));
        assert!(matches!(&v, Some(Decision::Wait { signal, .. }) if signal == "bytes:s1"), "{v:?}");
        // Time lag from the primary's own history: the primary was at 2.5 MB at t0+1.5s, so at
        // t0+12s the standby is 10.5 s behind (max_lag 10s), however small replay_lag still looks.
        let gate = Gate::new(spec());
        let v = gate.veto(&polled, &fresh(5_000_000, 2_500_000, Some(0.5), t0 + Duration::from_secs(12)));
        assert!(
            matches!(&v, Some(Decision::Wait { signal, reason, .. }) if signal == "lag:s1" && reason.contains("10.5s")),
            "{v:?}"
        );
        assert_eq!(gate.veto(&polled, &fresh(5_000_000, 2_500_000, Some(0.5), t0 + Duration::from_secs(10))), None);
        // A standby the controller has not seen yet counts too.
        let mut none = polled.clone();
        none.standbys.clear();
        let gate = Gate::new(ThrottleSpec { max_lag_bytes: Some(bytesize::ByteSize::mb(2)), ..spec() });
        assert!(gate.veto(&none, &fresh(5_000_000, 2_000_000, Some(0.1), t0 + Duration::from_secs(4))).is_some());
    }
}
