//! Driving the real `pgbackfill` binary from tests: a jobs directory, daemons, CLI calls.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgbackfill"))
}

/// A temporary jobs directory.
pub struct JobsDir {
    dir: tempfile::TempDir,
}

impl JobsDir {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `<file>.yaml` with the given YAML text.
    pub fn write(&self, file: &str, yaml: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{file}.yaml"));
        std::fs::write(&p, yaml).expect("write spec");
        p
    }

    pub fn remove(&self, file: &str) {
        let _ = std::fs::remove_file(self.dir.path().join(format!("{file}.yaml")));
    }
}

/// A running `pgbackfill run` process; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

/// Options that make daemons react quickly in tests.
pub const FAST: &[&str] =
    &["--scan-interval", "200ms", "--lag-poll-interval", "200ms", "--lease", "3s", "--metrics-addr", ""];

/// The [`FAST`] options that `extra` does not set itself (clap rejects an option given twice).
fn fast_unless_overridden(extra: &[&str]) -> Vec<&'static str> {
    FAST.chunks(2).filter(|pair| !extra.contains(&pair[0])).flatten().copied().collect()
}

impl Daemon {
    /// Start a daemon on `url` over `jobs`, with [`FAST`] settings plus `extra` arguments (which
    /// replace a FAST option of the same name, e.g. `--metrics-addr 127.0.0.1:PORT`).
    pub fn start(url: &str, jobs: &Path, extra: &[&str]) -> Daemon {
        Self::spawn(jobs, extra, |c| {
            c.env("DATABASE_URL", url);
        })
    }

    /// Like [`Daemon::start`], with the URL in a file (`DATABASE_URL_FILE`, re-read on SIGHUP).
    pub fn start_with_url_file(url_file: &Path, jobs: &Path, extra: &[&str]) -> Daemon {
        Self::spawn(jobs, extra, |c| {
            c.env_remove("DATABASE_URL").env("DATABASE_URL_FILE", url_file);
        })
    }

    fn spawn(jobs: &Path, extra: &[&str], database: impl FnOnce(&mut Command)) -> Daemon {
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join("daemon.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut command = Command::new(bin());
        command
            .arg("run")
            .arg("--jobs")
            .arg(jobs)
            .args(fast_unless_overridden(extra))
            .args(extra)
            .env("PGBACKFILL_LOG", "info,pgbackfill=debug,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        database(&mut command);
        let child = command.spawn().expect("spawn pgbackfill run");
        Daemon { child: Some(child), log, _logdir: logdir }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The daemon's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the crash we must survive.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: graceful shutdown.
    pub fn terminate(&mut self) {
        self.send("TERM");
    }

    /// Send a signal by name (`USR1`, `HUP` …) to the daemon, which must still be running.
    pub fn signal(&self, name: &str) {
        assert!(self.send(name), "kill -{name} {} failed; log:\n{}", self.pid(), self.log());
    }

    fn send(&self, name: &str) -> bool {
        let Some(c) = &self.child else { return false };
        Command::new("kill").arg(format!("-{name}")).arg(c.id().to_string()).status().is_ok_and(|s| s.success())
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().expect("daemon already reaped");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if start.elapsed() > deadline {
                panic!("daemon did not exit within {deadline:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Run a CLI command (`status`, `pause`, `check` …) against `url`.
pub fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("DATABASE_URL", url).stdin(Stdio::null()).output().expect("run pgbackfill")
}

/// Run a CLI command without any database in the environment.
pub fn cli_offline(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env_remove("DATABASE_URL").stdin(Stdio::null()).output().expect("run pgbackfill")
}

/// A job's state in the progress table (`None` before the daemon registered it).
pub async fn job_state(pool: &PgPool, name: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM pgbackfill.jobs WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

/// Wait until a job reaches `state`, with the daemon log in the panic message.
pub async fn wait_state(pool: &PgPool, name: &str, state: &str, deadline: Duration, daemon: Option<&Daemon>) {
    let start = Instant::now();
    loop {
        let s = job_state(pool, name).await;
        if s.as_deref() == Some(state) {
            return;
        }
        if start.elapsed() > deadline {
            panic!(
                "job {name} did not reach {state} within {deadline:?} (now {s:?}); daemon log:\n{}",
                daemon.map(|d| d.log()).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the daemons on this database have been active `n` more times: each time, a later
/// `state_change` of one of their sessions (`application_name` `pgbackfill …`) in
/// `pg_stat_activity`. The lag controller ends a transaction every poll, so this is evidence that
/// time passed *for the daemon* (several polls, gate decisions and scans), where a sleep would only
/// show that time passed for the test: a daemon that is merely slow does not satisfy it.
pub async fn daemon_ticks(pool: &PgPool, n: usize, deadline: Duration) {
    let last = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT max(state_change) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'pgbackfill %'",
        )
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
    };
    let start = Instant::now();
    let mut seen = last().await;
    for _ in 0..n {
        loop {
            let now = last().await;
            if now.is_some() && now > seen {
                seen = now;
                break;
            }
            assert!(start.elapsed() < deadline, "no daemon activity on this database within {deadline:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
