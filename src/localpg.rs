//! A throwaway local PostgreSQL: a primary plus one streaming hot standby on loopback.
//!
//! Tooling, not part of the daemon: `pgbackfill demo` and the integration tests (`tests/common`)
//! both start their clusters here, so there is one copy of the fiddly parts (binary discovery,
//! running as the `postgres` user, free ports, base backup, waiting for streaming, cleanup).
//!
//! Cleanup does not depend on the process ending well: each cluster gets a detached reaper (`sh`,
//! in its own process group so a terminal's Ctrl-C does not reach it) that blocks reading a pipe
//! whose only writer is this process. When the process exits, panics or is killed, the kernel
//! closes the pipe and the reaper stops both servers and removes the directory. Dropping a
//! [`Cluster`] closes the pipe itself and waits for the reaper to finish.
//!
//! Server binaries come from `PG_BIN`, else the directory of `initdb` on `PATH` (symlinks
//! followed), else the highest `/usr/lib/postgresql/*/bin`. As root the servers run as the
//! `postgres` OS user (`initdb` and `pg_ctl` refuse root) in a directory under `/tmp` owned by it.
//!
//! Server settings live in one place, [`Options`] and `Cluster::server_conf`: add a field there
//! (as `wal_level` is) rather than appending to `postgresql.conf` from callers.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

/// Deadline for a server to start, a base backup, and the standby to reach `streaming`. Generous:
/// the machine may have 2 cores, with other clusters starting at the same time.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(90);
/// Deadline for standby state changes (pause, resume, reload, catch-up).
pub const STANDBY_DEADLINE: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const SLOT: &str = "standby1";
const LOG_TAIL_LINES: usize = 40;

/// What went wrong while managing the local cluster. Messages are complete sentences for a person:
/// they carry the server log tail where one helps.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "no PostgreSQL server binaries found: install them (Debian/Ubuntu: apt-get install -y postgresql), \
         or set PG_BIN to the directory holding initdb, or put initdb on PATH"
    )]
    NoServerBinaries,
    #[error(
        "PG_BIN={} has no initdb: point it at the directory holding the server binaries, or unset it \
         (then initdb on PATH or /usr/lib/postgresql/*/bin is used; apt-get install -y postgresql)",
        .0.display()
    )]
    BadPgBin(PathBuf),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{program} failed ({status}):\n{output}")]
    Command { program: String, status: String, output: String },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("{what}: {error}")]
    Sql { what: String, error: sqlx::Error },
    #[error("{error}\n--- tail of {} ---\n{tail}\n---", path.display())]
    WithLog { error: Box<LocalPgError>, path: PathBuf, tail: String },
}

type Result<T, E = LocalPgError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalPgError {
    let what = what.into();
    move |error| LocalPgError::Io { what, error }
}

fn sql(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> LocalPgError {
    let what = what.into();
    move |error| LocalPgError::Sql { what, error }
}

/// `wal_level` of the primary (the standby copies it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalLevel {
    #[default]
    Replica,
    /// Needed for logical replication slots.
    Logical,
}

impl WalLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            WalLevel::Replica => "replica",
            WalLevel::Logical => "logical",
        }
    }
}

/// How to set up a cluster. The one place for server settings callers may vary.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prefix of the temporary directory's name (`pgbackfill-test-engine-`, `pgbackfill-demo-`):
    /// it shows in `ls /tmp` and in `ps` (the servers' `-D`), so a leftover is easy to trace.
    pub dir_prefix: String,
    pub wal_level: WalLevel,
}

impl Default for Options {
    fn default() -> Self {
        Self { dir_prefix: "pgbackfill-localpg-".into(), wal_level: WalLevel::default() }
    }
}

/// Polls `f` every ~100 ms until it returns true or `deadline` passes; says which.
pub async fn poll_until<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn wait_for<F, Fut>(deadline: Duration, what: &str, f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if poll_until(deadline, f).await {
        Ok(())
    } else {
        Err(LocalPgError::Timeout { what: what.to_string(), after: deadline })
    }
}

/// A primary and one streaming hot standby, each on its own free loopback port.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// Whether server commands go through `runuser -u postgres` (we are root).
    as_postgres: bool,
    options: Options,
    primary_port: u16,
    standby_port: u16,
    standby_running: AtomicBool,
    reaper: Option<Reaper>,
}

/// The detached cleanup process and the write end of the pipe it waits on.
struct Reaper {
    child: Child,
    pipe: ChildStdin,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(Reaper { mut child, pipe }) = self.reaper.take() {
            // Closing the pipe is the reaper's signal; waiting makes the cleanup synchronous.
            drop(pipe);
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// Starts a primary and a standby and waits until the standby streams. On error nothing is
    /// left behind.
    pub async fn start(options: Options) -> Result<Cluster> {
        let bin = find_pg_bin()?;
        let as_postgres = running_as_root()?;
        // As root, use /tmp rather than $TMPDIR: the postgres user must be able to traverse every
        // ancestor of the data directories, and /tmp is world-traversable.
        let base = if as_postgres { PathBuf::from("/tmp") } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new()
            .prefix(&options.dir_prefix)
            .tempdir_in(&base)
            .map_err(io(format!("creating a temporary directory in {}", base.display())))?
            .keep();
        // Spawn the reaper before anything else can fail, so every failure below is cleaned up.
        let reaper = spawn_reaper(&dir, &bin, as_postgres);
        let reaper = match reaper {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut cluster = Cluster {
            dir,
            bin,
            as_postgres,
            options,
            primary_port: 0,
            standby_port: 0,
            standby_running: AtomicBool::new(false),
            reaper: Some(reaper),
        };
        // On error `cluster` is dropped here, which stops whatever did start.
        cluster.boot().await?;
        Ok(cluster)
    }

    /// Leaves both servers running after this value (and the process) is gone: the reaper is
    /// stopped without cleaning up. Returns the directory; [`Cluster::stop_command`] says how to
    /// remove it later.
    pub fn keep(mut self) -> PathBuf {
        if let Some(Reaper { mut child, pipe }) = self.reaper.take() {
            // SIGKILL cannot be trapped: the reaper dies without cleaning up. Its `cat` ends when
            // our write end closes.
            let _ = child.kill();
            let _ = child.wait();
            drop(pipe);
        }
        self.dir.clone()
    }

    /// A shell command that stops both servers and removes the directory.
    pub fn stop_command(&self) -> String {
        let runuser = if self.as_postgres { "runuser -u postgres -- " } else { "" };
        let (bin, dir) = (self.bin.display(), self.dir.display());
        format!(
            "{runuser}{bin}/pg_ctl -D {dir}/standby -m fast stop; {runuser}{bin}/pg_ctl -D {dir}/primary -m fast stop; \
             rm -rf {dir}"
        )
    }

    /// `postgresql.conf` additions for the primary (the standby inherits them via the base backup).
    fn server_conf(&self) -> String {
        // fsync = off: durability is not under test, and it keeps WAL-heavy runs fast. WAL volume
        // (full_page_writes) and synchronous_commit stay at their defaults, so a commit's WAL is
        // flushed, and sent to the standby, before COMMIT returns, as in production.
        format!(
            "\n# pgbackfill localpg\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{sock}'\n\
             wal_level = {wal_level}\n\
             max_wal_senders = 5\n\
             max_replication_slots = 5\n\
             hot_standby = on\n\
             wal_receiver_status_interval = 1s\n\
             wal_retrieve_retry_interval = 200ms\n\
             fsync = off\n\
             shared_buffers = 64MB\n\
             max_wal_size = 1GB\n",
            sock = self.dir.join("sock").display(),
            wal_level = self.options.wal_level.as_str(),
        )
    }

    async fn boot(&mut self) -> Result<()> {
        std::fs::create_dir(self.dir.join("sock")).map_err(io("creating the socket directory"))?;
        if self.as_postgres {
            run_checked(std::process::Command::new("chown").args([
                "-R",
                "postgres:postgres",
                &self.dir.to_string_lossy(),
            ]))?;
        }
        let primary = self.primary_dir();
        self.server_cmd("initdb")
            .arg("-D")
            .arg(&primary)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .run()
            .await?;
        append(&primary.join("postgresql.conf"), &self.server_conf())?;
        self.primary_port = self.start_on_free_port(&primary, "primary").await?;

        // `-R` writes standby.signal plus primary_conninfo/primary_slot_name; `-C -S` creates the
        // slot, so the primary keeps WAL the standby has not received yet.
        self.server_cmd("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &self.primary_port.to_string()])
            .args(["-U", "postgres", "-D"])
            .arg(self.standby_dir())
            .args(["-R", "-X", "stream", "-C", "-S", SLOT, "--checkpoint=fast", "--no-sync"])
            .run()
            .await
            .map_err(|e| self.with_log(e, "primary"))?;
        self.standby_port = self.start_on_free_port(&self.standby_dir(), "standby").await?;
        self.standby_running.store(true, Ordering::SeqCst);
        self.wait_streaming(STARTUP_DEADLINE).await.map_err(|e| self.with_log(self.with_log(e, "primary"), "standby"))
    }

    /// Picks a free port and starts the server on it; retries with another port if someone else
    /// took it between our probe and the server's bind (other clusters start concurrently).
    async fn start_on_free_port(&self, data: &Path, name: &str) -> Result<u16> {
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            // Appended: the last setting in postgresql.conf wins (the standby's copy of the file
            // still has the primary's port).
            append(&data.join("postgresql.conf"), &format!("port = {port}\n"))?;
            match self.pg_ctl_start(data, name).await {
                Ok(()) => return Ok(port),
                Err(e) if self.log_tail(name).contains("Address already in use") => {
                    last_err = Some(e);
                }
                Err(e) => return Err(self.with_log(e, name)),
            }
        }
        Err(self.with_log(last_err.expect("at least one attempt"), name))
    }

    async fn pg_ctl_start(&self, data: &Path, name: &str) -> Result<()> {
        self.server_cmd("pg_ctl")
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(self.log_path(name))
            .args(["-w", "-t", &STARTUP_DEADLINE.as_secs().to_string(), "start"])
            .run()
            .await
    }

    async fn pg_ctl(&self, data: &Path, args: &[&str]) -> Result<()> {
        self.server_cmd("pg_ctl").arg("-D").arg(data).args(args).run().await
    }

    /// Waits until the primary reports the standby's walreceiver as `streaming`.
    async fn wait_streaming(&self, deadline: Duration) -> Result<()> {
        let url = self.admin_url();
        wait_for(deadline, "the standby to reach state 'streaming'", || async {
            let Ok(mut conn) = PgConnection::connect(&url).await else {
                return false;
            };
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM pg_stat_replication WHERE state = 'streaming' LIMIT 1")
                    .fetch_optional(&mut conn)
                    .await
                    .ok()
                    .flatten();
            let _ = conn.close().await;
            state.is_some()
        })
        .await
    }

    // ----- URLs and paths -----

    /// URL of database `db` on the primary.
    pub fn primary_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.primary_port)
    }

    /// URL of database `db` on the standby.
    pub fn standby_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.standby_port)
    }

    /// URL of the `postgres` database on the primary, as superuser.
    pub fn admin_url(&self) -> String {
        self.primary_url("postgres")
    }

    /// URL of the `postgres` database on the standby, as superuser.
    pub fn standby_admin_url(&self) -> String {
        self.standby_url("postgres")
    }

    pub fn primary_port(&self) -> u16 {
        self.primary_port
    }

    pub fn standby_port(&self) -> u16 {
        self.standby_port
    }

    /// The temporary directory holding both data directories, the sockets and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn primary_dir(&self) -> PathBuf {
        self.dir.join("primary")
    }

    fn standby_dir(&self) -> PathBuf {
        self.dir.join("standby")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The last lines of a server's log (`name` is `primary` or `standby`).
    pub fn log_tail(&self, name: &str) -> String {
        match std::fs::read_to_string(self.log_path(name)) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(no log: {e})"),
        }
    }

    fn with_log(&self, error: LocalPgError, name: &str) -> LocalPgError {
        LocalPgError::WithLog { error: Box::new(error), path: self.log_path(name), tail: self.log_tail(name) }
    }

    // ----- connections -----

    /// A connection to the primary's `postgres` database.
    pub async fn admin_conn(&self) -> Result<PgConnection> {
        connect(&self.admin_url()).await
    }

    /// A connection to the standby's `postgres` database.
    pub async fn standby_admin_conn(&self) -> Result<PgConnection> {
        connect(&self.standby_admin_url()).await
    }

    // ----- replication -----

    /// Bytes of WAL the primary has written that the standby has not replayed yet, as the primary
    /// sees it in `pg_stat_replication` (None while no walsender row has a replay position).
    pub async fn replay_lag_bytes(&self) -> Result<Option<i64>> {
        let mut conn = self.admin_conn().await?;
        let lag: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint \
             FROM pg_stat_replication WHERE replay_lsn IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&mut conn)
        .await
        .map_err(sql("reading pg_stat_replication"))?;
        let _ = conn.close().await;
        Ok(lag.flatten())
    }

    /// Waits until the standby has replayed everything the primary had written when called.
    pub async fn wait_standby_caught_up(&self) -> Result<()> {
        wait_replayed(&self.admin_url(), &self.standby_admin_url()).await
    }

    /// Pauses WAL replay on the standby and waits until it is actually paused (the function only
    /// requests a pause). A paused standby lags every database of the cluster.
    pub async fn pause_replay(&self) -> Result<()> {
        let mut standby = self.standby_admin_conn().await?;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&mut standby)
            .await
            .map_err(sql("pg_wal_replay_pause()"))?;
        let url = self.standby_admin_url();
        let admin = self.admin_url();
        let paused = wait_for(STANDBY_DEADLINE, "replay pause state 'paused'", || async {
            if replay_pause_state(&url).await.as_deref() == Some("paused") {
                return true;
            }
            // The startup process confirms a pause only when it looks at the next WAL record:
            // give it one, in case the primary is idle.
            if let Ok(mut conn) = PgConnection::connect(&admin).await {
                let _ = sqlx::query("SELECT txid_current()").execute(&mut conn).await;
                let _ = conn.close().await;
            }
            false
        })
        .await;
        let _ = standby.close().await;
        paused
    }

    /// Resumes WAL replay on the standby and waits until it reports `not paused`.
    pub async fn resume_replay(&self) -> Result<()> {
        let mut standby = self.standby_admin_conn().await?;
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&mut standby)
            .await
            .map_err(sql("pg_wal_replay_resume()"))?;
        let _ = standby.close().await;
        let url = self.standby_admin_url();
        wait_for(STANDBY_DEADLINE, "replay pause state 'not paused'", || async {
            replay_pause_state(&url).await.as_deref() == Some("not paused")
        })
        .await
    }

    /// Sets `recovery_min_apply_delay` on the standby (no restart needed) and waits until new
    /// sessions see it. It delays commit records only, which gives a steady lag under writes.
    pub async fn set_apply_delay(&self, delay: Duration) -> Result<()> {
        let ms = delay.as_millis();
        let mut standby = self.standby_admin_conn().await?;
        sqlx::query(AssertSqlSafe(format!("ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'")))
            .execute(&mut standby)
            .await
            .map_err(sql("ALTER SYSTEM SET recovery_min_apply_delay"))?;
        sqlx::query("SELECT pg_reload_conf()").execute(&mut standby).await.map_err(sql("pg_reload_conf()"))?;
        let _ = standby.close().await;
        let url = self.standby_admin_url();
        let want = ms.to_string();
        wait_for(STANDBY_DEADLINE, "recovery_min_apply_delay to take effect", || async {
            let Ok(mut conn) = PgConnection::connect(&url).await else {
                return false;
            };
            let setting: Option<String> =
                sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'")
                    .fetch_optional(&mut conn)
                    .await
                    .ok()
                    .flatten();
            let _ = conn.close().await;
            setting.as_deref() == Some(want.as_str())
        })
        .await
    }

    /// Stops the standby (fast shutdown). Its slot stays on the primary, which keeps WAL for it.
    pub async fn stop_standby(&self) -> Result<()> {
        self.pg_ctl(&self.standby_dir(), &["-w", "-m", "fast", "stop"])
            .await
            .map_err(|e| self.with_log(e, "standby"))?;
        self.standby_running.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Starts the standby again and waits until it streams.
    pub async fn start_standby(&self) -> Result<()> {
        self.pg_ctl_start(&self.standby_dir(), "standby").await.map_err(|e| self.with_log(e, "standby"))?;
        self.standby_running.store(true, Ordering::SeqCst);
        self.wait_streaming(STARTUP_DEADLINE).await.map_err(|e| self.with_log(e, "standby"))
    }

    /// Restarts the primary (fast shutdown: open connections are terminated), waits until it
    /// accepts connections and, if the standby is running, until it streams again.
    pub async fn restart_primary(&self) -> Result<()> {
        // `-l` matters: without it the new postmaster writes to pg_ctl's stdout/stderr, which are
        // our capture pipes, and collecting pg_ctl's output would wait for the postmaster to exit.
        let timeout = STARTUP_DEADLINE.as_secs().to_string();
        let log = self.log_path("primary");
        self.pg_ctl(
            &self.primary_dir(),
            &["-w", "-t", &timeout, "-m", "fast", "-l", &log.to_string_lossy(), "restart"],
        )
        .await
        .map_err(|e| self.with_log(e, "primary"))?;
        if self.standby_running.load(Ordering::SeqCst) {
            self.wait_streaming(STARTUP_DEADLINE).await.map_err(|e| self.with_log(e, "standby"))?;
        }
        Ok(())
    }

    // ----- running server binaries -----

    /// A command for a PostgreSQL binary, run as the `postgres` user when we are root, from the
    /// cluster directory (a root-only working directory would make the tools complain).
    fn server_cmd(&self, program: &str) -> ServerCmd {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            tokio::process::Command::new(&exe)
        };
        cmd.current_dir(&self.dir).stdin(Stdio::null()).kill_on_drop(true);
        ServerCmd { cmd, program: program.to_string() }
    }
}

struct ServerCmd {
    cmd: tokio::process::Command,
    program: String,
}

impl ServerCmd {
    fn arg(&mut self, a: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.cmd.arg(a);
        self
    }

    fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Runs to completion; an error carries the command's output.
    async fn run(&mut self) -> Result<()> {
        // A bound, so a wedged tool fails instead of hanging (kill_on_drop ends it).
        let out = tokio::time::timeout(2 * STARTUP_DEADLINE, self.cmd.output())
            .await
            .map_err(|_| LocalPgError::Timeout {
                what: format!("{} to finish", self.program),
                after: 2 * STARTUP_DEADLINE,
            })?
            .map_err(io(format!("running {}", self.program)))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LocalPgError::Command {
                program: self.program.clone(),
                status: out.status.to_string(),
                output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            })
        }
    }
}

/// A single connection, with the URL in the error.
pub async fn connect(url: &str) -> Result<PgConnection> {
    PgConnection::connect(url).await.map_err(sql(format!("connecting to {url}")))
}

/// `None` when the standby cannot be asked (it is restarting, say): the caller polls again.
async fn replay_pause_state(standby_admin_url: &str) -> Option<String> {
    let mut conn = PgConnection::connect(standby_admin_url).await.ok()?;
    let state = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()").fetch_one(&mut conn).await.ok();
    let _ = conn.close().await;
    state
}

/// Waits until the standby's replay position reaches the primary's current WAL position.
pub async fn wait_replayed(primary_admin_url: &str, standby_admin_url: &str) -> Result<()> {
    let mut primary = connect(primary_admin_url).await?;
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut primary)
        .await
        .map_err(sql("pg_current_wal_lsn()"))?;
    let _ = primary.close().await;
    let what = format!("standby replay to reach {target}");
    wait_for(STANDBY_DEADLINE, &what, || async {
        let Ok(mut conn) = PgConnection::connect(standby_admin_url).await else {
            return false;
        };
        let done: Option<bool> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn")
            .bind(&target)
            .fetch_one(&mut conn)
            .await
            .ok()
            .flatten();
        let _ = conn.close().await;
        done == Some(true)
    })
    .await
}

/// `PG_BIN`, else the directory of `initdb` on `PATH` (following symlinks), else the highest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_pg_bin() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(LocalPgError::BadPgBin(dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for entry in std::env::split_paths(&path) {
            let candidate = entry.join("initdb");
            if candidate.is_file() {
                let real =
                    std::fs::canonicalize(&candidate).map_err(io(format!("resolving {}", candidate.display())))?;
                if let Some(dir) = real.parent() {
                    return Ok(dir.to_path_buf());
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or(LocalPgError::NoServerBinaries)
}

/// True when the process runs as root: `/proc/self` is owned by the effective uid.
fn running_as_root() -> Result<bool> {
    let meta = std::fs::metadata("/proc/self").map_err(io("reading /proc/self"))?;
    Ok(meta.uid() == 0)
}

/// Asks the OS for a free loopback port. Someone may take it before the server binds; the caller
/// retries on "Address already in use".
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("probing for a free port"))?;
    Ok(listener.local_addr().map_err(io("probing for a free port"))?.port())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).map_err(io(format!("opening {}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(io(format!("writing {}", path.display())))
}

fn run_checked(cmd: &mut std::process::Command) -> Result<()> {
    let out = cmd.output().map_err(io(format!("running {cmd:?}")))?;
    if !out.status.success() {
        return Err(LocalPgError::Command {
            program: format!("{cmd:?}"),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// The reaper waits for EOF on its stdin. We hold the only write end (Rust opens pipes with
/// O_CLOEXEC, so no other child inherits it); the kernel closes it however this process ends.
/// It then stops both servers (immediate: nothing to keep) and removes the directory. Its own
/// process group keeps a terminal's Ctrl-C from killing it along with us.
const REAPER_SCRIPT: &str = r#"
trap '' INT HUP TERM PIPE
dir=$1; bin=$2; as_postgres=$3
as_owner() { if [ "$as_postgres" = 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cat >/dev/null
for d in standby primary; do
  if [ -f "$dir/$d/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/$d" -m immediate -w -t 30 stop >/dev/null 2>&1
  fi
done
rm -rf -- "$dir"
"#;

fn spawn_reaper(dir: &Path, bin: &Path, as_postgres: bool) -> Result<Reaper> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(REAPER_SCRIPT)
        .arg("pgbackfill-localpg-reaper")
        .arg(dir)
        .arg(bin)
        .arg(if as_postgres { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .map_err(io("spawning the cleanup process"))?;
    let pipe = child.stdin.take().expect("piped stdin");
    Ok(Reaper { child, pipe })
}
