//! The progress table: the only module that knows pgbackfill's own schema.
//!
//! Two tables in the daemon's schema (default `pgbackfill`):
//! - `jobs`: one row per job: what it means (fingerprint), its state, counters and last error;
//! - `ranges`: one row per key range of a job (one range unless `concurrency > 1`): the range's
//!   bounds, its cursor, and which daemon holds it (owner, lease, epoch).
//!
//! A batch advances its range row *in the batch's own transaction* ([`Progress::lock_range`] at the
//! start, [`Progress::advance`] at the end), so a crash at any instant either keeps both the rows and
//! the cursor or neither: no row skipped, none done twice. The range row is locked and its owner and
//! epoch compared first, so a daemon that lost its lease can never commit a batch.
//!
//! Migrations are versioned, run at start-up under a transaction-scoped advisory lock, and are
//! idempotent, so any number of daemons may start at once.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use thiserror::Error;

use crate::batch::KeyValue;
use crate::ident::quote_ident;

mod steps;
pub use steps::{StepRow, StepState};

/// Versioned migrations; `{schema}` is replaced by the quoted schema name. Never edit a released
/// entry: append a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE {schema}.jobs (
    name              text PRIMARY KEY,
    fingerprint       text NOT NULL,
    meaning           jsonb NOT NULL,
    spec              jsonb NOT NULL,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending','running','paused','completed','failed','cancelled')),
    planned           boolean NOT NULL DEFAULT false,
    estimated_rows    bigint,
    leftover_rows     bigint,
    last_error        text,
    throttle_reason   text,
    throttled_seconds double precision NOT NULL DEFAULT 0,
    paused_seconds    double precision NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    state_changed_at  timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {schema}.ranges (
    job           text NOT NULL REFERENCES {schema}.jobs(name) ON DELETE CASCADE,
    range_no      integer NOT NULL,
    lower_bound   text[],
    upper_bound   text[] NOT NULL,
    cursor        text[],
    done          boolean NOT NULL DEFAULT false,
    rows_updated  bigint NOT NULL DEFAULT 0,
    rows_scanned  bigint NOT NULL DEFAULT 0,
    batches       bigint NOT NULL DEFAULT 0,
    batch_size    bigint,
    owner         text,
    lease_until   timestamptz,
    epoch         bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, range_no)
);
COMMENT ON SCHEMA {schema} IS 'pgbackfill progress: job state and keyset cursors. Managed by pgbackfill.';
"#,
    ),
    (
        2,
        // Claim epochs from one sequence: a job that is reset and recreated must never hand out an
        // epoch a worker of its previous incarnation may still hold.
        r#"
CREATE SEQUENCE {schema}.epochs;
SELECT setval('{schema_literal}.epochs', greatest(1, (SELECT coalesce(max(epoch), 0) + 1 FROM {schema}.ranges)));
"#,
    ),
    (
        3,
        // `then` steps (issue 11): one row per step of a completed job, keyed by the step's label so
        // a step that is done stays done when the list around it changes.
        r#"
CREATE TABLE {schema}.steps (
    job          text NOT NULL REFERENCES {schema}.jobs(name) ON DELETE CASCADE,
    step         text NOT NULL,
    step_no      integer NOT NULL,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending','waiting','running','done','failed')),
    attempts     integer NOT NULL DEFAULT 0,
    detail       text,
    started_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, step)
);
"#,
    ),
    (
        4,
        // Specs a daemon refuses (changed meaning, missing privilege, table gone …), with the reason,
        // so `status` shows them as refused instead of a job that looks fine. Kept apart from `jobs`:
        // a job refused before it was ever registered has no `jobs` row.
        r#"
CREATE TABLE {schema}.refusals (
    name        text PRIMARY KEY,
    file        text NOT NULL,
    reason      text NOT NULL,
    owner       text,
    refused_at  timestamptz NOT NULL DEFAULT now()
);
"#,
    ),
    (
        5,
        // Verification in keyset chunks (issue 10): its cursor and counts advance in each chunk's
        // own transaction, like a range's, so it resumes where it stopped.
        r#"
ALTER TABLE {schema}.jobs
    ADD COLUMN verify_cursor   text[],
    ADD COLUMN verify_checked  bigint NOT NULL DEFAULT 0,
    ADD COLUMN verify_matching bigint NOT NULL DEFAULT 0,
    ADD COLUMN verify_done     boolean NOT NULL DEFAULT false;
"#,
    ),
    (
        6,
        // Standbys seen (issue 10): a daemon that starts while a known standby is down holds jobs
        // for it (fail closed) instead of not knowing it exists. `id` is `slot:<slot name>` when
        // the standby streams from a slot, else `name:<application_name> (<client address>)`.
        r#"
CREATE TABLE {schema}.standbys (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
"#,
    ),
    (
        7,
        // Who paused a job and how, for `status`, logs and metrics: `paused_via` is a fixed set
        // (a metric label), `paused_by` the sentence a person reads.
        r#"
ALTER TABLE {schema}.jobs
    ADD COLUMN paused_via text CHECK (paused_via IN ('signal', 'cli')),
    ADD COLUMN paused_by  text;
"#,
    ),
    (
        8,
        // Evidence of life for the completion check: verification holds no range, so without this
        // `status` called a job orphaned ("no live daemon") while a daemon was verifying it, or
        // holding its verification outside a schedule window. The verifier renews this lease while
        // it runs (chunks, throttle waits) and clears it when it stops.
        r#"
ALTER TABLE {schema}.jobs
    ADD COLUMN verify_owner       text,
    ADD COLUMN verify_lease_until timestamptz;
"#,
    ),
    (
        9,
        // Verification of a plain table walks heap blocks, not keys (see `verify`): its cursor is
        // the next block to count. At most one of `verify_cursor` (key walk) and `verify_block`
        // is set; a verification resumes in the walk it started with.
        r#"
ALTER TABLE {schema}.jobs
    ADD COLUMN verify_block bigint;
"#,
    ),
    (
        10,
        // Working time, measured by the worker of each range (throttle and schedule holds
        // excluded), and the rows scanned in it: `status`'s rows/s and ETA. Wall time since the
        // start counted every hour a job spent refused, orphaned or waiting for a daemon as work.
        r#"
ALTER TABLE {schema}.ranges
    ADD COLUMN worked_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN worked_rows    bigint NOT NULL DEFAULT 0;
"#,
    ),
];

#[derive(Debug, Error)]
pub enum ProgressError {
    #[error("database error on the progress table: {}", crate::error::sql(.0))]
    Db(#[from] sqlx::Error),
    #[error(
        "job `{name}` already has progress for a different meaning ({field} changed: was {was}, now {now}); \
         rename the job to start a new backfill, or run `pgbackfill reset {name}` to start this one over"
    )]
    MeaningChanged { name: String, field: String, was: String, now: String },
    #[error("no job named `{0}` in the progress table")]
    NoSuchJob(String),
    #[error("job `{name}` is {state}; cannot {action} it")]
    BadTransition { name: String, state: State, action: &'static str },
}

/// A job's lifecycle: pending → running ⇄ paused → completed | failed | cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Paused => "paused",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> State {
        match s {
            "running" => State::Running,
            "paused" => State::Paused,
            "completed" => State::Completed,
            "failed" => State::Failed,
            "cancelled" => State::Cancelled,
            _ => State::Pending,
        }
    }

    /// Completed, failed and cancelled jobs are left alone by daemons.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Completed | State::Failed | State::Cancelled)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job was paused: a bounded set, fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PausedVia {
    /// `SIGUSR1` to a daemon.
    Signal,
    /// `pgbackfill pause NAME`.
    Cli,
}

impl PausedVia {
    pub const ALL: [PausedVia; 2] = [PausedVia::Signal, PausedVia::Cli];

    pub fn as_str(self) -> &'static str {
        match self {
            PausedVia::Signal => "signal",
            PausedVia::Cli => "cli",
        }
    }

    fn parse(s: &str) -> Option<PausedVia> {
        PausedVia::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A job row, with its ranges' counters summed.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub name: String,
    pub state: State,
    pub planned: bool,
    pub fingerprint: String,
    pub estimated_rows: Option<i64>,
    pub leftover_rows: Option<i64>,
    pub last_error: Option<String>,
    pub throttle_reason: Option<String>,
    pub throttled_seconds: f64,
    pub paused_seconds: f64,
    /// How the job was paused (while paused): by a signal to a daemon or by the CLI.
    pub paused_via: Option<PausedVia>,
    /// Who paused it, e.g. "SIGUSR1 to daemon host:1:… at 2026-…" or "pgbackfill pause by alice".
    pub paused_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub state_changed_at: DateTime<Utc>,
    pub rows_updated: i64,
    pub rows_scanned: i64,
    pub batches: i64,
    /// Working time summed over the ranges' workers, and the rows they scanned in it (see
    /// migration 10; rows done before it are in neither).
    pub worked_seconds: f64,
    pub worked_rows: i64,
    pub ranges: i64,
    pub ranges_done: i64,
    /// Open ranges a live daemon holds: the workers on the job right now.
    pub ranges_held: i64,
    /// Rows the completion check has examined so far (it runs in chunks once every range is done).
    pub verify_checked: i64,
    pub owners: Vec<String>,
    /// The daemon verifying the job right now (its verification lease is live), if any.
    pub verifier: Option<String>,
    /// The largest current batch size of the job's open ranges.
    pub batch_size: Option<i64>,
    /// The spec marks the key sensitive: `status` must not show key values.
    pub key_sensitive: bool,
    /// Why a daemon refused the job's spec, and when (see [`Progress::refuse`]).
    pub refused: Option<Refusal>,
    pub now: DateTime<Utc>,
}

/// A daemon's refusal of a job spec.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub file: String,
    pub reason: String,
    pub owner: Option<String>,
    pub at: DateTime<Utc>,
}

/// One key range of a job.
#[derive(Debug, Clone, Serialize)]
pub struct RangeRow {
    pub range_no: i32,
    pub lower_bound: Option<KeyValue>,
    pub upper_bound: KeyValue,
    pub cursor: Option<KeyValue>,
    pub done: bool,
    pub rows_updated: i64,
    pub rows_scanned: i64,
    pub batches: i64,
    pub batch_size: Option<i64>,
    pub owner: Option<String>,
}

/// Proof that this daemon holds a range: every batch re-checks it under the range row's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub job: String,
    pub range_no: i32,
    pub owner: String,
    pub epoch: i64,
    /// How long the claim lasts without renewal.
    pub lease: Duration,
}

/// What a batch sees after locking its range row.
#[derive(Debug, Clone)]
pub struct Locked {
    pub job_state: State,
    pub cursor: Option<KeyValue>,
    pub lower_bound: Option<KeyValue>,
    pub upper_bound: KeyValue,
    pub batch_size: Option<i64>,
    pub done: bool,
}

/// Where a job's verification stands: what its last chunk ended on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyCursor {
    /// The largest key counted so far (a walk in key order).
    Key(KeyValue),
    /// The first heap block not counted yet (a walk in block order).
    Block(i64),
}

/// A job's verification, locked for one chunk ([`Progress::lock_verify`]).
#[derive(Debug, Clone)]
pub struct VerifyLocked {
    pub job_state: State,
    /// `None`: nothing counted yet.
    pub cursor: Option<VerifyCursor>,
    /// Rows found still matching `where` so far.
    pub matching: i64,
    pub done: bool,
}

/// What one committed batch did to its range.
#[derive(Debug, Clone, Copy)]
pub struct Advance<'a> {
    /// The slice's largest key (`None`: empty slice, cursor unchanged).
    pub cursor: Option<&'a KeyValue>,
    pub scanned: i64,
    pub updated: i64,
    /// The range is finished.
    pub done: bool,
    pub batch_size: i64,
    /// The worker's working time since the previous batch it committed (or its claim).
    pub worked: std::time::Duration,
}

/// The schema version this build migrates to (the newest entry of `MIGRATIONS`).
pub fn expected_version() -> i32 {
    MIGRATIONS.iter().map(|(v, _)| *v).max().unwrap_or(0)
}

/// Handle on the progress schema. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Progress {
    pool: PgPool,
    schema: String,
    schema_raw: String,
}

type Tx<'a> = Transaction<'a, Postgres>;

impl Progress {
    pub fn new(pool: PgPool, schema: &str) -> Self {
        Self { pool, schema: quote_ident(schema), schema_raw: schema.to_string() }
    }

    /// Our SQL with the schema spliced in. The schema is always a quoted identifier (and, inside a
    /// string literal, also has its single quotes doubled), which is why asserting it safe is sound.
    fn sql(&self, text: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(
            text.replace("{schema_literal}", &self.schema.replace('\'', "''")).replace("{schema}", &self.schema),
        )
    }

    /// Create or upgrade the schema. Safe to run concurrently from many daemons.
    pub async fn migrate(&self) -> Result<(), ProgressError> {
        // Up to date: no DDL at all. `CREATE SCHEMA IF NOT EXISTS` checks the database's CREATE
        // privilege even when the schema exists, so without this a daemon would need CREATE on
        // the database at every start, not just the first; and a daemon role that was only
        // granted DML on a schema `pgbackfill migrate` created (deploy/sql/) could never start.
        if self.schema_version().await? >= Some(expected_version()) {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pgbackfill.migrate:' || $1))")
            .bind(&self.schema_raw)
            .execute(&mut *tx)
            .await?;
        sqlx::query(self.sql("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&mut *tx).await?;
        sqlx::query(self.sql(
            "CREATE TABLE IF NOT EXISTS {schema}.migrations (version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now())",
        ))
        .execute(&mut *tx)
        .await?;
        let applied: Vec<i32> =
            sqlx::query_scalar(self.sql("SELECT version FROM {schema}.migrations")).fetch_all(&mut *tx).await?;
        for (version, body) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            sqlx::raw_sql(self.sql(body)).execute(&mut *tx).await?;
            sqlx::query(self.sql("INSERT INTO {schema}.migrations (version) VALUES ($1)"))
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, schema = %self.schema_raw, "applied progress-table migration");
        }
        tx.commit().await?;
        Ok(())
    }

    /// The progress schema's version in the database: the newest applied migration (`None`: no
    /// progress schema yet). Read-only, for readiness checks.
    pub async fn schema_version(&self) -> Result<Option<i32>, ProgressError> {
        let exists: bool =
            sqlx::query_scalar(self.sql("SELECT to_regclass('{schema_literal}.migrations') IS NOT NULL"))
                .fetch_one(&self.pool)
                .await?;
        if !exists {
            return Ok(None);
        }
        Ok(sqlx::query_scalar(self.sql("SELECT max(version) FROM {schema}.migrations")).fetch_one(&self.pool).await?)
    }

    /// Record a job (new: pending), or check that an existing one still means the same thing.
    /// Tuning fields are refreshed; a change of meaning is refused.
    pub async fn register(
        &self,
        name: &str,
        fingerprint: &str,
        meaning: &serde_json::Value,
        spec: &serde_json::Value,
        estimated_rows: i64,
    ) -> Result<JobRow, ProgressError> {
        // Every daemon registers every job on every scan (once a second). When nothing changed,
        // which is nearly always, a read is enough: the write path below locks the row, so it
        // wrote WAL and cost an idle daemon most of its CPU (measured with 10 waiting jobs).
        let known: Option<(String, bool)> =
            sqlx::query_as(self.sql("SELECT fingerprint, spec = $2 FROM {schema}.jobs WHERE name = $1"))
                .bind(name)
                .bind(spec)
                .fetch_optional(&self.pool)
                .await?;
        if let Some((was_fp, true)) = &known
            && was_fp == fingerprint
            && let Some(row) = self.job(name).await?
        {
            return Ok(row);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(self.sql(
            "INSERT INTO {schema}.jobs (name, fingerprint, meaning, spec, estimated_rows) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
        ))
        .bind(name)
        .bind(fingerprint)
        .bind(meaning)
        .bind(spec)
        .bind(estimated_rows)
        .execute(&mut *tx)
        .await?;
        let (was_fp, was_meaning): (String, serde_json::Value) =
            sqlx::query_as(self.sql("SELECT fingerprint, meaning FROM {schema}.jobs WHERE name = $1 FOR UPDATE"))
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        if was_fp != fingerprint {
            let field = ["table", "key", "set", "where"]
                .into_iter()
                .find(|f| was_meaning.get(f) != meaning.get(f))
                .unwrap_or("meaning");
            let show = |v: Option<&serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "null".into());
            return Err(ProgressError::MeaningChanged {
                name: name.to_string(),
                field: field.to_string(),
                was: show(was_meaning.get(field)),
                now: show(meaning.get(field)),
            });
        }
        sqlx::query(self.sql(
            "UPDATE {schema}.jobs SET spec = $2, updated_at = now() WHERE name = $1 AND spec IS DISTINCT FROM $2",
        ))
        .bind(name)
        .bind(spec)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.job(name).await?.ok_or_else(|| ProgressError::NoSuchJob(name.to_string()))
    }

    /// Fix a job's key ranges, once. Returns false when another daemon planned it first.
    /// `ranges` is empty for an empty table: the job is then completed at once.
    /// `estimated_rows`: the planner's figure at the start (see [`crate::catalog::estimate_rows`]);
    /// `None` keeps the one recorded at registration.
    pub async fn plan(
        &self,
        name: &str,
        ranges: &[(Option<KeyValue>, KeyValue)],
        estimated_rows: Option<i64>,
    ) -> Result<bool, ProgressError> {
        let mut tx = self.pool.begin().await?;
        let planned: Option<bool> =
            sqlx::query_scalar(self.sql("SELECT planned FROM {schema}.jobs WHERE name = $1 FOR UPDATE"))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        match planned {
            None => return Err(ProgressError::NoSuchJob(name.to_string())),
            Some(true) => return Ok(false),
            Some(false) => {}
        }
        for (i, (lower, upper)) in ranges.iter().enumerate() {
            sqlx::query(self.sql(
                "INSERT INTO {schema}.ranges (job, range_no, lower_bound, upper_bound, cursor) VALUES ($1, $2, $3, $4, $3)",
            ))
            .bind(name)
            .bind(i as i32)
            .bind(lower)
            .bind(upper)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(self.sql(
            "UPDATE {schema}.jobs SET planned = true, started_at = coalesce(started_at, now()), \
             state = CASE WHEN state = 'pending' THEN 'running' ELSE state END, \
             state_changed_at = CASE WHEN state = 'pending' THEN now() ELSE state_changed_at END, \
             estimated_rows = coalesce($2, estimated_rows), updated_at = now() WHERE name = $1",
        ))
        .bind(name)
        .bind(estimated_rows)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// What the daemon needs on the progress schema and the connected role lacks, as GRANT
    /// phrases (`INSERT, UPDATE on pgbackfill.refusals`); empty when it has everything.
    pub async fn missing_privileges(&self) -> Result<Vec<String>, ProgressError> {
        let rows: Vec<(String, String)> = sqlx::query_as(self.sql(
            "SELECT t.name, string_agg(p.privilege, ', ' ORDER BY p.ord) \
             FROM unnest(ARRAY['jobs', 'ranges', 'steps', 'refusals', 'standbys']) AS t(name) \
             CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) WITH ORDINALITY AS p(privilege, ord) \
             WHERE to_regclass($1 || '.' || quote_ident(t.name)) IS NOT NULL \
               AND NOT has_table_privilege(to_regclass($1 || '.' || quote_ident(t.name)), p.privilege) \
             GROUP BY t.name ORDER BY t.name",
        ))
        .bind(&self.schema)
        .fetch_all(&self.pool)
        .await?;
        let mut missing: Vec<String> =
            rows.into_iter().map(|(table, privileges)| format!("{privileges} on {}.{table}", self.schema)).collect();
        let seq: Option<bool> = sqlx::query_scalar(self.sql(
            "SELECT has_sequence_privilege(to_regclass($1 || '.epochs'), 'USAGE') \
             WHERE to_regclass($1 || '.epochs') IS NOT NULL",
        ))
        .bind(&self.schema)
        .fetch_optional(&self.pool)
        .await?;
        if seq == Some(false) {
            missing.push(format!("USAGE on sequence {}.epochs", self.schema));
        }
        Ok(missing)
    }

    /// Claim a range nobody holds (or whose holder's lease expired). The epoch increments on
    /// every change of hands, which fences off the previous holder's in-flight batch.
    pub async fn claim(&self, job: &str, owner: &str, lease: Duration) -> Result<Option<Claim>, ProgressError> {
        let row: Option<(i32, i64)> = sqlx::query_as(self.sql(
            "UPDATE {schema}.ranges r SET owner = $2, lease_until = now() + $3 * interval '1 millisecond', \
             epoch = nextval('{schema_literal}.epochs'), updated_at = now() \
             WHERE (r.job, r.range_no) = ( \
                SELECT r2.job, r2.range_no FROM {schema}.ranges r2 JOIN {schema}.jobs j ON j.name = r2.job \
                WHERE r2.job = $1 AND NOT r2.done AND j.state IN ('running', 'paused') \
                  AND (r2.owner IS NULL OR r2.lease_until < now()) \
                ORDER BY r2.range_no LIMIT 1 FOR UPDATE OF r2 SKIP LOCKED) \
             RETURNING r.range_no, r.epoch",
        ))
        .bind(job)
        .bind(owner)
        .bind(lease.as_millis() as f64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(range_no, epoch)| Claim {
            job: job.to_string(),
            range_no,
            owner: owner.to_string(),
            epoch,
            lease,
        }))
    }

    /// Extend the leases of the given claims: exactly those with a live worker in this daemon, so a
    /// range whose worker is gone (panicked, or could not release it) expires and can be taken over.
    /// Rows locked by our own batches in flight are skipped rather than waited for: those batches
    /// extend their lease when they commit.
    pub async fn renew(&self, claims: &[Claim], lease: Duration) -> Result<u64, ProgressError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let jobs: Vec<&str> = claims.iter().map(|c| c.job.as_str()).collect();
        let ranges: Vec<i32> = claims.iter().map(|c| c.range_no).collect();
        let epochs: Vec<i64> = claims.iter().map(|c| c.epoch).collect();
        let r = sqlx::query(self.sql(
            "UPDATE {schema}.ranges SET lease_until = clock_timestamp() + $5 * interval '1 millisecond' \
             WHERE (job, range_no) IN ( \
                SELECT r.job, r.range_no FROM {schema}.ranges r \
                JOIN unnest($2::text[], $3::int4[], $4::int8[]) AS c(job, range_no, epoch) \
                  ON (c.job, c.range_no, c.epoch) = (r.job, r.range_no, r.epoch) \
                WHERE r.owner = $1 AND NOT r.done FOR UPDATE OF r SKIP LOCKED)",
        ))
        .bind(&claims[0].owner)
        .bind(&jobs)
        .bind(&ranges)
        .bind(&epochs)
        .bind(lease.as_millis() as f64)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Extend one claim's lease right after its own batch attempt failed. Unlike [`Self::renew`] it
    /// waits for the row: what can still hold it is that attempt's rollback, a moment away.
    pub async fn renew_claim(&self, claim: &Claim) -> Result<u64, ProgressError> {
        let r = sqlx::query(self.sql(
            "UPDATE {schema}.ranges SET lease_until = clock_timestamp() + $5 * interval '1 millisecond' \
             WHERE job = $1 AND range_no = $2 AND owner = $3 AND epoch = $4 AND NOT done",
        ))
        .bind(&claim.job)
        .bind(claim.range_no)
        .bind(&claim.owner)
        .bind(claim.epoch)
        .bind(claim.lease.as_millis() as f64)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Give a range back (on shutdown or pause) so another daemon need not wait for the lease.
    pub async fn release(&self, claim: &Claim) -> Result<(), ProgressError> {
        sqlx::query(self.sql(
            "UPDATE {schema}.ranges SET owner = NULL, lease_until = NULL \
             WHERE job = $1 AND range_no = $2 AND owner = $3 AND epoch = $4",
        ))
        .bind(&claim.job)
        .bind(claim.range_no)
        .bind(&claim.owner)
        .bind(claim.epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// First statement of a batch transaction: lock our range row and prove we still hold it.
    /// `None` means the claim is gone (lease taken over, job reset): drop the batch.
    pub async fn lock_range(&self, tx: &mut Tx<'_>, claim: &Claim) -> Result<Option<Locked>, ProgressError> {
        type Row = (String, Option<Vec<String>>, Option<Vec<String>>, Vec<String>, Option<i64>, bool);
        let row: Option<Row> = sqlx::query_as(self.sql(
            "SELECT j.state, r.cursor, r.lower_bound, r.upper_bound, r.batch_size, r.done \
             FROM {schema}.ranges r JOIN {schema}.jobs j ON j.name = r.job \
             WHERE r.job = $1 AND r.range_no = $2 AND r.owner = $3 AND r.epoch = $4 FOR UPDATE OF r",
        ))
        .bind(&claim.job)
        .bind(claim.range_no)
        .bind(&claim.owner)
        .bind(claim.epoch)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|(state, cursor, lower_bound, upper_bound, batch_size, done)| Locked {
            job_state: State::parse(&state),
            cursor,
            lower_bound,
            upper_bound,
            batch_size,
            done,
        }))
    }

    /// Last statement of a batch transaction: move the cursor and counters.
    pub async fn advance(&self, tx: &mut Tx<'_>, claim: &Claim, step: &Advance<'_>) -> Result<(), ProgressError> {
        let Advance { cursor, scanned, updated, done, batch_size, worked } = *step;
        sqlx::query(self.sql(
            "UPDATE {schema}.ranges SET cursor = coalesce($5, cursor), rows_scanned = rows_scanned + $6, \
             rows_updated = rows_updated + $7, batches = batches + 1, done = $8, batch_size = $9, \
             worked_seconds = worked_seconds + $11, worked_rows = worked_rows + $6, \
             updated_at = now(), owner = CASE WHEN $8 THEN NULL ELSE owner END, \
             lease_until = clock_timestamp() + $10 * interval '1 millisecond' \
             WHERE job = $1 AND range_no = $2 AND owner = $3 AND epoch = $4",
        ))
        .bind(&claim.job)
        .bind(claim.range_no)
        .bind(&claim.owner)
        .bind(claim.epoch)
        .bind(cursor)
        .bind(scanned)
        .bind(updated)
        .bind(done)
        .bind(batch_size)
        .bind(claim.lease.as_millis() as f64)
        .bind(worked.as_secs_f64())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Whether every range of a job is done.
    pub async fn all_ranges_done(&self, name: &str) -> Result<bool, ProgressError> {
        let open: i64 =
            sqlx::query_scalar(self.sql("SELECT count(*) FROM {schema}.ranges WHERE job = $1 AND NOT done"))
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        Ok(open == 0)
    }

    /// Lock the job's row for one verification chunk and read where verification stands. Chunks
    /// of any daemons serialize on this lock, so each row is counted once. `FOR NO KEY UPDATE`
    /// leaves the range rows' foreign-key checks alone.
    pub async fn lock_verify(&self, tx: &mut Tx<'_>, name: &str) -> Result<Option<VerifyLocked>, ProgressError> {
        type Row = (String, Option<Vec<String>>, Option<i64>, i64, bool);
        let row: Option<Row> = sqlx::query_as(self.sql(
            "SELECT state, verify_cursor, verify_block, verify_matching, verify_done FROM {schema}.jobs \
             WHERE name = $1 FOR NO KEY UPDATE",
        ))
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|(state, key, block, matching, done)| VerifyLocked {
            job_state: State::parse(&state),
            cursor: block.map(VerifyCursor::Block).or(key.map(VerifyCursor::Key)),
            matching,
            done,
        }))
    }

    /// Advance verification by one chunk, in the chunk's transaction (after [`Self::lock_verify`]).
    /// `cursor` `None`: the chunk found nothing to move it to (cursor unchanged).
    pub async fn advance_verify(
        &self,
        tx: &mut Tx<'_>,
        name: &str,
        cursor: Option<&VerifyCursor>,
        checked: i64,
        matching: i64,
        done: bool,
    ) -> Result<(), ProgressError> {
        let (key, block) = match cursor {
            Some(VerifyCursor::Key(k)) => (Some(k), None),
            Some(VerifyCursor::Block(b)) => (None, Some(*b)),
            None => (None, None),
        };
        sqlx::query(self.sql(
            "UPDATE {schema}.jobs SET verify_cursor = coalesce($2, verify_cursor), \
             verify_block = coalesce($6, verify_block), \
             verify_checked = verify_checked + $3, verify_matching = verify_matching + $4, verify_done = $5, \
             updated_at = now() WHERE name = $1",
        ))
        .bind(name)
        .bind(key)
        .bind(checked)
        .bind(matching)
        .bind(done)
        .bind(block)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Start a job's verification over, in the chunk's transaction (after [`Self::lock_verify`]):
    /// its cursor and counts are forgotten. For a cursor the walk can no longer continue (see
    /// `verify`), so that no row is counted twice.
    pub async fn restart_verify(&self, tx: &mut Tx<'_>, name: &str) -> Result<(), ProgressError> {
        sqlx::query(self.sql(
            "UPDATE {schema}.jobs SET verify_cursor = NULL, verify_block = NULL, verify_checked = 0, \
             verify_matching = 0, verify_done = false, updated_at = now() WHERE name = $1",
        ))
        .bind(name)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Verification's lease: `owner` is verifying `name` and shows it (see migration 8).
    pub async fn renew_verify(&self, name: &str, owner: &str, lease: Duration) -> Result<(), ProgressError> {
        sqlx::query(self.sql(
            "UPDATE {schema}.jobs SET verify_owner = $2, \
             verify_lease_until = clock_timestamp() + $3 * interval '1 millisecond' WHERE name = $1",
        ))
        .bind(name)
        .bind(owner)
        .bind(lease.as_millis() as f64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Verification by `owner` stopped (done, paused, shutdown): drop its lease.
    pub async fn end_verify(&self, name: &str, owner: &str) -> Result<(), ProgressError> {
        sqlx::query(self.sql(
            "UPDATE {schema}.jobs SET verify_owner = NULL, verify_lease_until = NULL \
             WHERE name = $1 AND verify_owner = $2",
        ))
        .bind(name)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Record the standbys streaming now (`(id, name)`), so a daemon started while one of them is
    /// down knows to wait for it (see `throttle::Tracker`).
    pub async fn remember_standbys(&self, present: &[(String, String)]) -> Result<(), ProgressError> {
        let (ids, names): (Vec<&str>, Vec<&str>) = present.iter().map(|(i, n)| (i.as_str(), n.as_str())).unzip();
        sqlx::query(self.sql(
            "INSERT INTO {schema}.standbys AS s (id, name) SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, last_seen = now()",
        ))
        .bind(ids)
        .bind(names)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every standby ever recorded: `(id, name, seconds since it was last seen)`.
    pub async fn known_standbys(&self) -> Result<Vec<(String, String, f64)>, ProgressError> {
        Ok(sqlx::query_as(
            self.sql(
                "SELECT id, name, extract(epoch FROM now() - last_seen)::float8 FROM {schema}.standbys ORDER BY id",
            ),
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// running → completed, storing the verification count. Idempotent across daemons.
    pub async fn complete(&self, name: &str, leftover_rows: Option<i64>) -> Result<bool, ProgressError> {
        let r = sqlx::query(self.sql(
            "UPDATE {schema}.jobs SET state = 'completed', leftover_rows = $2, finished_at = now(), \
             state_changed_at = now(), updated_at = now(), throttle_reason = NULL \
             WHERE name = $1 AND state = 'running' \
               AND NOT EXISTS (SELECT 1 FROM {schema}.ranges WHERE job = $1 AND NOT done)",
        ))
        .bind(name)
        .bind(leftover_rows)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A permanent error: the job stops with the error stored for `status`.
    pub async fn fail(&self, name: &str, error: &str) -> Result<(), ProgressError> {
        sqlx::query(self.sql(
            "UPDATE {schema}.jobs SET state = 'failed', last_error = $2, finished_at = now(), \
             state_changed_at = now(), updated_at = now() WHERE name = $1 AND state IN ('pending', 'running', 'paused')",
        ))
        .bind(name)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replace a job's row estimate (one that was unknown when it started).
    pub async fn set_estimate(&self, name: &str, estimated_rows: i64) -> Result<(), ProgressError> {
        sqlx::query(self.sql("UPDATE {schema}.jobs SET estimated_rows = $2 WHERE name = $1"))
            .bind(name)
            .bind(estimated_rows)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record a transient error without changing state (shown by `status` while retrying).
    pub async fn note_error(&self, name: &str, error: Option<&str>) -> Result<(), ProgressError> {
        sqlx::query(self.sql("UPDATE {schema}.jobs SET last_error = $2, updated_at = now() WHERE name = $1"))
            .bind(name)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record why a job is throttled (None: not throttled) and add time spent throttled.
    pub async fn note_throttle(&self, name: &str, reason: Option<&str>, add_seconds: f64) -> Result<(), ProgressError> {
        sqlx::query(self.sql(
            "UPDATE {schema}.jobs SET throttle_reason = $2, throttled_seconds = throttled_seconds + $3 WHERE name = $1",
        ))
        .bind(name)
        .bind(reason)
        .bind(add_seconds)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Operator control from the CLI: pause, resume, cancel. Acts on the table, so it reaches
    /// daemons anywhere. A pause records "pgbackfill pause by <the connected role>".
    pub async fn transition(&self, name: &str, action: Action) -> Result<State, ProgressError> {
        self.transition_as(name, action, PausedVia::Cli, None).await
    }

    /// Pause a job on a daemon's behalf (SIGUSR1), recording `by` ("SIGUSR1 to daemon … at …").
    /// An already paused job keeps its original pauser.
    pub async fn pause_by_signal(&self, name: &str, by: &str) -> Result<State, ProgressError> {
        self.transition_as(name, Action::Pause, PausedVia::Signal, Some(by)).await
    }

    /// Resume a job only if it is paused (SIGUSR2): unlike `pgbackfill resume`, a failed job stays
    /// failed. Returns whether it was resumed.
    pub async fn resume_paused(&self, name: &str) -> Result<bool, ProgressError> {
        let r = sqlx::query(self.sql(&format!("{SET_STATE} AND state = 'paused'")))
            .bind(name)
            .bind(State::Running.as_str())
            .bind(None::<&str>)
            .bind(None::<&str>)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn transition_as(
        &self,
        name: &str,
        action: Action,
        via: PausedVia,
        by: Option<&str>,
    ) -> Result<State, ProgressError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar(self.sql("SELECT state FROM {schema}.jobs WHERE name = $1 FOR UPDATE"))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let state = State::parse(&state.ok_or_else(|| ProgressError::NoSuchJob(name.to_string()))?);
        // Resuming a completed job retries its failed `then` steps.
        if action == Action::Resume && state == State::Completed {
            tx.rollback().await?;
            if self.retry_failed_steps(name).await? > 0 {
                return Ok(state);
            }
            return Err(ProgressError::BadTransition { name: name.to_string(), state, action: action.verb() });
        }
        let to = match (action, state) {
            (Action::Pause, State::Pending | State::Running) => State::Paused,
            (Action::Resume, State::Paused | State::Failed) => State::Running,
            (Action::Cancel, s) if !s.is_terminal() => State::Cancelled,
            (Action::Pause, State::Paused) | (Action::Resume, State::Running) => return Ok(state),
            _ => return Err(ProgressError::BadTransition { name: name.to_string(), state, action: action.verb() }),
        };
        sqlx::query(self.sql(SET_STATE))
            .bind(name)
            .bind(to.as_str())
            .bind((to == State::Paused).then_some(via.as_str()))
            .bind(by)
            .execute(&mut *tx)
            .await?;
        // A job paused before it was planned must still be planned when resumed.
        tx.commit().await?;
        Ok(to)
    }

    /// Forget a job's progress entirely: the next daemon scan starts it over.
    /// Used by `reset` and `forget`; a recorded refusal goes too.
    pub async fn reset(&self, name: &str) -> Result<(), ProgressError> {
        let mut tx = self.pool.begin().await?;
        let jobs =
            sqlx::query(self.sql("DELETE FROM {schema}.jobs WHERE name = $1")).bind(name).execute(&mut *tx).await?;
        let refusals =
            sqlx::query(self.sql("DELETE FROM {schema}.refusals WHERE name = $1")).bind(name).execute(&mut *tx).await?;
        if jobs.rows_affected() + refusals.rows_affected() == 0 {
            return Err(ProgressError::NoSuchJob(name.to_string()));
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn job(&self, name: &str) -> Result<Option<JobRow>, ProgressError> {
        Ok(self.jobs_where(Some(name)).await?.into_iter().next())
    }

    pub async fn jobs(&self) -> Result<Vec<JobRow>, ProgressError> {
        self.jobs_where(None).await
    }

    async fn jobs_where(&self, name: Option<&str>) -> Result<Vec<JobRow>, ProgressError> {
        let rows = sqlx::query(self.sql(
            "SELECT j.name, j.state, j.planned, j.fingerprint, j.estimated_rows, j.leftover_rows, j.last_error, \
             j.throttle_reason, j.throttled_seconds, j.paused_seconds, j.paused_via, j.paused_by, j.created_at, j.started_at, j.finished_at, \
             j.state_changed_at, j.verify_checked, coalesce(sum(r.rows_updated), 0)::int8 AS rows_updated, \
             coalesce(sum(r.rows_scanned), 0)::int8 AS rows_scanned, coalesce(sum(r.batches), 0)::int8 AS batches, \
             coalesce(sum(r.worked_seconds), 0)::float8 AS worked_seconds, coalesce(sum(r.worked_rows), 0)::int8 AS worked_rows, \
             count(r.range_no) FILTER (WHERE NOT r.done AND r.owner IS NOT NULL AND r.lease_until > now()) AS ranges_held, \
             count(r.range_no) AS ranges, count(r.range_no) FILTER (WHERE r.done) AS ranges_done, \
             coalesce(array_agg(DISTINCT r.owner) FILTER (WHERE r.owner IS NOT NULL AND r.lease_until > now()), '{}') AS owners, \
             max(r.batch_size) FILTER (WHERE NOT r.done) AS batch_size, \
             CASE WHEN j.verify_lease_until > now() THEN j.verify_owner END AS verifier, \
             coalesce(j.spec->>'key_sensitive' = 'true', false) AS key_sensitive, \
             f.file AS refused_file, f.reason AS refused_reason, f.owner AS refused_owner, f.refused_at, \
             now() AS now \
             FROM {schema}.jobs j LEFT JOIN {schema}.ranges r ON r.job = j.name \
             LEFT JOIN {schema}.refusals f ON f.name = j.name \
             WHERE $1::text IS NULL OR j.name = $1 \
             GROUP BY j.name, f.name ORDER BY j.name",
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        use sqlx::Row;
        let refusal = |r: &sqlx::postgres::PgRow| -> Result<Option<Refusal>, sqlx::Error> {
            let reason: Option<String> = r.try_get("refused_reason")?;
            Ok(match reason {
                None => None,
                Some(reason) => Some(Refusal {
                    file: r.try_get("refused_file")?,
                    reason,
                    owner: r.try_get("refused_owner")?,
                    at: r.try_get("refused_at")?,
                }),
            })
        };
        let mut jobs = rows
            .iter()
            .map(|r| {
                Ok(JobRow {
                    name: r.try_get("name")?,
                    state: State::parse(r.try_get::<&str, _>("state")?),
                    planned: r.try_get("planned")?,
                    fingerprint: r.try_get("fingerprint")?,
                    estimated_rows: r.try_get("estimated_rows")?,
                    leftover_rows: r.try_get("leftover_rows")?,
                    last_error: r.try_get("last_error")?,
                    throttle_reason: r.try_get("throttle_reason")?,
                    throttled_seconds: r.try_get("throttled_seconds")?,
                    paused_seconds: r.try_get("paused_seconds")?,
                    paused_via: r.try_get::<Option<&str>, _>("paused_via")?.and_then(PausedVia::parse),
                    paused_by: r.try_get("paused_by")?,
                    created_at: r.try_get("created_at")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    state_changed_at: r.try_get("state_changed_at")?,
                    rows_updated: r.try_get("rows_updated")?,
                    rows_scanned: r.try_get("rows_scanned")?,
                    batches: r.try_get("batches")?,
                    worked_seconds: r.try_get("worked_seconds")?,
                    worked_rows: r.try_get("worked_rows")?,
                    ranges: r.try_get("ranges")?,
                    ranges_done: r.try_get("ranges_done")?,
                    ranges_held: r.try_get("ranges_held")?,
                    verify_checked: r.try_get("verify_checked")?,
                    owners: r.try_get("owners")?,
                    verifier: r.try_get("verifier")?,
                    batch_size: r.try_get("batch_size")?,
                    key_sensitive: r.try_get("key_sensitive")?,
                    refused: refusal(r)?,
                    now: r.try_get("now")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // Jobs refused before they were ever registered: no `jobs` row, but `status` must show them.
        let unregistered = sqlx::query(self.sql(
            "SELECT f.name, f.file AS refused_file, f.reason AS refused_reason, f.owner AS refused_owner, \
             f.refused_at, now() AS now FROM {schema}.refusals f \
             WHERE ($1::text IS NULL OR f.name = $1) \
               AND NOT EXISTS (SELECT 1 FROM {schema}.jobs j WHERE j.name = f.name)",
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        for r in &unregistered {
            let now: DateTime<Utc> = r.try_get("now")?;
            let at: DateTime<Utc> = r.try_get("refused_at")?;
            jobs.push(JobRow {
                name: r.try_get("name")?,
                state: State::Pending,
                planned: false,
                fingerprint: String::new(),
                estimated_rows: None,
                leftover_rows: None,
                last_error: None,
                throttle_reason: None,
                throttled_seconds: 0.0,
                paused_seconds: 0.0,
                paused_via: None,
                paused_by: None,
                created_at: at,
                started_at: None,
                finished_at: None,
                state_changed_at: at,
                rows_updated: 0,
                rows_scanned: 0,
                batches: 0,
                worked_seconds: 0.0,
                worked_rows: 0,
                ranges: 0,
                ranges_done: 0,
                ranges_held: 0,
                verify_checked: 0,
                owners: Vec::new(),
                verifier: None,
                batch_size: None,
                key_sensitive: false,
                refused: refusal(r)?,
                now,
            });
        }
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(jobs)
    }

    /// Record that a daemon refuses a job's spec, and why (shown by `status` as `refused`).
    /// The time is kept while the reason stays the same.
    pub async fn refuse(&self, name: &str, file: &str, reason: &str, owner: &str) -> Result<(), ProgressError> {
        sqlx::query(self.sql(
            "INSERT INTO {schema}.refusals AS f (name, file, reason, owner) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET file = EXCLUDED.file, reason = EXCLUDED.reason, owner = EXCLUDED.owner, \
             refused_at = CASE WHEN f.reason = EXCLUDED.reason THEN f.refused_at ELSE now() END",
        ))
        .bind(name)
        .bind(file)
        .bind(reason)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The daemon accepts the job's spec (again): forget an earlier refusal.
    pub async fn clear_refusal(&self, name: &str) -> Result<(), ProgressError> {
        sqlx::query(self.sql("DELETE FROM {schema}.refusals WHERE name = $1")).bind(name).execute(&self.pool).await?;
        Ok(())
    }

    /// Whether the progress schema has been created (by a daemon or `pgbackfill migrate`). Needs no
    /// privilege on the schema: commands other than `run` and `migrate` never create it.
    pub async fn exists(&self) -> Result<bool, ProgressError> {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("{}.jobs", self.schema))
            .fetch_one(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// The schema name as given (unquoted), for messages.
    pub fn schema_name(&self) -> &str {
        &self.schema_raw
    }

    pub async fn ranges(&self, name: &str) -> Result<Vec<RangeRow>, ProgressError> {
        type Row = (
            i32,
            Option<Vec<String>>,
            Vec<String>,
            Option<Vec<String>>,
            bool,
            i64,
            i64,
            i64,
            Option<i64>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(self.sql(
            "SELECT range_no, lower_bound, upper_bound, cursor, done, rows_updated, rows_scanned, batches, batch_size, owner \
             FROM {schema}.ranges WHERE job = $1 ORDER BY range_no",
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RangeRow {
                range_no: r.0,
                lower_bound: r.1,
                upper_bound: r.2,
                cursor: r.3,
                done: r.4,
                rows_updated: r.5,
                rows_scanned: r.6,
                batches: r.7,
                batch_size: r.8,
                owner: r.9,
            })
            .collect())
    }
}

/// A job's state change: $1 name, $2 new state, $3 `paused_via` and $4 `paused_by` (NULL: the
/// connected role, for the CLI) when pausing. Time spent paused counts against the ETA, so it is
/// accumulated when leaving `paused`.
const SET_STATE: &str = "UPDATE {schema}.jobs SET \
     paused_seconds = paused_seconds + CASE WHEN state = 'paused' THEN extract(epoch FROM now() - state_changed_at)::float8 ELSE 0 END, \
     state = $2, state_changed_at = now(), updated_at = now(), \
     last_error = CASE WHEN $2 = 'running' THEN NULL ELSE last_error END, \
     finished_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE NULL END, \
     paused_via = CASE WHEN $2 = 'paused' THEN $3 END, \
     paused_by = CASE WHEN $2 = 'paused' THEN coalesce($4, 'pgbackfill pause by ' || current_user) END \
     WHERE name = $1";

/// Operator actions on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
        }
    }
}
