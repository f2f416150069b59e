//! The `steps` table: what became of each `then` step of a completed job.
//!
//! A step's DDL and its `done` mark commit in one transaction ([`Progress::finish_step`] takes the
//! DDL's transaction), so after a crash a step is either done and recorded or neither: a restart
//! resumes at the next step and never repeats a finished one.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Progress, ProgressError, Tx};

/// pending → (waiting ⇄ running) → done | failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Held (outside the schedule's windows, throttled, job not verified) or between lock retries.
    Waiting,
    /// Its DDL is being sent.
    Running,
    Done,
    /// A permanent error, stored in `detail` with a hint.
    Failed,
}

impl StepState {
    pub const ALL: [StepState; 5] =
        [StepState::Pending, StepState::Waiting, StepState::Running, StepState::Done, StepState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Waiting => "waiting",
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> StepState {
        match s {
            "waiting" => StepState::Waiting,
            "running" => StepState::Running,
            "done" => StepState::Done,
            "failed" => StepState::Failed,
            _ => StepState::Pending,
        }
    }
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a job.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub job: String,
    /// The step's label, e.g. `not_null(c):validate_check`.
    pub step: String,
    pub step_no: i32,
    pub state: StepState,
    /// DDL attempts (lock retries included).
    pub attempts: i32,
    /// Why it waits, the last retry, what it found, or the error and its fix.
    pub detail: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

type Row = (String, String, i32, String, i32, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn row(r: Row) -> StepRow {
    StepRow {
        job: r.0,
        step: r.1,
        step_no: r.2,
        state: StepState::parse(&r.3),
        attempts: r.4,
        detail: r.5,
        started_at: r.6,
        finished_at: r.7,
    }
}

impl Progress {
    /// Record a job's steps (the labels, in order) and return them. Steps already done stay done;
    /// unfinished steps no longer in the list are forgotten.
    pub async fn plan_steps(&self, job: &str, labels: &[String]) -> Result<Vec<StepRow>, ProgressError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            self.sql("DELETE FROM {schema}.steps WHERE job = $1 AND state <> 'done' AND NOT (step = ANY ($2::text[]))"),
        )
        .bind(job)
        .bind(labels)
        .execute(&mut *tx)
        .await?;
        sqlx::query(self.sql(
            "INSERT INTO {schema}.steps (job, step, step_no) \
             SELECT $1, u.step, (u.n - 1)::int4 FROM unnest($2::text[]) WITH ORDINALITY AS u(step, n) \
             ON CONFLICT (job, step) DO UPDATE SET step_no = EXCLUDED.step_no \
             WHERE {schema}.steps.step_no IS DISTINCT FROM EXCLUDED.step_no",
        ))
        .bind(job)
        .bind(labels)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut rows = self.steps(Some(job)).await?;
        rows.retain(|r| labels.contains(&r.step));
        Ok(rows)
    }

    /// Steps of one job, or of all jobs, in order. None before the schema has the steps table (a
    /// `status` of the new version against a schema an older daemon migrated).
    pub async fn steps(&self, job: Option<&str>) -> Result<Vec<StepRow>, ProgressError> {
        let rows: Result<Vec<Row>, sqlx::Error> = sqlx::query_as(self.sql(
            "SELECT job, step, step_no, state, attempts, detail, started_at, finished_at FROM {schema}.steps \
             WHERE $1::text IS NULL OR job = $1 ORDER BY job, step_no",
        ))
        .bind(job)
        .fetch_all(&self.pool)
        .await;
        match rows {
            Ok(rows) => Ok(rows.into_iter().map(row).collect()),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Move a step that is not done to `state` with `detail`; `attempt` counts one more DDL attempt.
    pub async fn note_step(
        &self,
        job: &str,
        step: &str,
        state: StepState,
        detail: Option<&str>,
        attempt: bool,
    ) -> Result<(), ProgressError> {
        sqlx::query(self.sql(
            "UPDATE {schema}.steps SET state = $3, detail = $4, \
             attempts = attempts + CASE WHEN $5 THEN 1 ELSE 0 END, \
             started_at = CASE WHEN $5 THEN coalesce(started_at, now()) ELSE started_at END, \
             finished_at = CASE WHEN $3 = 'failed' THEN now() ELSE NULL END, updated_at = now() \
             WHERE job = $1 AND step = $2 AND state <> 'done'",
        ))
        .bind(job)
        .bind(step)
        .bind(state.as_str())
        .bind(detail)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Mark a step done inside `tx`: the transaction of its DDL, or any when there was nothing to do.
    pub async fn finish_step(
        &self,
        tx: &mut Tx<'_>,
        job: &str,
        step: &str,
        detail: Option<&str>,
    ) -> Result<(), ProgressError> {
        sqlx::query(self.sql(
            "UPDATE {schema}.steps SET state = 'done', detail = $3, started_at = coalesce(started_at, now()), \
             finished_at = now(), updated_at = now() WHERE job = $1 AND step = $2",
        ))
        .bind(job)
        .bind(step)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Failed steps go back to pending (`pgbackfill resume` of a completed job). Returns how many.
    pub async fn retry_failed_steps(&self, job: &str) -> Result<u64, ProgressError> {
        let r = sqlx::query(self.sql(
            "UPDATE {schema}.steps SET state = 'pending', finished_at = NULL, updated_at = now() \
             WHERE job = $1 AND state = 'failed'",
        ))
        .bind(job)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}
