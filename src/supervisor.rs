//! The supervisor: loads the jobs directory, registers jobs in the progress table, plans their key
//! ranges, claims ranges through PostgreSQL and runs a worker per claimed range.
//!
//! Any number of daemons may run against one database: a range is worked by whoever holds its lease
//! (`progress::claim`), leases are renewed every second by one task, and a daemon that dies stops
//! renewing so another takes over once the lease expires. Every batch re-proves the claim under the
//! range row's lock, so even a daemon that lost its lease without noticing cannot commit.
//!
//! The supervisor rescans the directory every scan interval (and at once on SIGHUP): new files
//! start, a tuning change restarts the job's workers with the new settings, a broken file is
//! reported (once per change) and skipped without touching any other job.
//!
//! It also owns every state change an operator asks for by signal ([`control::Command`]): pause and
//! resume (recorded in the progress table, so every daemon obeys and a restart does not silently
//! resume), reload, and the bounded drain on shutdown. Its loop never blocks on the database
//! while a command waits: start-up preparation and each scan are raced against the command channel.
//!
//! The drain: stop taking batches at once; let batches in flight commit; shortly before
//! `shutdown_timeout` cancel, on the server, whatever this daemon's sessions are still running
//! (`pg_cancel_backend`), so a batch stuck behind a lock rolls back instead of outliving the
//! deadline; release claims; return in time. Nothing is ever half-written: a batch and its cursor
//! commit together or not at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::KeyValue;
use crate::catalog;
use crate::control::{self, Command};
use crate::db;
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
    /// From a drain request (SIGTERM) to returning: batches still running shortly before it are
    /// cancelled on the server.
    pub shutdown_timeout: Duration,
    /// `DATABASE_URL_FILE`, re-read on SIGHUP (a rotated password); `None` when the URL came from
    /// elsewhere.
    pub url_file: Option<PathBuf>,
}

/// Defaults for the knobs `pgbackfill run` exposes as flags.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

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
    /// The daemon cannot work here (its role lacks privileges on the progress schema): why.
    Fatal(String),
    /// A second shutdown signal: returned at once, without waiting for batches in flight (they
    /// roll back when the process exits).
    Interrupted,
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
    /// The spec file each loaded job came from: a job running here whose file is gone is stopped.
    files: HashMap<String, std::path::PathBuf>,
    /// The progress schema is in place (start-up preparation succeeded).
    prepared: bool,
    /// Until then: growing waits between attempts (the database may take a while to come up).
    prepare_backoff: crate::retry::Backoff,
    prepare_wait: Duration,
    /// Jobs paused by SIGUSR1 whose pause is not recorded in the progress table yet (database
    /// unreachable, job not registered yet), with the `paused_by` to record. They are held here
    /// meanwhile: no batch starts for them in this daemon.
    held: BTreeMap<String, String>,
    /// Jobs SIGUSR2 resumes, until the progress table has taken it.
    to_resume: BTreeSet<String>,
    /// Last `paused_by` logged per job, so a pause is logged once, with who did it.
    pause_logged: HashMap<String, Option<String>>,
    /// The last pass left work undone on a transient error: retry soon, not a scan interval later.
    unsettled: bool,
    /// What this daemon last registered per job: (fingerprint, spec as stored). While a job's spec
    /// and its row's fingerprint are unchanged, the scan's one read of every job row stands in for
    /// registering it again (two reads per job per scan: most of an idle daemon's queries).
    registered: HashMap<String, (String, serde_json::Value)>,
}

/// How often preparation, unrecorded pauses and passes that hit a transient error are retried,
/// whatever the scan interval.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on the `pg_cancel_backend` round trip at the end of a drain.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the supervisor's loop stopped.
enum Stop {
    Ended(Outcome),
    Drain,
    Exit,
}

/// What woke the loop between passes.
enum Wake {
    Command(Command),
    Tick,
}

/// Run until drained (a [`Command::Drain`] on `commands`, or `cancel`), or, with
/// `exit_when_done`, until every job has ended.
///
/// `commands` is usually fed by [`control::listen`]; a closed channel simply never commands.
/// Prepares the progress schema first (retrying: the database may still be coming up next to us).
pub async fn run(
    cfg: Config,
    pool: PgPool,
    progress: Progress,
    measurements: crate::throttle::Measurements,
    mut commands: control::Receiver,
    cancel: CancellationToken,
) -> Outcome {
    let ctx = Context { pool, progress, measurements };
    let live = Arc::new(Mutex::new(HashMap::new()));
    let renewer = tokio::spawn(renew_leases(ctx.progress.clone(), live.clone(), cfg.lease, cancel.clone()));
    let mut sup = Supervisor {
        cfg,
        ctx,
        cancel: cancel.child_token(),
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
        files: HashMap::new(),
        prepared: false,
        prepare_backoff: crate::retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        prepare_wait: Duration::ZERO,
        held: BTreeMap::new(),
        to_resume: BTreeSet::new(),
        pause_logged: HashMap::new(),
        unsettled: false,
        registered: HashMap::new(),
    };
    let stop = sup.run(&mut commands, &cancel).await;
    sup.cfg.heartbeat.finished();
    let outcome = match stop {
        Stop::Ended(outcome) => sup.drain(&mut commands, Instant::now()).await.unwrap_or(outcome),
        Stop::Drain => {
            let started = Instant::now();
            tracing::info!(
                timeout_s = sup.cfg.shutdown_timeout.as_secs_f64(),
                "shutdown requested: no new batches; finishing the ones in flight"
            );
            sup.drain(&mut commands, started).await.unwrap_or(Outcome::Shutdown)
        }
        Stop::Exit => Outcome::Interrupted,
    };
    if outcome == Outcome::Interrupted {
        sup.tasks.abort_all();
    }
    DaemonMetrics::get().active_workers.set(0.0);
    // It stopped with the drain; it may be stuck on an unreachable database, so do not wait for it.
    renewer.abort();
    outcome
}

/// The next command, or a drain once `cancel` fires. A closed channel never commands.
async fn next_command(commands: &mut control::Receiver, cancel: &CancellationToken) -> Command {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Command::Drain,
        c = commands.recv() => match c {
            Some(c) => c,
            None => {
                cancel.cancelled().await;
                Command::Drain
            }
        },
    }
}

/// Wait for [`Command::Exit`], ignoring everything else (we are draining already).
async fn exit_requested(commands: &mut control::Receiver) {
    loop {
        match commands.recv().await {
            Some(Command::Exit) => return,
            Some(other) => tracing::info!(command = ?other, "draining: command ignored"),
            None => std::future::pending::<()>().await,
        }
    }
}

impl Supervisor {
    async fn run(&mut self, commands: &mut control::Receiver, cancel: &CancellationToken) -> Stop {
        loop {
            // One pass (prepare, record signal pauses/resumes, scan), raced against commands:
            // with the database unreachable a pass can take long, and SIGTERM must not wait for it.
            // Dropping a pass part way is safe: at worst a claim it took is unknown here and its
            // lease runs out.
            self.cfg.heartbeat.beat();
            let wake = tokio::select! {
                biased;
                c = next_command(commands, cancel) => Some(c),
                done = self.pass() => {
                    if let Some(outcome) = done
                        && self.tasks.is_empty()
                    {
                        return Stop::Ended(outcome);
                    }
                    None
                }
            };
            let mut wake = wake.map(Wake::Command);
            // Wait for the next reason to pass again.
            while wake.is_none() {
                let retry_soon = self.unsettled || !self.held.is_empty() || !self.to_resume.is_empty();
                let interval = if !self.prepared {
                    self.prepare_wait
                } else if retry_soon {
                    self.cfg.scan_interval.min(RETRY_INTERVAL)
                } else {
                    self.cfg.scan_interval
                };
                wake = tokio::select! {
                    biased;
                    c = next_command(commands, cancel) => Some(Wake::Command(c)),
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
                        Some(Wake::Tick)
                    }
                    // A verification finished: the job may be complete (and `--exit-when-done` due).
                    _ = self.finalized.notified() => Some(Wake::Tick),
                    _ = tokio::time::sleep(interval) => Some(Wake::Tick),
                };
            }
            if let Some(Wake::Command(command)) = wake {
                match command {
                    Command::Drain => return Stop::Drain,
                    Command::Exit => return Stop::Exit,
                    Command::Pause => self.pause_all(),
                    Command::Resume => self.resume_all(),
                    Command::Reload => self.reload(),
                }
            }
        }
    }

    /// Create or upgrade the progress schema (once), record what signals asked, then scan.
    async fn pass(&mut self) -> Option<Outcome> {
        self.unsettled = false;
        if !self.prepared {
            // A direct connection first: an unreachable database is reported at once with its
            // cause ("connection refused" on host:port), not after the pool's acquire timeout.
            let prepared = match db::check_pool(&self.ctx.pool).await {
                Ok(()) => self.ctx.progress.migrate().await.map_err(|e| crate::error::chain(&e)),
                Err(e) => Err(crate::error::chain(&e)),
            };
            if let Err(e) = prepared {
                self.prepare_wait = self.prepare_backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = self.prepare_wait.as_millis() as u64, "cannot prepare the progress table yet; retrying");
                return None;
            }
            // A role that may read but not write the progress tables (the README's viewer role)
            // would run forever, failing every write: say so at once instead.
            match self.ctx.progress.missing_privileges().await {
                Ok(missing) if !missing.is_empty() => {
                    return Some(Outcome::Fatal(format!(
                        "the daemon's role lacks privileges on the progress schema `{}`: {} (grant them, \
                         see README \"Three roles\", daemon: deploy/sql/grants.sql or grants-precreated-schema.sql; \
                         a viewer or operator role cannot run the daemon)",
                        self.ctx.progress.schema_name(),
                        missing.join("; ")
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    self.prepare_wait = self.prepare_backoff.next_delay();
                    tracing::warn!(error = %e, "cannot check the privileges on the progress table yet; retrying");
                    return None;
                }
            }
            self.prepared = true;
        }
        self.record_signals().await;
        self.scan().await
    }

    /// The jobs this daemon has loaded: the valid specs in its jobs directory now, and any job it
    /// is running.
    fn loaded(&self) -> BTreeSet<String> {
        let report = spec::load_paths(std::slice::from_ref(&self.cfg.jobs_dir));
        report.jobs.into_iter().map(|j| j.spec.name).chain(self.active.keys().cloned()).collect()
    }

    /// SIGUSR1: hold every loaded job here at once (workers finish their batch in flight and stop;
    /// no batch starts), then record the pause in the progress table (next pass, retried).
    fn pause_all(&mut self) {
        let by = format!(
            "SIGUSR1 to daemon {} at {}",
            self.cfg.owner,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let jobs = self.loaded();
        tracing::info!(jobs = %jobs.iter().cloned().collect::<Vec<_>>().join(", "), paused_by = %by, "SIGUSR1: pausing every loaded job");
        self.to_resume.clear();
        for name in jobs {
            if let Some(active) = self.active.get(&name) {
                active.cancel.cancel();
            }
            self.held.insert(name, by.clone());
        }
    }

    /// SIGUSR2: resume every loaded job that is paused (recorded in the next pass, retried).
    fn resume_all(&mut self) {
        let jobs = self.loaded();
        tracing::info!(jobs = %jobs.iter().cloned().collect::<Vec<_>>().join(", "), "SIGUSR2: resuming every loaded job that is paused");
        self.held.clear();
        self.to_resume = jobs;
    }

    /// SIGHUP: re-read the database URL file (new connections use it; open ones, and the batches
    /// on them, carry on), and rescan the jobs directory in the pass that follows.
    fn reload(&mut self) {
        tracing::info!("SIGHUP: rescanning the jobs directory");
        let Some(file) = &self.cfg.url_file else {
            tracing::info!("the database URL does not come from DATABASE_URL_FILE: nothing to re-read");
            return;
        };
        let url = match std::fs::read_to_string(file) {
            Ok(text) => text.trim().to_string(),
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "cannot re-read the database URL file; keeping the current URL");
                return;
            }
        };
        let pool = &self.ctx.pool;
        let application_name = pool.connect_options().get_application_name().unwrap_or("pgbackfill").to_string();
        match db::connect_options(&url, &application_name) {
            Ok(options) => {
                // Named as every other message names it: `host:port/database as user`.
                let target = db::describe_target(&options);
                pool.set_connect_options(options);
                tracing::info!(database = %target, "database URL re-read: new connections use it");
            }
            Err(e) => tracing::error!(
                file = %file.display(),
                error = %e,
                "the database URL file does not hold a valid URL; keeping the current URL"
            ),
        }
    }

    /// Write pending signal pauses and resumes to the progress table. What fails is kept for the
    /// next pass.
    async fn record_signals(&mut self) {
        for (name, by) in self.held.clone() {
            match self.ctx.progress.pause_by_signal(&name, &by).await {
                Ok(state) => {
                    tracing::info!(job = %name, state = %state, "pause recorded in the progress table");
                    self.held.remove(&name);
                }
                // Nothing to pause: the job has ended.
                Err(ProgressError::BadTransition { .. }) => {
                    self.held.remove(&name);
                }
                // Not registered yet: stays held here; the scan registers it, the next pass pauses it.
                Err(ProgressError::NoSuchJob(_)) => {}
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "cannot record the pause yet; holding the job here meanwhile");
                    return;
                }
            }
        }
        for name in self.to_resume.clone() {
            match self.ctx.progress.resume_paused(&name).await {
                Ok(resumed) => {
                    if resumed {
                        tracing::info!(job = %name, "resumed (SIGUSR2)");
                    }
                    self.to_resume.remove(&name);
                }
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "cannot record the resume yet; will retry");
                    return;
                }
            }
        }
    }

    /// Stop taking batches, let those in flight commit, cancel on the server what still runs
    /// shortly before the deadline, and return by `started + shutdown_timeout`.
    /// `Some(Interrupted)` when a second shutdown signal cut it short.
    async fn drain(&mut self, commands: &mut control::Receiver, started: Instant) -> Option<Outcome> {
        self.cancel.cancel();
        let timeout = self.cfg.shutdown_timeout;
        let deadline = started + timeout;
        // Left for the cancel round trip, the rollbacks and releasing the claims.
        let margin = (timeout / 5).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let cancel_at = deadline.checked_sub(margin).unwrap_or(deadline);
        if !self.join_until(commands, cancel_at).await {
            return Some(Outcome::Interrupted);
        }
        if !self.tasks.is_empty() {
            let left = self.tasks.len();
            match tokio::time::timeout(CANCEL_TIMEOUT.min(margin / 2), cancel_own_queries(&self.ctx.pool)).await {
                Ok(Ok(n)) => tracing::warn!(
                    workers = left,
                    cancelled_queries = n,
                    "batches still in flight near the shutdown timeout: cancelled on the server (they roll back)"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(workers = left, error = %e, "could not cancel the batches still in flight")
                }
                Err(_) => tracing::warn!(workers = left, "the database did not answer the cancel in time"),
            }
            if !self.join_until(commands, deadline).await {
                return Some(Outcome::Interrupted);
            }
        }
        if !self.tasks.is_empty() {
            tracing::warn!(
                workers = self.tasks.len(),
                "shutdown timeout: abandoning workers (their transactions roll back; their leases expire)"
            );
            self.tasks.abort_all();
        }
        None
    }

    /// Join worker tasks until none is left or `until`. False when an Exit command came first.
    async fn join_until(&mut self, commands: &mut control::Receiver, until: Instant) -> bool {
        let until = tokio::time::Instant::from_std(until);
        loop {
            if self.tasks.is_empty() {
                return true;
            }
            tokio::select! {
                biased;
                _ = exit_requested(commands) => return false,
                _ = tokio::time::sleep_until(until) => return true,
                Some(res) = self.tasks.join_next_with_id() => match res {
                    Ok((id, _)) => {
                        self.forget(id);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "worker task panicked");
                        self.forget(e.id());
                    }
                },
            }
        }
    }

    fn forget(&mut self, id: tokio::task::Id) -> Option<Claim> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&id)
    }

    async fn worker_finished(&mut self, name: &str, outcome: RangeOutcome) {
        let mut last = false;
        if let Some(a) = self.active.get_mut(name) {
            a.workers = a.workers.saturating_sub(1);
            if a.workers == 0 {
                self.active.remove(name);
                last = true;
            }
        }
        self.publish_workers();
        // No worker left here: the state is what the table says now (another daemon's, orphaned,
        // paused …), not the `running` this daemon published while it worked the job. A job that
        // is gone from the table (`pgbackfill forget`) has no state.
        if last && outcome != RangeOutcome::Done {
            match tokio::time::timeout(RELEASE_WAIT, self.ctx.progress.job(name)).await {
                Ok(Ok(Some(row))) => publish_state(name, JobState::of(&row)),
                Ok(Ok(None)) => JobMetrics::new(name).clear_state(),
                _ => publish_state(name, JobState::Orphaned),
            }
        }
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
            invalid.push(format!("{} (invalid)", p.file.display()));
        }
        let mut ended: BTreeMap<String, State> = BTreeMap::new();
        let mut open = 0usize;
        let mut refused = 0usize;
        let here: HashSet<String> = report.jobs.iter().map(|j| j.spec.name.clone()).collect();
        self.stop_removed(&here);
        self.clear_forgotten(&here).await;
        // Every job's row in one read (when it fails, each job registers, and reports, itself).
        let mut rows: HashMap<String, JobRow> = match self.ctx.progress.jobs().await {
            Ok(rows) => rows.into_iter().map(|r| (r.name.clone(), r)).collect(),
            Err(_) => HashMap::new(),
        };
        for loaded in report.jobs {
            let name = loaded.spec.name.clone();
            self.files.insert(name.clone(), loaded.path.clone());
            let considered = self.consider(loaded.spec, rows.remove(&name)).await;
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
                    invalid.push(format!("{name} (refused: {message})"));
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
        failed.extend(invalid);
        failed.sort();
        failed.dedup();
        Some(if failed.is_empty() { Outcome::AllCompleted } else { Outcome::NotAllCompleted { failed } })
    }

    /// A job running here whose spec file is gone (not merely unparsable: its name is unknown then)
    /// is stopped here: its workers finish their batch in flight and release their ranges. Its
    /// progress stays; restoring the file resumes it, `pgbackfill forget` removes it.
    fn stop_removed(&mut self, loaded: &HashSet<String>) {
        let removed: Vec<String> = self
            .active
            .keys()
            .filter(|name| !loaded.contains(*name))
            .filter(|name| self.files.get(*name).is_none_or(|f| !f.exists()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(active) = self.active.get(&name)
                && !active.cancel.is_cancelled()
            {
                active.cancel.cancel();
                let file = self.files.get(&name).map_or(String::new(), |f| format!(" ({})", f.display()));
                tracing::warn!(
                    job = %name,
                    "spec file removed{file}: job stopped here (progress kept; resume by restoring the file, or `pgbackfill forget`)"
                );
            }
            self.resolved.remove(&name);
        }
    }

    /// A job whose spec file is gone and that no worker here runs: once it is gone from the progress
    /// table too (`pgbackfill forget`), it has no state any more (its `orphaned` would alert forever).
    async fn clear_forgotten(&mut self, loaded: &HashSet<String>) {
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|name| !loaded.contains(*name) && !self.active.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Ok(None) = self.ctx.progress.job(&name).await {
                JobMetrics::new(&name).clear_state();
                self.files.remove(&name);
            }
        }
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
            // Once per job and error: it is retried every scan (twice a second, for ever).
            Err(e) => {
                if self.reported.insert(format!("could not record the refusal of {name}: {e}")) {
                    tracing::warn!(job = %name, error = %e, "could not record the refusal; will retry (logged once)")
                }
            }
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

    /// Bring one job forward: resolve, register, plan, claim. Returns its state. `known`: the job's
    /// row as this scan read it, if it has one.
    async fn consider(&mut self, spec: JobSpec, known: Option<JobRow>) -> Result<Option<State>, String> {
        let name = spec.name.clone();
        // Every series of the job exists from the moment it is loaded, before any batch.
        if self.declared.insert(name.clone()) {
            JobMetrics::declare(&name, spec.batch.start_size());
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
                    self.unsettled = true;
                    return Ok(None);
                }
            },
        };
        let stored = spec_json(&job.spec);
        let unchanged = known.filter(|row| {
            row.fingerprint == job.resolved.fingerprint
                && self.registered.get(&name).is_some_and(|(fp, spec)| *fp == row.fingerprint && *spec == stored)
        });
        let registered = match unchanged {
            Some(row) => Ok(row),
            None => {
                let registered = self
                    .ctx
                    .progress
                    .register(
                        &name,
                        &job.resolved.fingerprint,
                        &job.resolved.meaning,
                        &stored,
                        job.resolved.estimated_rows,
                    )
                    .await;
                if registered.is_ok() {
                    self.registered.insert(name.clone(), (job.resolved.fingerprint.clone(), stored));
                }
                registered
            }
        };
        let row = match registered {
            Ok(row) => {
                publish_job(&job, &row);
                self.publish_pause(&job, &row);
                row
            }
            Err(e @ ProgressError::MeaningChanged { .. }) => {
                self.resolved.remove(&name);
                return Err(e.to_string());
            }
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "progress table unavailable; will retry");
                self.unsettled = true;
                return Ok(None);
            }
        };
        self.accept(&name).await;
        if row.state.is_terminal() || row.state == State::Paused || self.held.contains_key(&name) {
            publish_state(&name, JobState::of(&row));
            // Paused, cancelled or failed from elsewhere (or paused by a signal not recorded yet):
            // stop our workers now, even those waiting on the throttle or sleeping between
            // batches, which would only notice at their next batch.
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
            let estimated = estimate_rows(&self.ctx.pool, &job).await;
            match plan_ranges(&self.ctx.pool, &job, estimated.unwrap_or(job.resolved.estimated_rows)).await {
                Ok(ranges) => {
                    if let Err(e) = self.ctx.progress.plan(&name, &ranges, estimated).await {
                        tracing::warn!(job = %name, error = %e, "could not plan ranges; will retry");
                        self.unsettled = true;
                        return Ok(None);
                    }
                    tracing::info!(job = %name, ranges = ranges.len(), "job started: key ranges planned");
                }
                Err(e) => {
                    tracing::warn!(job = %name, error = %crate::error::sql(&e), "could not plan ranges; will retry");
                    self.unsettled = true;
                    return Ok(None);
                }
            }
        } else if row.estimated_rows.unwrap_or(0) <= 0 {
            // Started without a figure (the estimate failed then): `status` and the progress
            // gauge would show no percentage or ETA for the whole job.
            if let Some(rows) = estimate_rows(&self.ctx.pool, &job).await.filter(|r| *r > 0) {
                match self.ctx.progress.set_estimate(&name, rows).await {
                    Ok(()) => tracing::info!(job = %name, estimated_rows = rows, "row estimate recorded"),
                    Err(e) => tracing::debug!(job = %name, error = %e, "could not record the row estimate"),
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
                    self.unsettled = true;
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
                    self.unsettled = true;
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
        let (owner, lease) = (self.cfg.owner.clone(), self.cfg.lease);
        tokio::spawn(async move {
            finalize(&ctx, &job, &owner, lease, &cancel).await;
            finalizing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&name);
            finalized.notify_one();
        });
    }
}

/// Count rows still matching `where` and mark the job completed. Idempotent across daemons; a
/// failure is retried by a later scan.
async fn finalize(ctx: &Context, job: &Job, owner: &str, lease: Duration, cancel: &CancellationToken) {
    let name = job.name();
    match ctx.progress.all_ranges_done(name).await {
        Ok(true) => {}
        _ => return,
    }
    // Verification holds no range: its own lease, renewed while it runs (chunks and throttle or
    // schedule waits alike), tells `status` a live daemon is on it.
    let verified = tokio::select! {
        v = crate::verify::run(ctx, job, cancel) => v,
        _ = renew_verify_lease(ctx, name, owner, lease) => unreachable!("renews until dropped"),
    };
    if let Err(e) = ctx.progress.end_verify(name, owner).await {
        tracing::debug!(job = %name, error = %e, "could not drop the verification lease; it will expire");
    }
    let leftover = match verified {
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

impl Supervisor {
    /// `pgbackfill_job_paused{job, by}` and one log line per pause naming who paused the job.
    fn publish_pause(&mut self, job: &Job, row: &JobRow) {
        let paused_by = row.paused_by.clone().filter(|_| row.state == State::Paused);
        job.metrics.set_paused(row.paused_via.filter(|_| row.state == State::Paused).map(|v| v.as_str()));
        let logged = self.pause_logged.entry(row.name.clone()).or_default();
        if *logged != paused_by {
            if let Some(by) = &paused_by {
                tracing::info!(job = %row.name, paused_by = %by, "job is paused");
            }
            *logged = paused_by;
        }
    }
}

/// Cancel, on the server, the query every other session of this daemon is running: sessions whose
/// `application_name` is ours (it carries the daemon's unique owner id, see `owner_id` in main;
/// compared as the server stores it, so truncation or character mangling cannot make it differ),
/// of our role (the only ones `pg_cancel_backend` may signal without extra privileges), except the
/// session asking. A session between statements is not affected; one inside a batch has its
/// statement fail, and the batch rolls back. Returns how many were signalled.
pub async fn cancel_own_queries(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = current_setting('application_name') AND usename = current_user \
           AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state = 'active'",
    )
    .fetch_one(pool)
    .await
}

/// `pgbackfill_job_state{job, state}` (1 for the current state, 0 for the others, so dashboards can
/// show and alert on state without string parsing), and progress and ETA computed exactly as
/// `status` computes them.
fn publish_job(job: &Job, row: &JobRow) {
    let status = crate::status::JobStatus::from_row(row);
    job.metrics.set_state(status.state.as_str());
    job.metrics.set_progress(status.percent.map(|p| p / 100.0), status.eta_seconds);
}

/// Bound on reading a job's row when its last worker here ends (the database may be down).
const RELEASE_WAIT: Duration = Duration::from_secs(2);

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
/// The planner's row estimate of the job's table (see [`catalog::estimate_rows`]), or `None`
/// when it cannot be had now (the table locked, the database busy): progress is then shown
/// without a percentage until a later scan gets one.
async fn estimate_rows(pool: &PgPool, job: &Job) -> Option<i64> {
    let result = match pool.acquire().await {
        Ok(mut conn) => catalog::estimate_rows(&mut conn, &job.resolved.target.table).await,
        Err(e) => Err(e),
    };
    result
        .inspect_err(
            |e| tracing::debug!(job = job.name(), error = %crate::error::sql(e), "could not estimate the table's rows"),
        )
        .ok()
        .flatten()
}

/// `estimated_rows` sizes the key sample (with `concurrency` above 1).
pub async fn plan_ranges(
    pool: &PgPool,
    job: &Job,
    estimated_rows: i64,
) -> Result<Vec<(Option<KeyValue>, KeyValue)>, sqlx::Error> {
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
    let estimated = estimated_rows.max(1) as f64;
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

/// Keep a verification's lease alive until dropped. Failures are only logged (at debug: the
/// verification itself reports a database that is gone); the lease then expires.
async fn renew_verify_lease(ctx: &Context, name: &str, owner: &str, lease: Duration) {
    loop {
        if let Err(e) = ctx.progress.renew_verify(name, owner, lease).await {
            tracing::debug!(job = %name, error = %e, "could not renew the verification lease");
        }
        tokio::time::sleep(lease / 4).await;
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
