//! Real-PostgreSQL test harness: a primary plus one streaming hot standby on loopback.
//!
//! Every integration test file includes this with `mod common;`. The cluster itself (binary
//! discovery, running as `postgres`, base backup, replay controls, the reaper that cleans up
//! however the process dies) lives in `pgbackfill::localpg`, shared with `pgbackfill demo`; this
//! layer adds what only tests need (a shared cluster, a database per test) and turns errors into
//! panics with the server log tail.
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
//! Server settings (e.g. `wal_level`) are in `localpg::Options`: a test that needs another setting
//! should add a field there and a constructor here, not edit `postgresql.conf` itself.

// Each test binary compiles its own copy of this module and uses only part of it; without this
// allow every binary would warn about the helpers it does not call.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pgbackfill::localpg::{self, Options};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection};
use tokio::sync::OnceCell;

pub mod daemon;
pub mod proxy;

static SHARED: OnceCell<Result<Cluster, String>> = OnceCell::const_new();

/// The cluster shared by every test in this test binary, started on first use.
///
/// If startup fails, every test using it panics with the same message (including the server log
/// tail) rather than each retrying a startup that will fail again.
pub async fn cluster() -> &'static Cluster {
    let started = SHARED.get_or_init(|| async { Cluster::start().await.map_err(|e| e.to_string()) }).await;
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
        Err(e) => panic!("dedicated test cluster failed to start: {e}"),
    }
}

/// Polls `f` every ~100 ms until it returns true; panics naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !localpg::poll_until(deadline, f).await {
        panic!("timed out after {deadline:?} waiting for {what}");
    }
}

/// A primary and one streaming hot standby, each on its own free loopback port.
pub struct Cluster {
    inner: localpg::Cluster,
    next_db: AtomicU64,
}

/// Unwraps a cluster operation, panicking with `what` and the error (which carries the log tail).
fn ok<T>(what: &str, r: Result<T, localpg::LocalPgError>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

impl Cluster {
    async fn start() -> Result<Cluster, localpg::LocalPgError> {
        // Named after the test binary, so `pgrep -a postgres` shows whose cluster it is.
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.file_stem()?.to_str()?.split('-').next()?.to_string()))
            .unwrap_or_default();
        let options = Options { dir_prefix: format!("pgbackfill-test-{binary}-"), ..Options::default() };
        Ok(Cluster { inner: localpg::Cluster::start(options).await?, next_db: AtomicU64::new(0) })
    }

    // ----- URLs and paths -----

    /// URL of database `db` on the primary.
    pub fn primary_url(&self, db: &str) -> String {
        self.inner.primary_url(db)
    }

    /// URL of database `db` on the standby.
    pub fn standby_url(&self, db: &str) -> String {
        self.inner.standby_url(db)
    }

    /// URL of the `postgres` database on the primary, as superuser.
    pub fn admin_url(&self) -> String {
        self.inner.admin_url()
    }

    /// URL of the `postgres` database on the standby, as superuser.
    pub fn standby_admin_url(&self) -> String {
        self.inner.standby_admin_url()
    }

    pub fn primary_port(&self) -> u16 {
        self.inner.primary_port()
    }

    pub fn standby_port(&self) -> u16 {
        self.inner.standby_port()
    }

    /// The temporary directory holding both data directories, the sockets and the logs.
    pub fn dir(&self) -> &Path {
        self.inner.dir()
    }

    /// The last lines of a server's log (`name` is `primary` or `standby`).
    pub fn log_tail(&self, name: &str) -> String {
        self.inner.log_tail(name)
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
        ok("reading pg_stat_replication", self.inner.replay_lag_bytes().await)
    }

    /// Waits until the standby has replayed everything the primary had written when called.
    pub async fn wait_standby_caught_up(&self) {
        ok("waiting for the standby to catch up", self.inner.wait_standby_caught_up().await)
    }

    /// Pauses WAL replay on the standby and waits until it is actually paused (the function only
    /// requests a pause). Use a [`dedicated_cluster`]: a paused standby lags every database.
    pub async fn pause_replay(&self) {
        ok("pausing replay", self.inner.pause_replay().await)
    }

    /// Resumes WAL replay on the standby and waits until it reports `not paused`.
    pub async fn resume_replay(&self) {
        ok("resuming replay", self.inner.resume_replay().await)
    }

    /// Sets `recovery_min_apply_delay` on the standby (no restart needed) and waits until new
    /// sessions see it. It delays commit records only, which gives a steady lag under writes.
    pub async fn set_apply_delay(&self, delay: Duration) {
        ok("setting recovery_min_apply_delay", self.inner.set_apply_delay(delay).await)
    }

    /// Stops the standby (fast shutdown). Its slot stays on the primary, which keeps WAL for it.
    pub async fn stop_standby(&self) {
        ok("stopping the standby", self.inner.stop_standby().await)
    }

    /// Starts the standby again and waits until it streams.
    pub async fn start_standby(&self) {
        ok("starting the standby", self.inner.start_standby().await)
    }

    /// Restarts the primary (fast shutdown: open connections are terminated), waits until it
    /// accepts connections and, if the standby is running, until it streams again.
    pub async fn restart_primary(&self) {
        ok("restarting the primary", self.inner.restart_primary().await)
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
        ok("waiting for the standby", localpg::wait_replayed(&self.admin_url, &self.standby_admin_url).await)
    }
}

async fn connect(url: &str) -> PgConnection {
    localpg::connect(url).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting a pool to {url}: {e}"))
}
