//! `then`: the steps that finish a migration once its backfill is completed and verified.
//!
//! The playbook's last rule is "NOT NULL comes last, and in steps". `not_null: c` runs as four DDL
//! statements, each in its own short transaction:
//! 1. `ADD CONSTRAINT <helper> CHECK (c IS NOT NULL) NOT VALID`: brief ACCESS EXCLUSIVE, no scan;
//! 2. `VALIDATE CONSTRAINT <helper>`: scans, but under SHARE UPDATE EXCLUSIVE (reads and writes go on);
//! 3. `ALTER COLUMN c SET NOT NULL`: brief; PostgreSQL 12+ skips the scan, the valid check proves it;
//! 4. `DROP CONSTRAINT <helper>`.
//!
//! `validate_constraint: x` is step 2 for a constraint the user added `NOT VALID`.
//!
//! Every statement runs with `SET LOCAL lock_timeout` (`then_lock_timeout`). An ALTER TABLE waiting
//! for its lock queues every later query on the table behind it, so a DDL that is not granted its
//! lock quickly gives up and is retried with jittered backoff: no session waits behind it longer
//! than the lock timeout. Retries happen only inside the job's schedule windows and while the
//! throttle lets it write. Before acting, each step looks at `pg_constraint` / `pg_attribute`: a
//! step whose effect is already there is recorded done without DDL. Each step's DDL and its `done`
//! mark commit together (`progress::finish_step`), so a restart resumes at the next step.
//!
//! Only this module builds `then` DDL ([`Step::ddl`], golden-tested below).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Finding, Resolved};
use crate::ident::{MAX_IDENT_BYTES, QualifiedName, parse_ident, quote_ident};
use crate::metrics as m;
use crate::progress::{JobRow, StepRow, StepState};
use crate::retry::Backoff;
use crate::schedule::Schedule;
use crate::spec::{JobSpec, ThenStep};
use crate::throttle::{Decision, Gate, Measurement};
use crate::worker::{Context, Job, sleep_or_cancel};

/// One DDL step (a `not_null` is four of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    AddCheck { column: String, constraint: String },
    ValidateCheck { column: String, constraint: String },
    SetNotNull { column: String, constraint: String },
    DropCheck { column: String, constraint: String },
    Validate { constraint: String },
}

/// The DDL steps of a spec's `then`, in order.
pub fn plan(then: &[ThenStep]) -> Vec<Step> {
    // Validation already refused names that do not parse; the raw text is only a fallback.
    let fold = |name: &str| parse_ident(name).unwrap_or_else(|_| name.to_string());
    let mut steps = Vec::new();
    for step in then {
        match step {
            ThenStep::NotNull(column) => {
                let column = fold(column);
                let constraint = helper_name(&column);
                steps.push(Step::AddCheck { column: column.clone(), constraint: constraint.clone() });
                steps.push(Step::ValidateCheck { column: column.clone(), constraint: constraint.clone() });
                steps.push(Step::SetNotNull { column: column.clone(), constraint: constraint.clone() });
                steps.push(Step::DropCheck { column, constraint });
            }
            ThenStep::ValidateConstraint(name) => steps.push(Step::Validate { constraint: fold(name) }),
        }
    }
    steps
}

/// The helper CHECK constraint's name for a column: `pgbackfill_<column>_not_null`, shortened with
/// a hash of the column name when it would pass PostgreSQL's 63-byte limit.
pub fn helper_name(column: &str) -> String {
    let name = format!("pgbackfill_{column}_not_null");
    if name.len() <= MAX_IDENT_BYTES {
        return name;
    }
    let hash = hex::encode(Sha256::digest(column.as_bytes()));
    let room = MAX_IDENT_BYTES - "pgbackfill__".len() - 8 - "_not_null".len();
    let mut end = room.min(column.len());
    while !column.is_char_boundary(end) {
        end -= 1;
    }
    format!("pgbackfill_{}_{}_not_null", &column[..end], &hash[..8])
}

impl Step {
    /// Stable and readable: the key of the step's row in the progress table and its metric label.
    pub fn label(&self) -> String {
        match self {
            Step::AddCheck { column, .. } => format!("not_null({column}):add_check"),
            Step::ValidateCheck { column, .. } => format!("not_null({column}):validate_check"),
            Step::SetNotNull { column, .. } => format!("not_null({column}):set_not_null"),
            Step::DropCheck { column, .. } => format!("not_null({column}):drop_check"),
            Step::Validate { constraint } => format!("validate_constraint({constraint})"),
        }
    }

    /// The statement, every identifier quoted.
    pub fn ddl(&self, table: &QualifiedName) -> String {
        let t = table.quoted();
        match self {
            Step::AddCheck { column, constraint } => format!(
                "ALTER TABLE {t} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID",
                quote_ident(constraint),
                quote_ident(column)
            ),
            Step::ValidateCheck { constraint, .. } | Step::Validate { constraint } => {
                format!("ALTER TABLE {t} VALIDATE CONSTRAINT {}", quote_ident(constraint))
            }
            Step::SetNotNull { column, .. } => {
                format!("ALTER TABLE {t} ALTER COLUMN {} SET NOT NULL", quote_ident(column))
            }
            Step::DropCheck { constraint, .. } => {
                format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {}", quote_ident(constraint))
            }
        }
    }

    /// VALIDATE scans the table under SHARE UPDATE EXCLUSIVE (reads and writes go on), so it gets
    /// no statement timeout; the other statements are catalog-only and hold their lock briefly.
    fn scans(&self) -> bool {
        matches!(self, Step::ValidateCheck { .. } | Step::Validate { .. })
    }
}

/// What the catalog says before a step acts.
#[derive(Debug, PartialEq, Eq)]
enum Before {
    Act,
    /// Nothing to do, and why.
    Already(String),
    /// Acting would be wrong: the message and its fix.
    Refuse(String),
}

async fn column_not_null(conn: &mut PgConnection, table: &str, column: &str) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT a.attnotnull FROM pg_attribute a \
         WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(table)
    .bind(column)
    .fetch_optional(conn)
    .await
}

/// `(contype, convalidated)` of a constraint on the table.
async fn constraint(conn: &mut PgConnection, table: &str, name: &str) -> Result<Option<(String, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.contype::text, c.convalidated FROM pg_constraint c WHERE c.conrelid = to_regclass($1) AND c.conname = $2",
    )
    .bind(table)
    .bind(name)
    .fetch_optional(conn)
    .await
}

async fn before(conn: &mut PgConnection, table: &QualifiedName, step: &Step) -> Result<Before, sqlx::Error> {
    let t = table.quoted();
    let column_state = |c: Option<bool>, column: &str| match c {
        None => Some(Before::Refuse(format!("column {} does not exist in table {t}", quote_ident(column)))),
        Some(true) => Some(Before::Already(format!("{} is already NOT NULL", quote_ident(column)))),
        Some(false) => None,
    };
    Ok(match step {
        Step::AddCheck { column, constraint: name } => {
            if let Some(b) = column_state(column_not_null(conn, &t, column).await?, column) {
                return Ok(b);
            }
            match constraint(conn, &t, name).await? {
                Some(_) => Before::Already(format!("constraint {} already exists", quote_ident(name))),
                None => Before::Act,
            }
        }
        Step::ValidateCheck { column, constraint: name } => {
            if let Some(b) = column_state(column_not_null(conn, &t, column).await?, column) {
                return Ok(b);
            }
            match constraint(conn, &t, name).await? {
                Some((_, true)) => Before::Already(format!("constraint {} is already valid", quote_ident(name))),
                Some(_) => Before::Act,
                None => Before::Refuse(format!(
                    "the helper constraint {} is gone from {t} (dropped by someone else?); add it back with `{}` \
                     and run `pgbackfill resume`",
                    quote_ident(name),
                    Step::AddCheck { column: column.clone(), constraint: name.clone() }.ddl(table)
                )),
            }
        }
        Step::SetNotNull { column, constraint: name } => {
            if let Some(b) = column_state(column_not_null(conn, &t, column).await?, column) {
                return Ok(b);
            }
            match constraint(conn, &t, name).await? {
                Some((_, true)) => Before::Act,
                _ => Before::Refuse(format!(
                    "refusing SET NOT NULL on {} without the valid check {}: it would scan the whole table under \
                     an ACCESS EXCLUSIVE lock; add and validate it (`pgbackfill resume` after adding it)",
                    quote_ident(column),
                    quote_ident(name)
                )),
            }
        }
        Step::DropCheck { constraint: name, .. } => match constraint(conn, &t, name).await? {
            Some(_) => Before::Act,
            None => Before::Already(format!("constraint {} is already gone", quote_ident(name))),
        },
        Step::Validate { constraint: name } => match constraint(conn, &t, name).await? {
            None => Before::Refuse(format!(
                "constraint {} does not exist on table {t}; check its name (`\\d {t}` in psql lists them)",
                quote_ident(name)
            )),
            Some((_, true)) => Before::Already(format!("constraint {} is already valid", quote_ident(name))),
            Some(_) => Before::Act,
        },
    })
}

/// The fix for a failed step, by SQLSTATE.
fn hint(code: &str, step: &Step, table: &QualifiedName, job: &str) -> String {
    let t = table.quoted();
    let resume = format!("then `pgbackfill resume {job}` retries the step");
    match code {
        "42501" => format!(
            "ALTER TABLE needs the table's owner: `ALTER TABLE {t} OWNER TO <this role>;` or `GRANT <owner of {t}> TO <this role>;`, {resume}"
        ),
        "23514" | "23502" => match step {
            Step::ValidateCheck { column, .. } | Step::SetNotNull { column, .. } => format!(
                "rows with {c} IS NULL exist (written after the backfill? the application must write {c}): \
                 find them with `SELECT * FROM {t} WHERE {c} IS NULL`, fix them, {resume}; until then the NOT VALID \
                 check rejects new NULLs",
                c = quote_ident(column)
            ),
            _ => format!("rows violate the constraint: fix them, {resume}"),
        },
        "57014" => format!("the statement ran past timeouts.statement: raise it, {resume}"),
        _ => format!("fix the cause, {resume}"),
    }
}

/// The outcome of one attempt at a step.
enum Attempt {
    /// Done now, or found done (with what was found).
    Done(Option<String>),
    /// The lock was not granted (or a deadlock): try again later.
    Retry(String),
    /// The connection is in trouble: give up this run, the next scan starts another.
    Lost(String),
    /// A permanent error, with its fix.
    Failed(String),
}

async fn attempt(ctx: &Context, conn: &mut PgConnection, job: &Job, step: &Step, tries: u32) -> Attempt {
    let table = &job.resolved.target.table;
    let (name, label) = (job.name(), step.label());
    let lost = |e: sqlx::Error| Attempt::Lost(format!("database error: {e}"));
    match before(conn, table, step).await {
        Err(e) => return lost(e),
        Ok(Before::Refuse(message)) => return Attempt::Failed(message),
        Ok(Before::Already(why)) => {
            let recorded: Result<(), sqlx::Error> = async {
                let mut tx = conn.begin().await?;
                ctx.progress.finish_step(&mut tx, name, &label, Some(&why)).await.map_err(into_sqlx)?;
                tx.commit().await
            }
            .await;
            return recorded.map_or_else(lost, |()| Attempt::Done(Some(why)));
        }
        Ok(Before::Act) => {}
    }
    let ddl = step.ddl(table);
    let _ = ctx.progress.note_step(name, &step.label(), StepState::Running, Some(&ddl), true).await;
    publish(name, &step.label(), StepState::Running);
    let lock_timeout = job.spec.then_lock_timeout;
    let statement_timeout = if step.scans() { Duration::ZERO } else { job.spec.timeouts.statement };
    let result: Result<(), sqlx::Error> = async {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
            lock_timeout.as_millis().max(1),
            statement_timeout.as_millis()
        )))
        .execute(&mut *tx)
        .await?;
        tracing::info!(job = name, step = %step.label(), ddl = %ddl, "running a `then` step");
        sqlx::raw_sql(AssertSqlSafe(ddl.clone())).execute(&mut *tx).await?;
        ctx.progress.finish_step(&mut tx, name, &step.label(), None).await.map_err(into_sqlx)?;
        tx.commit().await
    }
    .await;
    let Err(e) = result else { return Attempt::Done(None) };
    let code = match &e {
        sqlx::Error::Database(db) => db.code().map(|c| c.to_string()).unwrap_or_default(),
        _ => String::new(),
    };
    match code.as_str() {
        "55P03" => Attempt::Retry(format!(
            "attempt {tries}: lock on {} not granted within {} (a session holds a conflicting lock)",
            table.quoted(),
            humantime::format_duration(lock_timeout)
        )),
        "40P01" | "40001" => Attempt::Retry(format!("attempt {tries}: {e}")),
        _ if crate::retry::classify(&e) == crate::retry::Disposition::Retry => lost(e),
        _ => {
            let message = match &e {
                sqlx::Error::Database(db) => db.message().to_string(),
                other => other.to_string(),
            };
            Attempt::Failed(format!("{message} (fix: {})", hint(&code, step, table, name)))
        }
    }
}

fn into_sqlx(e: crate::progress::ProgressError) -> sqlx::Error {
    match e {
        crate::progress::ProgressError::Db(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// `pgbackfill_step_state{job, step, state}`: 1 for the step's state, 0 for the others.
pub fn publish(job: &str, step: &str, state: StepState) {
    m::set_step_state(job, step, state.as_str());
}

/// Declare a loaded job's step series (all pending until the progress table says otherwise).
pub fn declare(spec: &JobSpec) {
    for step in plan(&spec.then) {
        publish(&spec.name, &step.label(), StepState::Pending);
    }
}

/// Why the job's steps may not run at `now` (outside the schedule's windows, or the throttle
/// holds); `None`: go.
fn held(
    schedule: Option<&Schedule>,
    gate: &mut Gate,
    measurement: &Measurement,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    if let Some(closed) = schedule.and_then(|s| s.closed(now)) {
        return Some(format!("held: {}", closed.reason));
    }
    match gate.decide(measurement) {
        Decision::Go { .. } => None,
        Decision::Wait { reason, .. } => Some(format!("held by the throttle: {reason}")),
    }
}

/// Advisory lock key space for `then` runs (one daemon at a time per job): "pgbf".
const LOCK_SPACE: i32 = 0x7067_6266;

/// Run a job's remaining steps, in order, on a connection of their own that holds the job's
/// advisory lock (so two daemons never run them at once, and a dead daemon's lock goes with its
/// connection).
async fn run(ctx: Context, job: Arc<Job>, cancel: CancellationToken) {
    let name = job.name().to_string();
    let mut conn = match ctx.pool.acquire().await {
        Ok(c) => c.detach(),
        Err(e) => {
            tracing::warn!(job = %name, error = %e, "cannot run `then` steps yet; will retry");
            return;
        }
    };
    let locked: Result<bool, sqlx::Error> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
        .bind(LOCK_SPACE)
        .bind(&name)
        .fetch_one(&mut conn)
        .await;
    if locked.is_ok_and(|l| l) {
        run_locked(&ctx, &job, &mut conn, &cancel).await;
    }
    let _ = conn.close().await;
}

async fn run_locked(ctx: &Context, job: &Job, conn: &mut PgConnection, cancel: &CancellationToken) {
    let name = job.name();
    let mut gate = Gate::new(job.spec.throttle.clone());
    for step in plan(&job.spec.then) {
        let label = step.label();
        // Read again under the lock: another daemon may have finished it meanwhile.
        let rows = match ctx.progress.steps(Some(name)).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(job = name, error = %e, "progress table unavailable; will retry the steps");
                return;
            }
        };
        match rows.iter().find(|r| r.step == label).map(|r| r.state) {
            Some(StepState::Done) => continue,
            Some(StepState::Failed) | None => return,
            Some(_) => {}
        }
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut noted: Option<(String, Instant)> = None;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let measurement = ctx.measurements.borrow().clone();
            if let Some(why) = held(job.schedule.as_ref(), &mut gate, &measurement, chrono::Utc::now()) {
                // The reason's numbers change every poll: write on a new kind of hold or every 5 s.
                let kind = why.split(':').next().unwrap_or("").to_string();
                let stale = noted.as_ref().is_none_or(|(k, at)| *k != kind || at.elapsed() >= Duration::from_secs(5));
                if stale {
                    let _ = ctx.progress.note_step(name, &label, StepState::Waiting, Some(&why), false).await;
                    publish(name, &label, StepState::Waiting);
                    noted = Some((kind, Instant::now()));
                }
                if sleep_or_cancel(Duration::from_secs(1), cancel).await {
                    return;
                }
                continue;
            }
            noted = None;
            match attempt(ctx, conn, job, &step, backoff.attempts() + 1).await {
                Attempt::Done(found) => {
                    match found {
                        Some(why) => {
                            tracing::info!(job = name, step = %label, found = %why, "`then` step already done")
                        }
                        None => tracing::info!(job = name, step = %label, "`then` step done"),
                    }
                    publish(name, &label, StepState::Done);
                    break;
                }
                Attempt::Retry(why) => {
                    let delay = backoff.next_delay();
                    let detail = format!("{why}; retrying in {}", humantime::format_duration(round_ms(delay)));
                    tracing::warn!(job = name, step = %label, "{detail}");
                    let _ = ctx.progress.note_step(name, &label, StepState::Waiting, Some(&detail), false).await;
                    publish(name, &label, StepState::Waiting);
                    if sleep_or_cancel(delay, cancel).await {
                        return;
                    }
                }
                Attempt::Lost(why) => {
                    tracing::warn!(job = name, step = %label, error = %why, "`then` step interrupted; will retry");
                    let detail = format!("interrupted, will retry: {why}");
                    let _ = ctx.progress.note_step(name, &label, StepState::Waiting, Some(&detail), false).await;
                    publish(name, &label, StepState::Waiting);
                    return;
                }
                Attempt::Failed(message) => {
                    tracing::error!(job = name, step = %label, error = %message, "`then` step failed");
                    if let Err(e) = ctx.progress.note_step(name, &label, StepState::Failed, Some(&message), false).await
                    {
                        tracing::error!(job = name, error = %e, "could not record the step's failure");
                    }
                    publish(name, &label, StepState::Failed);
                    return;
                }
            }
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// The supervisor's handle on `then` steps: starts a job's steps once it is completed and verified,
/// one run per job at a time.
#[derive(Default)]
pub struct Runner {
    running: Arc<Mutex<HashSet<String>>>,
    /// Jobs whose steps (these labels) are all done, or blocked for good: not looked at again.
    settled: HashMap<String, Vec<String>>,
}

impl Runner {
    /// For a completed job: start its remaining steps. True while steps are outstanding (running,
    /// waiting or pending); false when there are none, all are done, one failed, or the job is not
    /// verified (rows still match `where`: the steps never start).
    pub async fn poll(&mut self, ctx: &Context, job: &Arc<Job>, row: &JobRow, cancel: &CancellationToken) -> bool {
        if job.spec.then.is_empty() {
            return false;
        }
        let name = job.name().to_string();
        let labels: Vec<String> = plan(&job.spec.then).iter().map(Step::label).collect();
        if self.settled.get(&name) == Some(&labels) {
            return false;
        }
        if self.running.lock().unwrap_or_else(|p| p.into_inner()).contains(&name) {
            return true;
        }
        let rows = match ctx.progress.steps(Some(&name)).await {
            Ok(rows) if labels.iter().all(|l| rows.iter().any(|r| r.step == *l)) => {
                rows.into_iter().filter(|r| labels.contains(&r.step)).collect::<Vec<_>>()
            }
            _ => match ctx.progress.plan_steps(&name, &labels).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "cannot record the `then` steps yet; will retry");
                    return true;
                }
            },
        };
        for r in &rows {
            publish(&name, &r.step, r.state);
        }
        if let Some(n) = row.leftover_rows.filter(|n| *n > 0) {
            let detail = format!(
                "not started: the job completed with {n} rows still matching `where`, and the steps run only \
                 after a verified backfill; make the application write the new values, then `pgbackfill reset {name}`"
            );
            if let Some(first) = rows.iter().find(|r| r.state != StepState::Done) {
                let _ = ctx.progress.note_step(&name, &first.step, StepState::Waiting, Some(&detail), false).await;
                publish(&name, &first.step, StepState::Waiting);
            }
            tracing::warn!(job = %name, "{detail}");
            self.settled.insert(name, labels);
            return false;
        }
        if rows.iter().all(|r| r.state == StepState::Done) {
            self.settled.insert(name, labels);
            return false;
        }
        if rows.iter().any(|r| r.state == StepState::Failed) {
            return false;
        }
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone());
        let (ctx, job, cancel, running) = (ctx.clone(), job.clone(), cancel.clone(), self.running.clone());
        tokio::spawn(async move {
            run(ctx, job, cancel).await;
            running.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        });
        true
    }
}

/// Jobs with a failed step, for `--exit-when-done`'s verdict.
pub fn failed(rows: &[StepRow]) -> Vec<String> {
    let mut jobs: Vec<String> = rows
        .iter()
        .filter(|r| r.state == StepState::Failed)
        .map(|r| format!("{} (then step {} failed)", r.job, r.step))
        .collect();
    jobs.dedup();
    jobs
}

/// `check`: can the `then` steps run on this database? The columns exist and are nullable today,
/// the constraints exist and are not yet valid, and the role owns the table (ALTER TABLE needs it).
pub async fn check_catalog(
    conn: &mut PgConnection,
    spec: &JobSpec,
    resolved: &Resolved,
) -> Result<Vec<Finding>, sqlx::Error> {
    let mut findings = Vec::new();
    if spec.then.is_empty() {
        return Ok(findings);
    }

    let t = resolved.target.table.quoted();
    let (owns, owner, me): (bool, String, String) = sqlx::query_as(
        "SELECT pg_has_role(current_user, c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text, current_user::text \
         FROM pg_class c WHERE c.oid = to_regclass($1)",
    )
    .bind(&t)
    .fetch_one(&mut *conn)
    .await?;
    if !owns {
        findings.push(Finding {
            field: "then".into(),
            message: format!(
                "role {me} does not own table {t} (its owner is {owner}), and ALTER TABLE, which every `then` step \
                 runs, needs the owner"
            ),
            hint: format!(
                "`ALTER TABLE {t} OWNER TO {};` or `GRANT {} TO {};`, or remove `then` and run the steps as the owner",
                quote_ident(&me),
                quote_ident(&owner),
                quote_ident(&me)
            ),
        });
    }
    for (i, step) in spec.then.iter().enumerate() {
        let field = format!("then[{i}]");
        match step {
            ThenStep::NotNull(column) => {
                let column = parse_ident(column).unwrap_or_else(|_| column.clone());
                match column_not_null(conn, &t, &column).await? {
                    None => findings.push(Finding {
                        field,
                        message: format!("column {} does not exist in table {t}", quote_ident(&column)),
                        hint: "check the spelling; quote mixed-case names (`not_null: '\"MyColumn\"'`)".into(),
                    }),
                    Some(true) => findings.push(Finding {
                        field,
                        message: format!("column {} is already NOT NULL", quote_ident(&column)),
                        hint: "remove this step".into(),
                    }),
                    Some(false) => {}
                }
            }
            ThenStep::ValidateConstraint(name) => {
                let name = parse_ident(name).unwrap_or_else(|_| name.clone());
                match constraint(conn, &t, &name).await? {
                    None => findings.push(Finding {
                        field,
                        message: format!("constraint {} does not exist on table {t}", quote_ident(&name)),
                        hint: format!(
                            "check the name (`\\d {t}` in psql lists them), or add it first: `ALTER TABLE {t} ADD \
                             CONSTRAINT {} CHECK (…) NOT VALID`",
                            quote_ident(&name)
                        ),
                    }),
                    Some((kind, _)) if kind != "c" && kind != "f" => findings.push(Finding {
                        field,
                        message: format!(
                            "constraint {} is not a CHECK or FOREIGN KEY constraint, the kinds that can be NOT VALID",
                            quote_ident(&name)
                        ),
                        hint: "remove this step".into(),
                    }),
                    Some((_, true)) => findings.push(Finding {
                        field,
                        message: format!("constraint {} is already valid", quote_ident(&name)),
                        hint: "remove this step".into(),
                    }),
                    Some(_) => {}
                }
            }
        }
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> QualifiedName {
        QualifiedName { schema: Some("public".into()), name: "Orders".into() }
    }

    #[test]
    fn not_null_is_four_pinned_statements() {
        let steps = plan(&[ThenStep::NotNull("fulfillment_channel".into())]);
        let ddl: Vec<String> = steps.iter().map(|s| s.ddl(&table())).collect();
        assert_eq!(
            ddl,
            [
                r#"ALTER TABLE "public"."Orders" ADD CONSTRAINT "pgbackfill_fulfillment_channel_not_null" CHECK ("fulfillment_channel" IS NOT NULL) NOT VALID"#,
                r#"ALTER TABLE "public"."Orders" VALIDATE CONSTRAINT "pgbackfill_fulfillment_channel_not_null""#,
                r#"ALTER TABLE "public"."Orders" ALTER COLUMN "fulfillment_channel" SET NOT NULL"#,
                r#"ALTER TABLE "public"."Orders" DROP CONSTRAINT IF EXISTS "pgbackfill_fulfillment_channel_not_null""#,
            ]
        );
        let labels: Vec<String> = steps.iter().map(Step::label).collect();
        assert_eq!(
            labels,
            [
                "not_null(fulfillment_channel):add_check",
                "not_null(fulfillment_channel):validate_check",
                "not_null(fulfillment_channel):set_not_null",
                "not_null(fulfillment_channel):drop_check",
            ]
        );
        assert!(steps[1].scans() && !steps[0].scans() && !steps[2].scans());
    }

    #[test]
    fn validate_constraint_and_identifiers_are_quoted() {
        let steps =
            plan(&[ThenStep::ValidateConstraint("\"Total>0\"".into()), ThenStep::NotNull("\"We\"\"ird\"".into())]);
        assert_eq!(steps[0].ddl(&table()), r#"ALTER TABLE "public"."Orders" VALIDATE CONSTRAINT "Total>0""#);
        assert_eq!(steps[0].label(), "validate_constraint(Total>0)");
        assert_eq!(
            steps[1].ddl(&table()),
            r#"ALTER TABLE "public"."Orders" ADD CONSTRAINT "pgbackfill_We""ird_not_null" CHECK ("We""ird" IS NOT NULL) NOT VALID"#
        );
        // Unquoted names fold to lower case, as in psql.
        assert_eq!(plan(&[ThenStep::NotNull("Channel".into())])[0].label(), "not_null(channel):add_check");
    }

    #[test]
    fn steps_wait_outside_the_windows_and_while_the_throttle_holds() {
        use crate::spec::{ScheduleSpec, ThrottleSpec};
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc);
        let schedule =
            Schedule::from_spec(&ScheduleSpec { timezone: "UTC".into(), windows: vec!["01:00-06:00".into()] });
        let mut gate = Gate::new(ThrottleSpec::default());
        let caught_up = Measurement { error: None, ..Measurement::unknown() };
        let unknown = Measurement::unknown();

        let outside = held(Some(&schedule), &mut gate, &caught_up, at("2026-12-02T07:00:00Z")).unwrap();
        assert!(outside.starts_with("held: outside its schedule windows") && outside.contains("2026-12-03 01:00"));
        let throttled = held(Some(&schedule), &mut gate, &unknown, at("2026-12-02T02:00:00Z")).unwrap();
        assert!(throttled.starts_with("held by the throttle: lag unknown"), "{throttled}");
        assert_eq!(held(Some(&schedule), &mut gate, &caught_up, at("2026-12-02T02:00:00Z")), None);
        assert_eq!(held(None, &mut Gate::new(ThrottleSpec::default()), &caught_up, at("2026-12-02T07:00:00Z")), None);
    }

    #[test]
    fn helper_names_stay_within_63_bytes() {
        assert_eq!(helper_name("c"), "pgbackfill_c_not_null");
        let long = "x".repeat(60);
        let name = helper_name(&long);
        assert!(name.len() <= MAX_IDENT_BYTES, "{name}");
        assert!(name.starts_with("pgbackfill_xxx") && name.ends_with("_not_null"), "{name}");
        assert_ne!(helper_name(&format!("{long}a")), helper_name(&format!("{long}b")));
        let multibyte = "é".repeat(40);
        assert!(helper_name(&multibyte).len() <= MAX_IDENT_BYTES);
    }
}
