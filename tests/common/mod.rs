//! Real-PostgreSQL test harness: a primary plus one streaming hot standby on loopback.
//!
//! Every integration test file includes this with `mod common;`.
//!
//! - [`cluster()`] gives the cluster shared by all tests of one test binary. Each test takes its own
//!   database from it with [`Cluster::new_database`], so tests run in parallel.
//! - [`dedicated_cluster()`] gives a cluster owned by one test, for tests that pause replay, delay
//!   apply or stop the standby: on a shared cluster those would throttle every other test.
//!
//! Only paths, ports and URLs live in the shared static. Each `#[tokio::test]` has its own runtime,
//! and a pool created in one runtime breaks once that runtime ends, so tests create pools themselves
//! ([`TestDb::pool`]).
//!
//! Cleanup does not depend on the test process ending well: each cluster gets a detached reaper
//! (`sh`, in its own process group so Ctrl-C does not reach it) that blocks reading a pipe whose
//! only writer is the test process. When the test process exits, panics or is killed, the kernel
//! closes the pipe and the reaper stops both servers and removes the directory. A dedicated
//! cluster's `Drop` closes the pipe itself and waits for the reaper to finish.
//!
//! Server binaries come from `PG_BIN`, else the directory of `initdb` on `PATH` (symlinks
//! followed), else the highest `/usr/lib/postgresql/*/bin`. As root the servers run as the
//! `postgres` OS user (`initdb` and `pg_ctl` refuse root) in a directory under `/tmp` owned by it.

// Each test binary compiles its own copy of this module and uses only part of it; without this
// allow every binary would warn about the helpers it does not call.
#![allow(dead_code)]

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection};
use tokio::sync::OnceCell;

pub mod daemon;

/// Deadline for a server to start, a base backup, and the standby to reach `streaming`. Generous:
/// the machine has 2 cores, and other test binaries may be starting clusters at the same time.
const STARTUP_DEADLINE: Duration = Duration::from_secs(90);
/// Deadline for standby state changes (pause, resume, reload, catch-up).
const STANDBY_DEADLINE: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const SLOT: &str = "standby1";
const LOG_TAIL_LINES: usize = 40;

static SHARED: OnceCell<Result<Cluster, String>> = OnceCell::const_new();

/// The cluster shared by every test in this test binary, started on first use.
///
/// If startup fails, every test using it panics with the same message (including the server log
/// tail) rather than each retrying a startup that will fail again.
pub async fn cluster() -> &'static Cluster {
    let started = SHARED.get_or_init(|| async { Cluster::start().await.map_err(|e| format!("{e:#}")) }).await;
    match started {
        Ok(cluster) => cluster,
        Err(message) => panic!("shared test cluster failed to start: {message}"),
    }
}

/// A cluster owned by the calling test: stopped and removed when dropped (or by the reaper if the
/// test process dies first).
pub async fn dedicated_cluster() -> Cluster {
    match Cluster::start().await {
        Ok(cluster) => cluster,
        Err(e) => panic!("dedicated test cluster failed to start: {e:#}"),
    }
}

/// Polls `f` every ~100 ms until it returns true; panics naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !poll_until(deadline, f).await {
        panic!("timed out after {deadline:?} waiting for {what}");
    }
}

/// Polls `f` until it returns true or `deadline` passes; says which.
async fn poll_until<F, Fut>(deadline: Duration, mut f: F) -> bool
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

/// A primary and one streaming hot standby, each on its own free loopback port.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// Whether server commands go through `runuser -u postgres` (we are root).
    as_postgres: bool,
    primary_port: u16,
    standby_port: u16,
    standby_running: AtomicBool,
    next_db: AtomicU64,
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
    async fn start() -> anyhow::Result<Cluster> {
        let bin = find_pg_bin()?;
        let as_postgres = running_as_root()?;
        // As root, use /tmp rather than $TMPDIR: the postgres user must be able to traverse every
        // ancestor of the data directories, and /tmp is world-traversable.
        let base = if as_postgres { PathBuf::from("/tmp") } else { std::env::temp_dir() };
        // Named after the test binary, so `pgrep -a postgres` shows whose cluster it is.
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.file_stem()?.to_str()?.split('-').next()?.to_string()))
            .unwrap_or_default();
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgbackfill-test-{binary}-"))
            .tempdir_in(&base)
            .with_context(|| format!("creating a temporary directory in {}", base.display()))?
            .keep();
        std::fs::create_dir(dir.join("sock")).context("creating the socket directory")?;

        // Spawn the reaper before any server exists, so a failure anywhere below is cleaned up.
        let reaper = spawn_reaper(&dir, &bin, as_postgres)?;
        let mut cluster = Cluster {
            dir,
            bin,
            as_postgres,
            primary_port: 0,
            standby_port: 0,
            standby_running: AtomicBool::new(false),
            next_db: AtomicU64::new(0),
            reaper: Some(reaper),
        };
        // On error `cluster` is dropped here, which stops whatever did start.
        cluster.boot().await?;
        Ok(cluster)
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
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
        // fsync = off: durability is not under test, and it keeps WAL-heavy tests fast. WAL volume
        // (full_page_writes) and synchronous_commit stay at their defaults, so a commit's WAL is
        // flushed, and sent to the standby, before COMMIT returns, as in production.
        let conf = format!(
            "\n# pgbackfill test harness\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{sock}'\n\
             wal_level = replica\n\
             max_wal_senders = 5\n\
             max_replication_slots = 5\n\
             hot_standby = on\n\
             wal_receiver_status_interval = 1s\n\
             wal_retrieve_retry_interval = 200ms\n\
             fsync = off\n\
             shared_buffers = 64MB\n\
             max_wal_size = 1GB\n",
            sock = self.dir.join("sock").display()
        );
        append(&primary.join("postgresql.conf"), &conf)?;
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
    /// took it between our probe and the server's bind (other test binaries run concurrently).
    async fn start_on_free_port(&self, data: &Path, name: &str) -> anyhow::Result<u16> {
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

    async fn pg_ctl_start(&self, data: &Path, name: &str) -> anyhow::Result<()> {
        self.server_cmd("pg_ctl")
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(self.log_path(name))
            .args(["-w", "-t", &STARTUP_DEADLINE.as_secs().to_string(), "start"])
            .run()
            .await
    }

    async fn pg_ctl(&self, data: &Path, args: &[&str]) -> anyhow::Result<()> {
        self.server_cmd("pg_ctl").arg("-D").arg(data).args(args).run().await
    }

    /// Waits until the primary reports the standby's walreceiver as `streaming`.
    async fn wait_streaming(&self, deadline: Duration) -> anyhow::Result<()> {
        let url = self.admin_url();
        let streaming = poll_until(deadline, || async {
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
        .await;
        if streaming { Ok(()) } else { bail!("standby did not reach state 'streaming' within {deadline:?}") }
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

    fn with_log(&self, e: anyhow::Error, name: &str) -> anyhow::Error {
        let path = self.log_path(name);
        e.context(format!("\n--- tail of {} ---\n{}\n---", path.display(), self.log_tail(name)))
    }

    // ----- databases -----

    /// Creates a fresh database with a unique name on the primary (named after the test thread,
    /// so a leftover is easy to trace).
    pub async fn new_database(&self) -> TestDb {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let thread = std::thread::current();
        let hint: String = thread
            .name()
            .unwrap_or("test")
            .rsplit("::")
            .next()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(40)
            .collect();
        // Only [a-z0-9_], so quoting cannot be escaped.
        let name = format!("t{n}_{hint}");
        let mut conn = self.admin_conn().await;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        TestDb {
            url: self.primary_url(&name),
            standby_url: self.standby_url(&name),
            admin_url: self.admin_url(),
            standby_admin_url: self.standby_admin_url(),
            name,
        }
    }

    /// A connection to the primary's `postgres` database.
    pub async fn admin_conn(&self) -> PgConnection {
        connect(&self.admin_url()).await
    }

    /// A connection to the standby's `postgres` database.
    pub async fn standby_admin_conn(&self) -> PgConnection {
        connect(&self.standby_admin_url()).await
    }

    // ----- replication -----

    /// Bytes of WAL the primary has written that the standby has not replayed yet, as the primary
    /// sees it in `pg_stat_replication` (None while no walsender row has a replay position).
    pub async fn replay_lag_bytes(&self) -> Option<i64> {
        let mut conn = self.admin_conn().await;
        let lag: Option<i64> = sqlx::query_scalar(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint \
             FROM pg_stat_replication WHERE replay_lsn IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&mut conn)
        .await
        .expect("reading pg_stat_replication")
        .flatten();
        let _ = conn.close().await;
        lag
    }

    /// Waits until the standby has replayed everything the primary had written when called.
    pub async fn wait_standby_caught_up(&self) {
        wait_replayed(&self.admin_url(), &self.standby_admin_url()).await;
    }

    /// Pauses WAL replay on the standby and waits until it is actually paused (the function only
    /// requests a pause). Use a [`dedicated_cluster`]: a paused standby lags every database.
    pub async fn pause_replay(&self) {
        let mut standby = self.standby_admin_conn().await;
        sqlx::query("SELECT pg_wal_replay_pause()").execute(&mut standby).await.expect("pg_wal_replay_pause()");
        let url = self.standby_admin_url();
        let admin = self.admin_url();
        wait_until(STANDBY_DEADLINE, "replay pause state 'paused'", || async {
            if replay_pause_state(&url).await == "paused" {
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
    }

    /// Resumes WAL replay on the standby and waits until it reports `not paused`.
    pub async fn resume_replay(&self) {
        let mut standby = self.standby_admin_conn().await;
        sqlx::query("SELECT pg_wal_replay_resume()").execute(&mut standby).await.expect("pg_wal_replay_resume()");
        let _ = standby.close().await;
        let url = self.standby_admin_url();
        wait_until(STANDBY_DEADLINE, "replay pause state 'not paused'", || async {
            replay_pause_state(&url).await == "not paused"
        })
        .await;
    }

    /// Sets `recovery_min_apply_delay` on the standby (no restart needed) and waits until new
    /// sessions see it. It delays commit records only, which gives a steady lag under writes.
    pub async fn set_apply_delay(&self, delay: Duration) {
        let ms = delay.as_millis();
        let mut standby = self.standby_admin_conn().await;
        sqlx::query(AssertSqlSafe(format!("ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'")))
            .execute(&mut standby)
            .await
            .expect("ALTER SYSTEM SET recovery_min_apply_delay");
        sqlx::query("SELECT pg_reload_conf()").execute(&mut standby).await.expect("pg_reload_conf()");
        let _ = standby.close().await;
        let url = self.standby_admin_url();
        let want = ms.to_string();
        wait_until(STANDBY_DEADLINE, "recovery_min_apply_delay to take effect", || async {
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
        .await;
    }

    /// Stops the standby (fast shutdown). Its slot stays on the primary, which keeps WAL for it.
    pub async fn stop_standby(&self) {
        self.pg_ctl(&self.standby_dir(), &["-w", "-m", "fast", "stop"])
            .await
            .map_err(|e| self.with_log(e, "standby"))
            .expect("stopping the standby");
        self.standby_running.store(false, Ordering::SeqCst);
    }

    /// Starts the standby again and waits until it streams.
    pub async fn start_standby(&self) {
        self.pg_ctl_start(&self.standby_dir(), "standby")
            .await
            .map_err(|e| self.with_log(e, "standby"))
            .expect("starting the standby");
        self.standby_running.store(true, Ordering::SeqCst);
        self.wait_streaming(STARTUP_DEADLINE)
            .await
            .map_err(|e| self.with_log(e, "standby"))
            .expect("standby streaming after start");
    }

    /// Restarts the primary (fast shutdown: open connections are terminated), waits until it
    /// accepts connections and, if the standby is running, until it streams again.
    pub async fn restart_primary(&self) {
        // `-l` matters: without it the new postmaster writes to pg_ctl's stdout/stderr, which are
        // our capture pipes, and collecting pg_ctl's output would wait for the postmaster to exit.
        let timeout = STARTUP_DEADLINE.as_secs().to_string();
        let log = self.log_path("primary");
        self.pg_ctl(
            &self.primary_dir(),
            &["-w", "-t", &timeout, "-m", "fast", "-l", &log.to_string_lossy(), "restart"],
        )
        .await
        .map_err(|e| self.with_log(e, "primary"))
        .expect("restarting the primary");
        if self.standby_running.load(Ordering::SeqCst) {
            self.wait_streaming(STARTUP_DEADLINE)
                .await
                .map_err(|e| self.with_log(e, "standby"))
                .expect("standby streaming after primary restart");
        }
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

/// A fresh database on the cluster, for one test.
pub struct TestDb {
    /// The database name.
    pub name: String,
    /// `postgres://postgres@127.0.0.1:PORT/name` on the primary.
    pub url: String,
    /// The same database on the standby.
    pub standby_url: String,
    admin_url: String,
    standby_admin_url: String,
}

impl TestDb {
    /// A small pool on the primary. Create it inside the test: pools are tied to the runtime of
    /// the test that made them.
    pub async fn pool(&self) -> PgPool {
        pool(&self.url).await
    }

    /// A small pool on the standby (read only), once the database has reached it.
    pub async fn standby_pool(&self) -> PgPool {
        self.wait_on_standby().await;
        pool(&self.standby_url).await
    }

    /// Waits until the standby has replayed everything written on the primary so far, including
    /// this database's creation.
    pub async fn wait_on_standby(&self) {
        wait_replayed(&self.admin_url, &self.standby_admin_url).await;
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
    async fn run(&mut self) -> anyhow::Result<()> {
        // A bound, so a wedged tool fails the test instead of hanging it (kill_on_drop ends it).
        let out = tokio::time::timeout(2 * STARTUP_DEADLINE, self.cmd.output())
            .await
            .map_err(|_| anyhow!("{} did not finish in {:?}", self.program, 2 * STARTUP_DEADLINE))?
            .with_context(|| format!("running {}", self.program))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(anyhow!(
                "{} failed ({}):\n{}{}",
                self.program,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting a pool to {url}: {e}"))
}

async fn replay_pause_state(standby_admin_url: &str) -> String {
    let mut conn = connect(standby_admin_url).await;
    let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
        .fetch_one(&mut conn)
        .await
        .expect("pg_get_wal_replay_pause_state()");
    let _ = conn.close().await;
    state
}

/// Waits until the standby's replay position reaches the primary's current WAL position.
async fn wait_replayed(primary_admin_url: &str, standby_admin_url: &str) {
    let mut primary = connect(primary_admin_url).await;
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut primary)
        .await
        .expect("pg_current_wal_lsn()");
    let _ = primary.close().await;
    let what = format!("standby replay to reach {target}");
    wait_until(STANDBY_DEADLINE, &what, || async {
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
    .await;
}

/// `PG_BIN`, else the directory of `initdb` on `PATH` (following symlinks), else the highest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_pg_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        bail!("PG_BIN={} has no initdb", dir.display());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for entry in std::env::split_paths(&path) {
            let candidate = entry.join("initdb");
            if candidate.is_file() {
                let real =
                    std::fs::canonicalize(&candidate).with_context(|| format!("resolving {}", candidate.display()))?;
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
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server binaries found: set PG_BIN to the directory holding initdb, \
             put initdb on PATH, or install them (Debian: apt-get install postgresql)"
        ),
    }
}

/// True when the process runs as root: `/proc/self` is owned by the effective uid.
fn running_as_root() -> anyhow::Result<bool> {
    let meta = std::fs::metadata("/proc/self").context("reading /proc/self")?;
    Ok(meta.uid() == 0)
}

/// Asks the OS for a free loopback port. Someone may take it before the server binds; the caller
/// retries on "Address already in use".
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("probing for a free port")?;
    Ok(listener.local_addr()?.port())
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn run_checked(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The reaper waits for EOF on its stdin. We hold the only write end (Rust opens pipes with
/// O_CLOEXEC, so no other child inherits it); the kernel closes it however this process ends.
/// It then stops both servers (immediate: nothing to keep) and removes the directory. Its own
/// process group keeps a terminal's Ctrl-C from killing it along with the test.
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

fn spawn_reaper(dir: &Path, bin: &Path, as_postgres: bool) -> anyhow::Result<Reaper> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(REAPER_SCRIPT)
        .arg("pgbackfill-test-reaper")
        .arg(dir)
        .arg(bin)
        .arg(if as_postgres { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .context("spawning the cleanup process")?;
    let pipe = child.stdin.take().expect("piped stdin");
    Ok(Reaper { child, pipe })
}
