//! The supervisor: loads the jobs directory, registers jobs in the progress table, plans their key
//! ranges, claims ranges through PostgreSQL and runs a worker per claimed range.
//!
//! Any number of daemons may run against one database: a range is worked by whoever holds its lease
//! (`progress::claim`), leases are renewed every second by one task, and a daemon that dies stops
//! renewing so another takes over once the lease expires. Every batch re-proves the claim under the
//! range row's lock, so even a daemon that lost its lease without noticing cannot commit.
//!
//! The supervisor rescans the directory every scan interval: new files start, a tuning change
//! restarts the job's workers with the new settings, a broken file is reported (once per change)
//! and skipped without touching any other job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::KeyValue;
use crate::catalog;
use crate::metrics::{DaemonMetrics, JobMetrics};
use crate::progress::{Claim, JobRow, Progress, ProgressError, State};
use crate::spec::{self, JobSpec};
use crate::status::JobState;
use crate::worker::{self, Context, Job, RangeOutcome};

/// Daemon settings that are not per job.
#[derive(Debug, Clone)]
pub struct Config {
    pub jobs_dir: PathBuf,
    /// Jobs this daemon runs at once (a job with several ranges counts once).
    pub max_jobs: usize,
    /// Range workers this daemon runs at once, over all jobs. Each holds a connection during a
    /// batch, so this stays below the pool size (the throttle, renewer and scans need some too).
    pub max_workers: usize,
    /// Unique per daemon process: shows in `status` as the holder of a range.
    pub owner: String,
    pub lease: Duration,
    pub scan_interval: Duration,
    pub exit_when_done: bool,
    /// Stamped every scan and after each job considered, for `/healthz` (detached by default).
    pub heartbeat: crate::health::Heartbeat,
}

/// How `run` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown requested.
    Shutdown,
    /// `exit_when_done`: every job completed.
    AllCompleted,
    /// `exit_when_done`: every job ended, some not cleanly completed (failed, cancelled, invalid
    /// spec, or completed with rows still matching `where`).
    NotAllCompleted { failed: Vec<String> },
}

struct Active {
    job: Arc<Job>,
    workers: usize,
    cancel: CancellationToken,
}

struct Supervisor {
    cfg: Config,
    ctx: Context,
    cancel: CancellationToken,
    active: HashMap<String, Active>,
    /// Resolutions by job name, reused while the spec is unchanged.
    resolved: HashMap<String, Arc<Job>>,
    tasks: JoinSet<(String, RangeOutcome)>,
    /// The claim of every live worker task, by task id: the leases the renewer keeps alive. A task
    /// that ends, even by panicking, leaves this map, so its range's lease runs out.
    live: Arc<Mutex<HashMap<tokio::task::Id, Claim>>>,
    /// Jobs whose verification is running.
    finalizing: Arc<Mutex<HashSet<String>>>,
    /// Signalled when a verification ends, so the loop looks at once instead of on its next scan
    /// tick (with `--exit-when-done`, that tick was most of the time from the last batch to exit).
    finalized: Arc<tokio::sync::Notify>,
    reported: HashSet<String>,
    /// Jobs whose metric series this process has declared (see [`JobMetrics::declare`]).
    declared: HashSet<String>,
    /// `then` steps of completed jobs.
    steps: crate::steps::Runner,
    /// Refusals recorded in the progress table by this daemon, by job name: (reason, spec file).
    refused: HashMap<String, (String, String)>,
    /// Jobs accepted since start-up: any earlier refusal of theirs has been cleared.
    accepted: HashSet<String>,
}

/// How long shutdown waits for batches in flight before abandoning them. Abandoning is safe: a
/// batch and its cursor commit together or not at all.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Run until cancelled (or, with `exit_when_done`, until every job has ended).
pub async fn run(
    cfg: Config,
    pool: PgPool,
    progress: Progress,
    measurements: crate::throttle::Measurements,
    cancel: CancellationToken,
) -> Outcome {
    let ctx = Context { pool, progress, measurements };
    let live = Arc::new(Mutex::new(HashMap::new()));
    let renewer = tokio::spawn(renew_leases(ctx.progress.clone(), live.clone(), cfg.lease, cancel.clone()));
    let mut sup = Supervisor {
        cfg,
        ctx,
        cancel: cancel.clone(),
        active: HashMap::new(),
        resolved: HashMap::new(),
        tasks: JoinSet::new(),
        live,
        finalizing: Arc::new(Mutex::new(HashSet::new())),
        finalized: Arc::new(tokio::sync::Notify::new()),
        reported: HashSet::new(),
        declared: HashSet::new(),
        steps: Default::default(),
        refused: HashMap::new(),
        accepted: HashSet::new(),
    };
    let outcome = sup.run().await;
    sup.cfg.heartbeat.finished();
    // Drain: workers finish their batch in flight and release their ranges, within a bound.
    cancel.cancel();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(res) = sup.tasks.join_next().await {
            if let Err(e) = res {
                tracing::error!(error = %e, "worker task panicked");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            after_s = DRAIN_TIMEOUT.as_secs(),
            "batches still in flight at shutdown: abandoning them (they roll back; their leases expire)"
        );
        sup.tasks.abort_all();
    }
    DaemonMetrics::get().active_workers.set(0.0);
    let _ = renewer.await;
    outcome
}

impl Supervisor {
    async fn run(&mut self) -> Outcome {
        loop {
            self.cfg.heartbeat.beat();
            let done = self.scan().await;
            if let Some(outcome) = done
                && self.tasks.is_empty()
            {
                return outcome;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Outcome::Shutdown,
                _ = tokio::time::sleep(self.cfg.scan_interval) => {}
                _ = self.finalized.notified() => {}
                Some(res) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    // A finished range may free a slot or complete a job: rescan now.
                    match res {
                        Ok((id, (name, outcome))) => {
                            self.forget(id);
                            self.worker_finished(&name, outcome).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "worker task panicked");
                            if let Some(claim) = self.forget(e.id()) {
                                self.worker_finished(&claim.job, RangeOutcome::Stopped).await;
                            }
                        }
                    }
                }
            }
        }
    }

    fn forget(&mut self, id: tokio::task::Id) -> Option<Claim> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&id)
    }

    async fn worker_finished(&mut self, name: &str, outcome: RangeOutcome) {
        if let Some(a) = self.active.get_mut(name) {
            a.workers = a.workers.saturating_sub(1);
            if a.workers == 0 {
                self.active.remove(name);
            }
        }
        self.publish_workers();
        if outcome == RangeOutcome::Done {
            let job = self.resolved.get(name).cloned();
            if let Some(job) = job {
                self.spawn_finalize(job);
            }
        }
    }

    /// One pass over the jobs directory. Returns an outcome when `exit_when_done` and all have ended.
    async fn scan(&mut self) -> Option<Outcome> {
        let report = spec::load_paths(std::slice::from_ref(&self.cfg.jobs_dir));
        DaemonMetrics::get().spec_errors.set(report.problems.len() as f64);
        let mut invalid: Vec<String> = Vec::new();
        for p in &report.problems {
            self.report_once(format!("invalid spec: {p}"));
            invalid.push(p.file.display().to_string());
        }
        let mut ended: BTreeMap<String, State> = BTreeMap::new();
        let mut open = 0usize;
        let mut refused = 0usize;
        for loaded in report.jobs {
            let name = loaded.spec.name.clone();
            let considered = self.consider(loaded.spec).await;
            self.cfg.heartbeat.beat();
            match considered {
                Ok(Some(state)) if state.is_terminal() => {
                    ended.insert(name, state);
                }
                Ok(_) => open += 1,
                Err(message) => {
                    self.report_once(format!("job `{name}` ({}): refused: {message}", loaded.path.display()));
                    self.record_refusal(&name, &loaded.path.display().to_string(), &message).await;
                    refused += 1;
                    invalid.push(name);
                }
            }
        }
        DaemonMetrics::get().jobs_refused.set(refused as f64);
        // A refused job whose spec file was removed is no longer wanted: drop the refusal this daemon
        // recorded, so `status` stops showing it (a file that merely fails to parse keeps it).
        let gone: Vec<String> = self
            .refused
            .iter()
            .filter(|(_, (_, file))| !std::path::Path::new(file).exists())
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            match self.ctx.progress.clear_refusal(&name).await {
                Ok(()) => {
                    self.refused.remove(&name);
                    tracing::info!(job = %name, "spec file removed: refusal cleared");
                }
                Err(e) => tracing::warn!(job = %name, error = %e, "could not clear a refusal; will retry"),
            }
        }
        // Done when nothing is left that could still make progress.
        if !self.cfg.exit_when_done || self.cancel.is_cancelled() || open > 0 || !self.tasks.is_empty() {
            return None;
        }
        let mut failed: Vec<String> =
            ended.iter().filter(|(_, s)| **s != State::Completed).map(|(n, s)| format!("{n} ({s})")).collect();
        // Completed but verification found rows still matching `where`: a pipeline that goes on to the
        // contract step (SET NOT NULL, drop the old column) must not take that as success.
        if let Ok(rows) = self.ctx.progress.jobs().await {
            for r in rows {
                if ended.get(&r.name) == Some(&State::Completed)
                    && let Some(n) = r.leftover_rows.filter(|n| *n > 0)
                {
                    failed.push(format!("{} (completed, {n} rows still match where)", r.name));
                }
            }
        }
        if let Ok(steps) = self.ctx.progress.steps(None).await {
            failed.extend(crate::steps::failed(&steps));
        }
        failed.extend(invalid.into_iter().map(|n| format!("{n} (invalid)")));
        failed.sort();
        failed.dedup();
        Some(if failed.is_empty() { Outcome::AllCompleted } else { Outcome::NotAllCompleted { failed } })
    }

    fn publish_workers(&self) {
        DaemonMetrics::get().active_workers.set(self.active.values().map(|a| a.workers).sum::<usize>() as f64);
    }

    /// Store a refusal for `status` (once per reason), and show it in `pgbackfill_job_state`.
    async fn record_refusal(&mut self, name: &str, file: &str, reason: &str) {
        publish_state(name, JobState::Refused);
        self.accepted.remove(name);
        if self.refused.get(name).map(|(r, _)| r.as_str()) == Some(reason) {
            return;
        }
        match self.ctx.progress.refuse(name, file, reason, &self.cfg.owner).await {
            Ok(()) => {
                self.refused.insert(name.to_string(), (reason.to_string(), file.to_string()));
            }
            Err(e) => tracing::warn!(job = %name, error = %e, "could not record the refusal; will retry"),
        }
    }

    /// The job's spec is accepted: clear a refusal recorded earlier (by any daemon), once.
    async fn accept(&mut self, name: &str) {
        if self.accepted.contains(name) {
            return;
        }
        match self.ctx.progress.clear_refusal(name).await {
            Ok(()) => {
                self.accepted.insert(name.to_string());
                self.refused.remove(name);
            }
            Err(e) => tracing::warn!(job = %name, error = %e, "could not clear an earlier refusal; will retry"),
        }
    }

    fn report_once(&mut self, message: String) {
        if self.reported.insert(message.clone()) {
            tracing::error!("{message}");
        }
    }

    /// Bring one job forward: resolve, register, plan, claim. Returns its state.
    async fn consider(&mut self, spec: JobSpec) -> Result<Option<State>, String> {
        let name = spec.name.clone();
        // Every series of the job exists from the moment it is loaded, before any batch.
        if self.declared.insert(name.clone()) {
            JobMetrics::declare(&name, spec.batch.size);
            crate::steps::declare(&spec);
        }
        crate::metrics::set_job_max_lag(&name, spec.throttle.max_lag);
        // A tuning change restarts the job's workers so they pick up the new settings.
        if let Some(active) = self.active.get(&name) {
            if active.job.spec == spec {
                // Unchanged and running here: maybe claim more ranges below.
            } else {
                tracing::info!(job = %name, "spec changed: restarting the job's workers with the new settings");
                active.cancel.cancel();
                self.resolved.remove(&name);
                return Ok(None);
            }
        }
        let job = match self.resolved.get(&name) {
            Some(job) if job.spec == spec => job.clone(),
            _ => match self.resolve(spec).await {
                Ok(Ok(job)) => {
                    let job = Arc::new(job);
                    self.resolved.insert(name.clone(), job.clone());
                    job
                }
                Ok(Err(invalid)) => return Err(invalid),
                Err(transient) => {
                    // The database being briefly unreachable is not a broken spec.
                    tracing::warn!(job = %name, error = %transient, "cannot resolve the job yet; will retry");
                    return Ok(None);
                }
            },
        };
        let row = match self
            .ctx
            .progress
            .register(
                &name,
                &job.resolved.fingerprint,
                &job.resolved.meaning,
                &spec_json(&job.spec),
                job.resolved.estimated_rows,
            )
            .await
        {
            Ok(row) => {
                publish_job(&job, &row);
                row
            }
            Err(e @ ProgressError::MeaningChanged { .. }) => {
                self.resolved.remove(&name);
                return Err(e.to_string());
            }
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "progress table unavailable; will retry");
                return Ok(None);
            }
        };
        self.accept(&name).await;
        if row.state.is_terminal() || row.state == State::Paused {
            publish_state(&name, JobState::of(&row));
            // Paused, cancelled or failed from elsewhere: stop our workers now, even those waiting
            // on the throttle or sleeping between batches, which would only notice at their next batch.
            if let Some(active) = self.active.get(&name) {
                active.cancel.cancel();
            }
            // A completed job with `then` steps still to run has not ended yet.
            if row.state == State::Completed && self.steps.poll(&self.ctx, &job, &row, &self.cancel).await {
                return Ok(None);
            }
            return Ok(Some(row.state));
        }
        if !row.planned {
            match plan_ranges(&self.ctx.pool, &job).await {
                Ok(ranges) => {
                    if let Err(e) = self.ctx.progress.plan(&name, &ranges).await {
                        tracing::warn!(job = %name, error = %e, "could not plan ranges; will retry");
                        return Ok(None);
                    }
                    tracing::info!(job = %name, ranges = ranges.len(), "job started: key ranges planned");
                }
                Err(e) => {
                    tracing::warn!(job = %name, error = %crate::error::sql(&e), "could not plan ranges; will retry");
                    return Ok(None);
                }
            }
        }
        if !self.active.contains_key(&name) {
            // Nothing running here: finish a job whose ranges are all done (e.g. crash before completion).
            match self.ctx.progress.all_ranges_done(&name).await {
                Ok(true) => {
                    self.spawn_finalize(job);
                    return Ok(Some(row.state));
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "progress table unavailable; will retry");
                    return Ok(None);
                }
            }
            if self.active.len() >= self.cfg.max_jobs {
                return Ok(Some(row.state));
            }
        }
        self.claim_ranges(&job).await;
        // This daemon's view: running (or held) when it works the job, else what the table shows.
        let here = match self.active.get(&name) {
            Some(_) if row.throttle_reason.is_some() => JobState::Held,
            Some(_) => JobState::Running,
            None => JobState::of(&row),
        };
        publish_state(&name, here);
        Ok(Some(row.state))
    }

    /// `Ok(Err)`: the spec does not fit the database (a finding); `Err`: the database did not answer.
    async fn resolve(&self, spec: JobSpec) -> Result<Result<Job, String>, String> {
        let mut conn =
            self.ctx.pool.acquire().await.map_err(|e| format!("database unavailable: {}", crate::error::sql(&e)))?;
        match catalog::resolve(&mut conn, &spec).await {
            Ok(Ok(resolved)) => Ok(Ok(Job::new(spec, resolved))),
            Ok(Err(findings)) => Ok(Err(findings
                .iter()
                .map(|f| format!("{}: {} (fix: {})", f.field, f.message, f.hint))
                .collect::<Vec<_>>()
                .join("; "))),
            Err(e) => Err(format!("database error while resolving: {}", crate::error::sql(&e))),
        }
    }

    async fn claim_ranges(&mut self, job: &Arc<Job>) {
        let name = job.name().to_string();
        let want = job.spec.concurrency.max(1) as usize;
        loop {
            let running = self.active.get(&name).map_or(0, |a| a.workers);
            let total: usize = self.active.values().map(|a| a.workers).sum();
            if running >= want || total >= self.cfg.max_workers {
                return;
            }
            let claim = match self.ctx.progress.claim(&name, &self.cfg.owner, self.cfg.lease).await {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "could not claim a range; will retry");
                    return;
                }
            };
            let active = self.active.entry(name.clone()).or_insert_with(|| Active {
                job: job.clone(),
                workers: 0,
                cancel: self.cancel.child_token(),
            });
            active.workers += 1;
            let (ctx, job, cancel, n) = (self.ctx.clone(), job.clone(), active.cancel.clone(), name.clone());
            let held = claim.clone();
            let handle = self.tasks.spawn(async move { (n, worker::run_range(ctx, job, claim, cancel).await) });
            self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(handle.id(), held);
            self.publish_workers();
        }
    }

    /// When every range is done: verify and complete the job in a task of its own, so a long count
    /// over a big table holds up neither the other jobs nor shutdown. One at a time per job.
    fn spawn_finalize(&self, job: Arc<Job>) {
        let name = job.name().to_string();
        if !self.finalizing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(name.clone()) {
            return;
        }
        let (ctx, finalizing, finalized) = (self.ctx.clone(), self.finalizing.clone(), self.finalized.clone());
        let cancel = self.cancel.child_token();
        tokio::spawn(async move {
            finalize(&ctx, &job, &cancel).await;
            finalizing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&name);
            finalized.notify_one();
        });
    }
}

/// Count rows still matching `where` and mark the job completed. Idempotent across daemons; a
/// failure is retried by a later scan.
async fn finalize(ctx: &Context, job: &Job, cancel: &CancellationToken) {
    let name = job.name();
    match ctx.progress.all_ranges_done(name).await {
        Ok(true) => {}
        _ => return,
    }
    let leftover = match crate::verify::run(ctx, job, cancel).await {
        Ok(crate::verify::Verified::Done(v)) => v,
        Ok(crate::verify::Verified::Stopped) => return,
        Err(e) => {
            tracing::warn!(job = %name, error = %e, "verification query failed; will retry");
            return;
        }
    };
    match ctx.progress.complete(name, leftover).await {
        Ok(true) => match leftover {
            Some(n) if n > 0 => {
                tracing::warn!(job = %name, leftover_rows = n, "job completed, but rows in its range still match `where`")
            }
            _ => tracing::info!(job = %name, "job completed"),
        },
        Ok(false) => {}
        Err(e) => tracing::warn!(job = %name, error = %e, "could not mark the job completed; will retry"),
    }
}

/// `pgbackfill_job_state{job, state}` (1 for the current state, 0 for the others, so dashboards can
/// show and alert on state without string parsing), and progress and ETA computed exactly as
/// `status` computes them.
fn publish_job(job: &Job, row: &JobRow) {
    let status = crate::status::JobStatus::from_row(row);
    job.metrics.set_state(status.state.as_str());
    job.metrics.set_progress(status.percent.map(|p| p / 100.0), status.eta_seconds);
}

/// Only the state: this daemon's view of a job (see [`JobState`]).
fn publish_state(job: &str, state: JobState) {
    JobMetrics::new(job).set_state(state.as_str());
}

fn spec_json(spec: &JobSpec) -> serde_json::Value {
    serde_json::to_value(spec).unwrap_or(serde_json::Value::Null)
}

/// Fix a job's key ranges: the upper bound is today's largest key (rows inserted later are the
/// application's dual-write responsibility); with `concurrency > 1` the boundaries are quantiles of
/// the key distribution (from a sample), not an even split of min..max that sparse keys would skew.
pub async fn plan_ranges(pool: &PgPool, job: &Job) -> Result<Vec<(Option<KeyValue>, KeyValue)>, sqlx::Error> {
    let statements = &job.statements;
    let mut conn = pool.acquire().await?;
    let upper: Option<Vec<String>> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(statements.max_key.as_str())).fetch_optional(&mut *conn).await?;
    let Some(upper) = upper else { return Ok(Vec::new()) };
    let n = job.spec.concurrency.max(1) as usize;
    if n == 1 {
        return Ok(vec![(None, upper)]);
    }
    // Aim for ~20k sampled keys: every key of a small table, a block sample of a large one. The
    // estimate can be stale, so a sample that hits the limit is retried ten times sparser.
    const LIMIT: i64 = 100_000;
    let estimated = job.resolved.estimated_rows.max(1) as f64;
    let mut pct = (20_000.0 * 100.0 / estimated).min(100.0);
    let keys: Vec<Vec<String>> = loop {
        let sample = if pct >= 100.0 { String::new() } else { format!(" TABLESAMPLE SYSTEM ({pct:.6})") };
        let keys: Vec<Vec<String>> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(statements.ordered_keys.replace("{sample}", &sample)))
                .bind_all_keys(&upper)
                .bind(LIMIT)
                .fetch_all(&mut *conn)
                .await?;
        if (keys.len() as i64) < LIMIT || pct < 0.001 {
            break keys;
        }
        pct /= 10.0;
    };
    Ok(split(keys, upper, n))
}

/// Cut an ordered sample of keys into `n` ranges `(lower, upper]` ending at `upper`.
fn split(keys: Vec<KeyValue>, upper: KeyValue, n: usize) -> Vec<(Option<KeyValue>, KeyValue)> {
    let mut bounds: Vec<KeyValue> = Vec::new();
    for i in 1..n {
        if let Some(k) = keys.get(keys.len() * i / n)
            && bounds.last() != Some(k)
        {
            bounds.push(k.clone());
        }
    }
    let mut ranges = Vec::new();
    let mut lower: Option<KeyValue> = None;
    for b in bounds {
        ranges.push((lower.take(), b.clone()));
        lower = Some(b);
    }
    ranges.push((lower, upper));
    ranges
}

trait BindAll<'q> {
    fn bind_all_keys(self, key: &'q KeyValue) -> Self;
}

impl<'q, O> BindAll<'q> for sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_all_keys(mut self, key: &'q KeyValue) -> Self {
        for v in key {
            self = self.bind(v);
        }
        self
    }
}

/// Keep this daemon's leases alive. A failed renewal is only logged: if the database is gone for
/// longer than the lease, another daemon may take over, and fencing keeps that safe.
async fn renew_leases(
    progress: Progress,
    live: Arc<Mutex<HashMap<tokio::task::Id, Claim>>>,
    lease: Duration,
    cancel: CancellationToken,
) {
    let every = lease / 4;
    loop {
        if worker::sleep_or_cancel(every, &cancel).await {
            return;
        }
        let claims: Vec<Claim> =
            live.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).values().cloned().collect();
        if let Err(e) = progress.renew(&claims, lease).await {
            tracing::warn!(error = %e, "could not renew range leases");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    fn k(v: i32) -> Vec<String> {
        vec![v.to_string()]
    }

    #[test]
    fn splits_on_sample_quantiles() {
        // Sparse keys: 0..10 and 1000..1010. Quantiles put the boundary inside the dense data.
        let keys: Vec<_> = (0..10).chain(1000..1010).map(k).collect();
        let r = split(keys, k(5000), 2);
        assert_eq!(r, vec![(None, k(1000)), (Some(k(1000)), k(5000))]);
    }

    #[test]
    fn fewer_keys_than_ranges() {
        assert_eq!(split(vec![], k(7), 4), vec![(None, k(7))]);
        let r = split(vec![k(1)], k(7), 4);
        assert_eq!(r, vec![(None, k(1)), (Some(k(1)), k(7))]);
    }
}
