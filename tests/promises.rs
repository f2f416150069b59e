//! The promises that only a disaster shows (issue 10 §4): a daemon frozen past its lease cannot
//! write when it wakes (fencing), a failover to the standby loses no row and repeats none (data
//! and cursor replicate in the same commit), and `reset` re-applies a non-idempotent `set`.
//!
//! Jobs use `set: {n: n + 1}` on rows starting at `n = 0`: "every row exactly once" is `all n = 1`.

mod common;

use std::process::Command;
use std::time::Duration;

use sqlx::PgPool;

use common::daemon::{Daemon, JobsDir, cli, wait_state};
use common::{cluster, dedicated_cluster, wait_until};

const DEADLINE: Duration = Duration::from_secs(120);

async fn histogram(pool: &PgPool) -> Vec<(i32, i64)> {
    sqlx::query_as("SELECT n, count(*) FROM t GROUP BY n ORDER BY n").fetch_all(pool).await.expect("histogram")
}

/// `(rows_updated, owners)` of job `j`, ranges summed.
async fn progress(pool: &PgPool) -> (i64, Vec<String>) {
    sqlx::query_as(
        "SELECT coalesce(sum(rows_updated), 0)::int8, coalesce(array_agg(DISTINCT owner) FILTER (WHERE owner IS NOT NULL), '{}') \
         FROM pgbackfill.ranges WHERE job = 'j'",
    )
    .fetch_one(pool)
    .await
    .unwrap_or_default()
}

async fn setup(pool: &PgPool, rows: i64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT generate_series(1, {rows});"
    )))
    .execute(pool)
    .await
    .expect("setup");
}

/// 20 rows a batch, 50 ms apart: a job that runs for a few seconds.
const SLOW: &str = "name: j\ntable: t\nset:\n  n: n + 1\nbatch:\n  size: 20\n  min_size: 1\n  pause: 50ms\n";

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

#[tokio::test]
async fn a_daemon_frozen_past_its_lease_cannot_write_when_it_wakes() {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    setup(&pool, 1000).await;
    let jobs = JobsDir::new();
    jobs.write("j", SLOW);
    // Lease 3 s (the harness default): A is frozen for much longer than that.
    let mut a = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_until(DEADLINE, "A to write", || async { progress(&pool).await.0 >= 100 }).await;
    let a_owner = progress(&pool).await.1;
    assert_eq!(a_owner.len(), 1, "A holds the range");
    signal(a.pid(), "STOP");

    // B takes the range over once A's lease has run out, and finishes the job.
    let mut b = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_until(DEADLINE, "B to take the range over", || async {
        let owners = progress(&pool).await.1;
        !owners.is_empty() && owners != a_owner
    })
    .await;
    wait_state(&pool, "j", "completed", DEADLINE, Some(&b)).await;
    assert!(b.wait_exit(DEADLINE).success(), "B: log:\n{}", b.log());
    let done = progress(&pool).await.0;
    assert_eq!(histogram(&pool).await, vec![(1, 1000)], "every row exactly once; B log:\n{}", b.log());

    // A wakes up with a batch possibly half done and a lease long gone: it must stop without
    // writing. It exits by itself (the job is completed), and nothing changed.
    signal(a.pid(), "CONT");
    let status = a.wait_exit(DEADLINE);
    assert_eq!(histogram(&pool).await, vec![(1, 1000)], "A wrote after waking; A log:\n{}", a.log());
    assert_eq!(progress(&pool).await.0, done, "A advanced a cursor after waking; A log:\n{}", a.log());
    assert!(status.success(), "A exits 0 once it sees the job completed; log:\n{}", a.log());
}

#[tokio::test]
async fn a_failover_to_the_standby_mid_job_loses_and_repeats_no_row() {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    setup(&pool, 3000).await;
    db.wait_on_standby().await;
    let jobs = JobsDir::new();
    jobs.write("j", SLOW);
    let mut a = Daemon::start(&db.url, jobs.path(), &[]);
    wait_until(DEADLINE, "the job to be under way", || async { progress(&pool).await.0 >= 200 }).await;

    // The primary is lost mid-job: the daemon dies with it (no clean release), the standby is
    // promoted with whatever it had replayed, and a daemon is pointed at it.
    a.kill9();
    drop(pool);
    let mut admin = c.standby_admin_conn().await;
    let promoted: bool =
        sqlx::query_scalar("SELECT pg_promote(true, 60)").fetch_one(&mut admin).await.expect("promote");
    assert!(promoted);
    let new_primary = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.standby_url)
        .await
        .expect("connect to the promoted standby");
    let before = progress(&new_primary).await.0;
    assert!(before > 0 && before < 3000, "promoted mid-job: {before} rows recorded on the standby");
    // Data and cursor replicated in the same commits: the recorded count is the rows updated.
    let updated: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE n = 1").fetch_one(&new_primary).await.unwrap();
    assert_eq!(updated, before, "the standby's cursor and rows disagree");

    let mut b = Daemon::start(&db.standby_url, jobs.path(), &["--exit-when-done"]);
    let status = b.wait_exit(DEADLINE);
    assert!(status.success(), "log:\n{}", b.log());
    assert_eq!(histogram(&new_primary).await, vec![(1, 3000)], "every row exactly once; log:\n{}", b.log());
}

#[tokio::test]
async fn reset_re_applies_a_non_idempotent_set() {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    setup(&pool, 300).await;
    let jobs = JobsDir::new();
    jobs.write("j", "name: j\ntable: t\nset:\n  n: n + 1\n");
    let mut a = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert!(a.wait_exit(DEADLINE).success(), "log:\n{}", a.log());
    assert_eq!(histogram(&pool).await, vec![(1, 300)]);

    // `reset` forgets the progress, not the rows: the job runs again from the first key, and a
    // `set` that is not idempotent is applied a second time (README says so).
    let out = cli(&db.url, &["reset", "--yes", "j"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut b = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    assert!(b.wait_exit(DEADLINE).success(), "log:\n{}", b.log());
    assert_eq!(histogram(&pool).await, vec![(2, 300)]);
}
