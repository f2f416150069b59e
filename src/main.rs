//! The `pgbackfill` binary: parses the command line and wires the library's parts together.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use pgbackfill::control::{self, Command as Control};
use pgbackfill::demo::{self, DemoError, DemoOptions};
use pgbackfill::health::Liveness;
use pgbackfill::progress::{Action, Progress};
use pgbackfill::status::{self, render, render_replication};
use pgbackfill::supervisor::{self, Outcome};
use pgbackfill::throttle::{self, ControllerConfig};
use pgbackfill::{check, db, http, spec};

#[derive(Parser)]
#[command(name = "pgbackfill", version, about = "Zero-downtime, resumable, throttled backfills for live PostgreSQL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Args, Clone)]
struct Database {
    /// PostgreSQL URL of the primary. Prefer the environment or a file: a flag shows in `ps`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// File holding the database URL (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// Schema of pgbackfill's progress tables.
    #[arg(long, env = "PGBACKFILL_SCHEMA", default_value = "pgbackfill")]
    schema: String,
}

impl Database {
    fn url(&self) -> anyhow::Result<Option<String>> {
        if let Some(u) = &self.database_url {
            return Ok(Some(u.clone()));
        }
        if let Some(f) = &self.database_url_file {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            return Ok(Some(text.trim().to_string()));
        }
        Ok(None)
    }

    /// The file SIGHUP re-reads: only when the URL comes from it.
    fn reloadable_file(&self) -> Option<PathBuf> {
        if self.database_url.is_some() { None } else { self.database_url_file.clone() }
    }

    fn require_url(&self) -> anyhow::Result<String> {
        self.url()?.context("no database: set DATABASE_URL (or DATABASE_URL_FILE, or --database-url)")
    }
}

#[derive(Subcommand)]
enum Command {
    /// Validate job specs; with a database, also against its catalog and the progress table
    /// (nothing is written). Every problem of every file is reported; exit 1 if any.
    Check {
        /// Spec files, or directories of specs (`*.yaml` and `*.yml`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        db: Database,
        /// Machine-readable output (a JSON object with `problems`, `ok` and `valid`).
        #[arg(long)]
        json: bool,
        /// Succeed when no spec is found (otherwise an empty or mistyped path is an error).
        #[arg(long)]
        allow_empty: bool,
    },
    /// Run every job in a directory: the daemon.
    Run(RunArgs),
    /// Show every job's progress and state (pending, running, held, orphaned, paused, completed,
    /// failed, cancelled, refused), and replication as the throttle sees it now. Needs only SELECT
    /// on the progress tables.
    Status {
        #[command(flatten)]
        db: Database,
        /// Print the report as JSON (the same document the daemon serves at /status).
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw every second (progress bar, rows/s, ETA, state, throttle reason, standby lag)
        /// until Ctrl-C. The screen is cleared only on a terminal.
        #[arg(long)]
        watch: bool,
        /// Only the job with this name (the `name:` in its spec). Exit 2 if there is none.
        name: Option<String>,
    },
    /// Pause a job (daemons stop after their batch in flight).
    Pause(ControlArgs),
    /// Resume a paused (or failed) job; for a completed job, retry its failed `then` steps.
    Resume(ControlArgs),
    /// Cancel a job for good.
    Cancel(ControlArgs),
    /// Forget a job's progress: it starts over on the next daemon scan (e.g. after its meaning
    /// changed). Rows already written stay written: a `set` that is not idempotent runs again.
    /// Asks for confirmation on a terminal; `--yes` for scripts.
    Reset(ConfirmArgs),
    /// Remove a job from the progress table for good (e.g. its table was dropped). Remove its spec
    /// file first, or a daemon registers it again. Asks for confirmation; `--yes` for scripts.
    Forget(ConfirmArgs),
    /// Create or upgrade the progress schema (the daemon also does this at start-up). Lets the
    /// daemon run without CREATE on the database, and is the only other command that changes it.
    Migrate {
        #[command(flatten)]
        db: Database,
    },
    /// Print the JSON Schema of job specs.
    Schema,
    /// Run a backfill end to end on a throwaway local primary + standby (needs PostgreSQL server
    /// binaries: apt-get install -y postgresql), pausing the standby partway to show the throttle.
    Demo {
        /// Rows in the demo table.
        #[arg(long, default_value_t = 200_000)]
        rows: u64,
        /// Leave the cluster running at the end and print its URLs.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Args)]
struct ControlArgs {
    /// The job's name (the `name:` in its spec, as `status` lists it).
    name: String,
    #[command(flatten)]
    db: Database,
}

#[derive(Args)]
struct ConfirmArgs {
    /// The job's name (the `name:` in its spec, as `status` lists it).
    name: String,
    /// Do not ask: for scripts (without a terminal, the command refuses unless this is given).
    #[arg(long, short = 'y')]
    yes: bool,
    #[command(flatten)]
    db: Database,
}

#[derive(Args)]
struct RunArgs {
    /// Directory of job specs (`*.yaml` and `*.yml`), rescanned while running.
    #[arg(long, env = "PGBACKFILL_JOBS", default_value = "jobs")]
    jobs: PathBuf,
    /// Start even when the jobs directory holds no spec (otherwise an error: a wrong path must not
    /// look like "every job completed").
    #[arg(long, env = "PGBACKFILL_ALLOW_EMPTY")]
    allow_empty: bool,
    #[command(flatten)]
    db: Database,
    /// Jobs this daemon runs at once.
    #[arg(long, env = "PGBACKFILL_MAX_JOBS", default_value_t = 4)]
    max_jobs: usize,
    /// Database connections this daemon may open. Range workers are capped at this minus 4
    /// (for the throttle, lease renewal and scans).
    #[arg(long, env = "PGBACKFILL_MAX_CONNECTIONS", default_value_t = 16)]
    max_connections: u32,
    /// Exit once every job has ended: 0 if all completed, 1 otherwise (Kubernetes Jobs, CI).
    #[arg(long)]
    exit_when_done: bool,
    /// How often the throttle polls pg_stat_replication.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    lag_poll_interval: Duration,
    /// A standby whose last reply is older than this has unknown lag (fail closed).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_reply_age: Duration,
    /// A standby that disconnects holds every job (its lag is unknown) until it reconnects, or for
    /// this long; `0s` forgets it at once.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    forget_standby_after: Duration,
    /// How long a claimed key range stays ours without renewal; another daemon takes over after it.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// How often the jobs directory and progress table are rescanned.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    scan_interval: Duration,
    /// On SIGTERM/SIGINT: the time to drain (batches in flight commit; one still running near the
    /// end is cancelled on the server and rolls back) before exiting 0. Keep it under the
    /// orchestrator's grace period (Kubernetes: 30s).
    #[arg(long, env = "PGBACKFILL_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// Address (HOST:PORT) for /metrics, /healthz, /readyz and /status; empty to disable. A port
    /// that cannot be bound is a fatal error.
    #[arg(long, env = "PGBACKFILL_METRICS_ADDR", default_value = "0.0.0.0:8590")]
    metrics_addr: String,
}

/// `print!` for the commands' output: a reader that goes away (`status | head -1`) ends the
/// command quietly with 0, as with other Unix tools. Rust ignores SIGPIPE, so `print!` would panic
/// instead ("failed printing to stdout"); restoring SIGPIPE is no option, since a database
/// connection closed by the server would then kill the process.
macro_rules! out {
    ($($arg:tt)*) => { write_stdout(format_args!($($arg)*)) };
}

/// `println!` for the commands' output (see [`out!`]).
macro_rules! outln {
    () => { write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(2);
    }
}

/// The reader of our output went away (`| head`): not an error.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo tells its own story on stdout; the engine's log lines would only interleave with it
    // (PGBACKFILL_LOG still turns them on).
    // The other commands print what they have to say themselves; only the daemon narrates. Log
    // lines of the engine (a "shutdown requested" on Ctrl-C) or of the pool ("slow acquire") in
    // the middle of `status --watch` or a table of `status` would only be noise.
    let default_filter = match cli.command {
        Command::Demo { .. } => "error",
        Command::Run(_) => "info,sqlx=warn",
        _ => "warn,sqlx=off",
    };
    init_logging(&cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", pgbackfill::error::report(&e));
            ExitCode::from(2)
        }
    };
    // Tasks still waiting on an unreachable database must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

fn init_logging(format: &str, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PGBACKFILL_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    // Colour only on a terminal: log files and `kubectl logs` must not carry escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { paths, db: database, json, allow_empty } => {
            // A path that is not there is a usage error (exit 2, as `run` and an empty directory),
            // not a finding about a spec (exit 1).
            if let Some(missing) = paths.iter().find(|p| !p.exists()) {
                bail!("{} does not exist: check the path", missing.display());
            }
            let pool = match database.url()? {
                Some(url) => {
                    let pool = db::pool(&url, "pgbackfill check", 2).await.context("connecting to the database")?;
                    db::check_connection(&pool, &url).await?;
                    Some(pool)
                }
                None => None,
            };
            let report =
                check::check(&paths, pool.as_ref(), &database.schema).await.context("checking against the database")?;
            if report.ok.is_empty() && report.problems.is_empty() && !allow_empty {
                bail!("{}", no_specs(&paths));
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for p in &report.problems {
                    outln!("{p}");
                }
                for w in &report.warnings {
                    outln!("{w}");
                }
                for ok in &report.ok {
                    let mut line = format!("ok: {} ({})", ok.name, ok.file.display());
                    if let (Some(t), Some(i)) = (&ok.table, &ok.key_index) {
                        line.push_str(&format!(": {t} via index {i}"));
                    }
                    for n in &ok.notes {
                        line.push_str(&format!("; {n}"));
                    }
                    outln!("{line}");
                }
                if !report.online {
                    outln!("(offline: set DATABASE_URL to also check tables, columns, keys and SQL)");
                }
                outln!("{} problem(s), {} valid job(s)", report.problems.len(), report.ok.len());
            }
            Ok(if report.valid { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Schema => {
            outln!("{}", serde_json::to_string_pretty(&spec::JobSpec::json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { db: database, json, watch, name } => {
            let (pool, progress) = connect_progress(&database, "pgbackfill status").await?;
            if watch {
                return watch_status(&pool, &progress, name.as_deref()).await;
            }
            let report = status::report(&pool, &progress, name.as_deref()).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", render(&report.jobs));
                out!("{}", render_replication(&report.replication));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { db: database } => {
            let (_, progress) = connect(&database, "pgbackfill migrate").await?;
            progress.migrate().await?;
            outln!("progress schema `{}` is up to date", progress.schema_name());
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause(a) => control(a, Action::Pause).await,
        Command::Resume(a) => control(a, Action::Resume).await,
        Command::Cancel(a) => control(a, Action::Cancel).await,
        Command::Reset(a) => {
            let (_, progress) = connect_progress(&a.db, "pgbackfill reset").await?;
            let what = "forget its progress: it starts over from the first key on the next daemon scan, and \
                        rows already written are written again";
            if !confirm("reset", &a, &progress, what).await? {
                return Ok(ExitCode::from(1));
            }
            progress.reset(&a.name).await?;
            outln!("{}: progress forgotten; it starts over on the next daemon scan", a.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Forget(a) => {
            let (_, progress) = connect_progress(&a.db, "pgbackfill forget").await?;
            let what = "remove it from the progress table (its spec file, if still in a jobs directory, \
                        registers it again as a new job)";
            if !confirm("forget", &a, &progress, what).await? {
                return Ok(ExitCode::from(1));
            }
            progress.reset(&a.name).await?;
            outln!("{}: removed from the progress table", a.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(args).await,
        Command::Demo { rows, keep } => {
            // Ctrl-C (or SIGTERM) ends the demo cleanly; a second one exits at once.
            let cancel = CancellationToken::new();
            let _signals = cancel_on_signal(cancel.clone())?;
            let metrics = http::install_recorder()?;
            match demo::run(DemoOptions { rows, keep }, metrics, cancel).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(DemoError::Interrupted) => Ok(ExitCode::from(130)),
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// `status --watch`: the live view every second until Ctrl-C. A failed refresh shows its error and
/// the next one tries again: a watch left open should survive a database restart.
async fn watch_status(pool: &sqlx::PgPool, progress: &Progress, name: Option<&str>) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let cancel = CancellationToken::new();
    let _signals = cancel_on_signal(cancel.clone())?;
    let terminal = std::io::stdout().is_terminal();
    loop {
        let body = match status::report(pool, progress, name).await {
            Ok(report) => status::render_live(&report),
            Err(e) => format!("cannot refresh: {e}\n"),
        };
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
        let mut out = std::io::stdout().lock();
        if terminal {
            // Clear the screen and home the cursor; piped output gets plain frames instead.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "pgbackfill status --watch  {now}  (Ctrl-C to quit)\n{body}\n")?;
        out.flush()?;
        drop(out);
        if pgbackfill::worker::sleep_or_cancel(Duration::from_secs(1), &cancel).await {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// For the commands that are not the daemon (demo, `status --watch`): SIGTERM/SIGINT cancel
/// `cancel`, a second one exits at once (130); the other signals are ignored.
fn cancel_on_signal(cancel: CancellationToken) -> anyhow::Result<control::Listener> {
    let (commands, mut received) = control::channel();
    let listener = control::listen(commands).context("installing signal handlers")?;
    tokio::spawn(async move {
        while let Some(command) = received.recv().await {
            match command {
                Control::Drain => cancel.cancel(),
                Control::Exit => std::process::exit(130),
                Control::Pause | Control::Resume | Control::Reload => {}
            }
        }
    });
    Ok(listener)
}

/// Connect for a CLI command, without touching the progress schema.
async fn connect(database: &Database, app: &str) -> anyhow::Result<(sqlx::PgPool, Progress)> {
    let url = database.require_url()?;
    let pool = db::pool(&url, app, 2).await.with_context(|| format!("connecting to {}", db::redact_url(&url)))?;
    // The pool connects lazily; a CLI command should say at once what is wrong with the database.
    db::check_connection(&pool, &url).await?;
    let progress = Progress::new(pool.clone(), &database.schema);
    Ok((pool, progress))
}

/// Connect for a command that reads or changes the progress tables. Schema changes happen only in
/// the daemon and `pgbackfill migrate`, so these commands need no more than SELECT (status) or
/// UPDATE/DELETE (pause, resume, cancel, reset, forget) on the progress tables.
async fn connect_progress(database: &Database, app: &str) -> anyhow::Result<(sqlx::PgPool, Progress)> {
    let (pool, progress) = connect(database, app).await?;
    if !progress.exists().await? {
        return Err(status::StatusError::NoSchema(progress.schema_name().to_string()).into());
    }
    Ok((pool, progress))
}

/// "Specs found nowhere": the error for an empty or mistyped jobs path.
fn no_specs(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    format!(
        "no job specs (*.yaml, *.yml) in {}: check the path (specs in a subdirectory are not read), \
         or pass --allow-empty if an empty directory is expected",
        shown.join(", ")
    )
}

/// Ask before a command that throws progress away. On a terminal the operator types the job's
/// name; without one, `--yes` is required. Fails (NoSuchJob) before asking for a job that is not
/// there.
async fn confirm(verb: &str, a: &ConfirmArgs, progress: &Progress, what: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    let Some(job) = progress.job(&a.name).await? else {
        return Err(pgbackfill::progress::ProgressError::NoSuchJob(a.name.clone()).into());
    };
    if a.yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "`pgbackfill {verb} {}` would {what}; not a terminal, so nobody can confirm: pass --yes to do it",
            a.name
        );
    }
    let shown = status::JobStatus::from_row(&job);
    eprint!(
        "{verb} job `{}` ({}, {} rows updated)?\nThis will {what}.\nType the job's name to confirm: ",
        a.name, shown.state, shown.rows_updated
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() == a.name {
        Ok(true)
    } else {
        eprintln!("not confirmed: nothing changed");
        Ok(false)
    }
}

async fn control(a: ControlArgs, action: Action) -> anyhow::Result<ExitCode> {
    let (_, progress) = connect_progress(&a.db, "pgbackfill control").await?;
    let state = progress.transition(&a.name, action).await?;
    outln!("{}: {state}", a.name);
    Ok(ExitCode::SUCCESS)
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if !args.jobs.is_dir() {
        bail!("jobs directory {} does not exist (--jobs / PGBACKFILL_JOBS)", args.jobs.display());
    }
    let found = spec::load_paths(std::slice::from_ref(&args.jobs));
    if found.jobs.is_empty() && found.problems.is_empty() && !args.allow_empty {
        bail!("{}", no_specs(std::slice::from_ref(&args.jobs)));
    }
    // Bind first: a daemon that cannot serve its probes and metrics must not start working unseen.
    let listener = match args.metrics_addr.trim() {
        "" => None,
        addr => Some(http::bind(addr).await?),
    };
    let cancel = CancellationToken::new();
    // Signals become commands for the supervisor (pause, resume, reload, drain, exit).
    let (commands, received) = control::channel();
    let _signals = control::listen(commands).context("installing signal handlers")?;
    let metrics = http::install_recorder()?;
    let liveness = Liveness::default();
    let url = args.db.require_url()?;
    let owner = owner_id();
    tracing::info!(database = %db::target(&url), owner = %owner, jobs = %args.jobs.display(), "pgbackfill starting");
    let max_connections = args.max_connections.max(5);
    let pool = db::pool(&url, &format!("{APPLICATION_PREFIX}{owner}"), max_connections)
        .await
        .with_context(|| format!("connecting to {}", db::redact_url(&url)))?;
    // The supervisor prepares the progress table, retrying while the database comes up (sidecar
    // start order) and still answering signals meanwhile.
    let progress = Progress::new(pool.clone(), &args.db.schema);
    if let Some(listener) = listener {
        let state =
            http::AppState { metrics, liveness: liveness.clone(), pool: pool.clone(), progress: progress.clone() };
        let c = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(listener, state, c).await {
                tracing::error!(error = %e, "the HTTP endpoint failed: /healthz, /readyz, /status and /metrics are gone");
            }
        });
    }
    let measurements = throttle::spawn_controller(
        pool.clone(),
        ControllerConfig {
            poll_interval: args.lag_poll_interval,
            max_reply_age: args.max_reply_age,
            forget_standby_after: args.forget_standby_after,
            memory: Some(progress.clone()),
            remember: true,
            // One poll is bounded by its own timeout; allow two, so a slow machine is not "wedged".
            heartbeat: liveness.watch(
                "throttle",
                args.lag_poll_interval,
                ControllerConfig { poll_interval: args.lag_poll_interval, ..ControllerConfig::default() }
                    .poll_timeout()
                    * 2,
            ),
        },
        cancel.clone(),
    );
    let cfg = supervisor::Config {
        jobs_dir: args.jobs,
        max_jobs: args.max_jobs.max(1),
        max_workers: (max_connections - 4) as usize,
        owner,
        lease: args.lease,
        scan_interval: args.scan_interval,
        exit_when_done: args.exit_when_done,
        // One job's step may wait on the pool twice (acquire timeout each) while the database is
        // down: slow, not wedged.
        heartbeat: liveness.watch("supervisor", args.scan_interval, db::ACQUIRE_TIMEOUT * 2),
        shutdown_timeout: args.shutdown_timeout,
        url_file: args.db.reloadable_file(),
    };
    let outcome = supervisor::run(cfg, pool, progress, measurements, received, cancel.clone()).await;
    cancel.cancel();
    Ok(match outcome {
        Outcome::Shutdown => {
            tracing::info!("shut down");
            ExitCode::SUCCESS
        }
        Outcome::AllCompleted => {
            tracing::info!("every job completed");
            ExitCode::SUCCESS
        }
        Outcome::NotAllCompleted { failed } => {
            tracing::error!(jobs = %failed.join(", "), "every job ended, not all completed");
            ExitCode::from(1)
        }
        Outcome::Interrupted => ExitCode::from(130),
        Outcome::Fatal(why) => {
            tracing::error!("{why}");
            ExitCode::from(2)
        }
    })
}

/// Unique per process, readable in `status`: the pod name (HOSTNAME in Kubernetes) and pid.
fn owner_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgbackfill".into());
    // 64 random bits: in Kubernetes the pid is 1 and HOSTNAME survives a container restart, so
    // only these tell a restarted daemon from its dead predecessor.
    owner_from(&host, std::process::id(), rand::random::<u64>())
}

/// `host:pid:random`, short enough for the application name (see [`owner_id`]).
fn owner_from(host: &str, pid: u32, random: u64) -> String {
    let suffix = format!(":{pid}:{random:016x}");
    // The application name ("pgbackfill <owner>") must reach the server whole: the drain cancels
    // this daemon's own queries by it, and PostgreSQL truncates it to 63 bytes. Shorten the host
    // part, never the unique suffix.
    let room = 63usize.saturating_sub(APPLICATION_PREFIX.len() + suffix.len());
    let mut cut = host.len().min(room);
    while !host.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &host[..cut])
}

/// Every daemon connection's `application_name` is this followed by its owner id.
const APPLICATION_PREFIX: &str = "pgbackfill ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_application_name_fits_postgresql_and_keeps_the_unique_suffix() {
        let long_host = "pgbackfill-deployment-with-a-rather-long-name-7d9f8b6c5d-abcde";
        for host in [long_host, "é".repeat(40).as_str(), "short"] {
            let owner = owner_from(host, 4_194_304, u64::MAX);
            let name = format!("{APPLICATION_PREFIX}{owner}");
            assert!(name.len() <= 63, "{name} is {} bytes", name.len());
            assert!(owner.ends_with(":4194304:ffffffffffffffff"), "{owner}");
        }
        assert_eq!(owner_from("short", 1, 255), "short:1:00000000000000ff");
    }
}
