//! Job specs: the public YAML contract operators write, one file per job.
//!
//! This module is the only place that knows YAML (serde_yaml is archived upstream; swapping it must
//! stay a change inside this module). It parses, applies defaults and validates *offline*: everything
//! that needs the database (does the table exist, is the key unique) lives in `catalog` / `check`.

mod byte_size;
mod load;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Line and column of a field in a spec file, for problems found later (against the database).
pub fn locate_field(path: &std::path::Path, field: &str) -> Option<(usize, usize)> {
    let text = std::fs::read_to_string(path).ok()?;
    load::locate(&text, field)
}

pub use load::{LoadReport, LoadedJob, load_paths, parse_str};
pub use validate::Problem;

/// One backfill job, exactly as written in its YAML file (after defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pgbackfill job spec")]
pub struct JobSpec {
    /// Unique job name: `[a-z0-9][a-z0-9_-]*`, at most 63 characters. Progress is keyed by it.
    pub name: String,
    /// Table to backfill, optionally schema-qualified (`public.orders`, `"Weird"."Name"`).
    pub table: String,
    /// Key columns walked by the keyset cursor. Default: the table's primary key. Must be NOT NULL
    /// and the leading columns of a unique btree index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<String>>,
    /// Column -> SQL expression assigned by each batch. At least one; never a key column.
    pub set: BTreeMap<String, String>,
    /// Optional SQL predicate: the rows that still need the change. Applied inside each key slice.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<String>,
    /// How many rows each batch updates, and how fast batches follow each other.
    #[serde(default)]
    pub batch: BatchSpec,
    /// Lock and statement timeouts for every batch.
    #[serde(default)]
    pub timeouts: TimeoutSpec,
    /// When to pause: replica lag, retained WAL, old transactions.
    #[serde(default)]
    pub throttle: ThrottleSpec,
    /// Workers on disjoint key ranges of this job (1 to 64).
    #[serde(default = "default_concurrency")]
    pub concurrency: i64,
    /// The key's values are sensitive (e-mail addresses, national ids …): `status` and `/status`
    /// never show the key position. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_sensitive: bool,
    /// Low-traffic windows: outside them the job is held like a throttle. Default: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Steps run once, in order, after the job is completed and verified (no row still matches
    /// `where`): `- not_null: COLUMN`, `- validate_constraint: NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<ThenStep>,
    /// `SET lock_timeout` of every `then` DDL statement: a statement not granted its lock within it
    /// gives up (and is retried later), so no session queues behind it for longer.
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub then_lock_timeout: Duration,
}

/// One `then` step.
// Deserialized by hand: serde_yaml reads externally tagged enums only from YAML tags (`!not_null c`),
// and people write `- not_null: c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ThenStep {
    /// Make COLUMN NOT NULL without a long lock: add a `CHECK (COLUMN IS NOT NULL) NOT VALID`,
    /// validate it, `SET NOT NULL` (no table scan: the valid check proves it), drop the check.
    NotNull(String),
    /// `VALIDATE CONSTRAINT NAME`: a constraint added `NOT VALID` on the job's table.
    ValidateConstraint(String),
}

/// When a job may write: windows on the wall clock of a time zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// IANA time zone name the windows are read in, e.g. `Europe/Berlin`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Windows `[DAYS ]HH:MM-HH:MM`: `Mon-Fri 01:00-06:00`, `Sat,Sun 00:00-24:00`, `22:00-02:00`. DAYS
    /// is a range or a list (every day when omitted); a window may cross midnight and belongs to the
    /// day it starts on.
    #[serde(default)]
    pub windows: Vec<String>,
}

/// Batch sizing: `min_size <= size <= max_size`, all at least 1.
// Sizes are signed so that a negative value reaches `validate` and gets a readable message instead
// of a serde type error. (A `//` comment: `///` would end up in the editors' schema.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Rows per batch: fixed, unless `target_time` is set too (then the starting size). Unset:
    /// batches are sized by time, `target_time` defaulting to 200ms, starting at 1000 rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Smallest size the adaptive controller (and timeout halving) may use.
    #[serde(default = "default_min_size")]
    pub min_size: i64,
    /// Largest size the adaptive controller may use.
    #[serde(default = "default_max_size")]
    pub max_size: i64,
    /// The longest a batch may hold its row locks (e.g. `500ms`): the size adapts to about 80% of
    /// it. Default: `200ms` when `size` is unset, none (fixed-size batches) when it is set.
    #[serde(default, with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub target_time: Option<Duration>,
    /// Sleep between batches.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub pause: Duration,
}

/// Timeouts set for every batch's transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSpec {
    /// `SET LOCAL lock_timeout` for every batch: a batch waiting on a lock gives up instead of
    /// queueing the application's queries behind it.
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lock: Duration,
    /// `SET LOCAL statement_timeout` for every batch; on timeout the batch is halved and retried.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub statement: Duration,
}

/// Conditions under which the job pauses between batches, to protect replicas and vacuum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    /// Pause while any standby's replay lag exceeds this.
    #[serde(default = "default_max_lag", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_lag: Duration,
    /// Resume once the lag is below this. Default: `max_lag / 2`.
    #[serde(default, with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub resume_lag: Option<Duration>,
    /// Pause while any standby is more than this many bytes of WAL behind (`16MB`, `1GiB`).
    #[serde(default, with = "byte_size::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub max_lag_bytes: Option<ByteSize>,
    /// Pause while fewer standbys than this are streaming.
    #[serde(default)]
    pub min_replicas: i64,
    /// Pause while any replication slot retains more WAL than this (a lagging CDC consumer).
    #[serde(default, with = "byte_size::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub max_slot_retained_bytes: Option<ByteSize>,
    /// Pause while the oldest open transaction is older than this (it holds back vacuum).
    #[serde(default, with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub max_transaction_age: Option<Duration>,
    /// Hard cap on rows updated per second by the whole job (all its ranges together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<i64>,
}

impl<'de> Deserialize<'de> for ThenStep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = BTreeMap::<String, String>::deserialize(d)?;
        let mut entries = map.into_iter();
        match (entries.next(), entries.next()) {
            (Some((kind, name)), None) => match kind.as_str() {
                "not_null" => Ok(ThenStep::NotNull(name)),
                "validate_constraint" => Ok(ThenStep::ValidateConstraint(name)),
                other => Err(D::Error::custom(format!(
                    "unknown step `{other}`, expected `not_null` or `validate_constraint`"
                ))),
            },
            _ => Err(D::Error::custom("a step is one `kind: name` pair")),
        }
    }
}

fn default_timezone() -> String {
    "UTC".to_string()
}
fn default_concurrency() -> i64 {
    1
}
/// The first batch's size when `batch.size` is unset.
pub const DEFAULT_START_SIZE: i64 = 1_000;
/// `batch.target_time` when neither it nor `batch.size` is set: short enough that the
/// application's statements rarely wait long on a batch's row locks, long enough that a batch's
/// fixed costs (a few round trips, ~3 ms) stay small. BENCHMARKS.md: 0.59x the single statement
/// end to end, where fixed 1,000-row batches (the default before) had measured 0.52x.
pub const DEFAULT_TARGET_TIME: Duration = Duration::from_millis(200);
fn default_min_size() -> i64 {
    100
}
fn default_max_size() -> i64 {
    100_000
}
fn default_lock_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_lag() -> Duration {
    Duration::from_secs(10)
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            size: None,
            min_size: default_min_size(),
            max_size: default_max_size(),
            target_time: None,
            pause: Duration::ZERO,
        }
    }
}

impl BatchSpec {
    /// The first batch's size: `size`, else [`DEFAULT_START_SIZE`] within `min_size..=max_size`.
    pub fn start_size(&self) -> i64 {
        self.size.unwrap_or_else(|| DEFAULT_START_SIZE.clamp(self.min_size.max(1), self.max_size.max(1)))
    }

    /// The time a batch is sized to: `target_time`, else [`DEFAULT_TARGET_TIME`] when `size` is
    /// unset too; `None`: fixed-size batches.
    pub fn target(&self) -> Option<Duration> {
        self.target_time.or(if self.size.is_none() { Some(DEFAULT_TARGET_TIME) } else { None })
    }
}

impl Default for TimeoutSpec {
    fn default() -> Self {
        Self { lock: default_lock_timeout(), statement: default_statement_timeout() }
    }
}

impl Default for ThrottleSpec {
    fn default() -> Self {
        Self {
            max_lag: default_max_lag(),
            resume_lag: None,
            max_lag_bytes: None,
            min_replicas: 0,
            max_slot_retained_bytes: None,
            max_transaction_age: None,
            max_rate: None,
        }
    }
}

impl ThrottleSpec {
    /// The lag below which a throttled job resumes (hysteresis).
    pub fn effective_resume_lag(&self) -> Duration {
        self.resume_lag.unwrap_or(self.max_lag / 2)
    }
}

impl JobSpec {
    /// The JSON Schema editors use to validate job YAML (`jobs/schema.json`).
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(JobSpec)).unwrap_or_default()
    }
}
