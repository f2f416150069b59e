//! Standbys are remembered in the progress schema (issue 10 §3): a daemon that starts while a
//! known standby is down holds its jobs for it (fail closed) until `--forget-standby-after`, and
//! `status` says so. Owns its cluster: the standby is stopped.

mod common;

use std::time::Duration;

use sqlx::PgPool;

use common::daemon::{Daemon, JobsDir, cli, wait_state};
use common::{dedicated_cluster, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

async fn rows_updated(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(rows_updated), 0)::int8 FROM pgbackfill.ranges WHERE job = 'j'")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

async fn throttle_reason(pool: &PgPool) -> Option<String> {
    sqlx::query_scalar("SELECT throttle_reason FROM pgbackfill.jobs WHERE name = 'j'")
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .flatten()
}

#[tokio::test]
async fn a_daemon_started_while_a_known_standby_is_down_holds_jobs_until_it_is_forgotten() {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT generate_series(1, 500);",
    )
    .execute(&pool)
    .await
    .unwrap();

    // A first daemon sees the standby (it streams from slot standby1), with no job to run.
    let empty = JobsDir::new();
    let mut first = Daemon::start(&db.url, empty.path(), &["--allow-empty"]);
    wait_until(DEADLINE, "the standby to be remembered", || async {
        sqlx::query_scalar::<_, String>("SELECT id FROM pgbackfill.standbys")
            .fetch_all(&pool)
            .await
            .is_ok_and(|ids| ids == ["slot:standby1"])
    })
    .await;
    first.terminate();
    first.wait_exit(DEADLINE);

    // The standby goes down; a new daemon process (no memory of its own) starts with a job that
    // does not ask for replicas (min_replicas 0).
    c.stop_standby().await;
    let jobs = JobsDir::new();
    jobs.write("j", "name: j\ntable: t\nset:\n  n: n + 1\nbatch:\n  size: 100\n");
    let mut second = Daemon::start(&db.url, jobs.path(), &["--forget-standby-after", "1h"]);
    let start = std::time::Instant::now();
    while !throttle_reason(&pool).await.is_some_and(|r| r.contains("disconnected") && r.contains("standby1")) {
        assert!(
            start.elapsed() < DEADLINE,
            "not held for the known standby: reason {:?}, {} rows written; log:\n{}",
            throttle_reason(&pool).await,
            rows_updated(&pool).await,
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held from the first gate decision: not one row written. Another flush of throttled time
    // (the worker's gate deciding to wait again) later, still nothing.
    assert_eq!(rows_updated(&pool).await, 0, "wrote before the gate held it; log:\n{}", second.log());
    let throttled = || async {
        sqlx::query_scalar::<_, f64>("SELECT throttled_seconds FROM pgbackfill.jobs WHERE name = 'j'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0.0)
    };
    let t0 = throttled().await;
    wait_until(DEADLINE, "more throttled time recorded", || async { throttled().await > t0 }).await;
    assert_eq!(rows_updated(&pool).await, 0, "wrote while a known standby is down; log:\n{}", second.log());

    // `status` says why, and lists the standby as disconnected.
    let out = cli(&db.url, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("standby1") && text.contains("disconnected"), "status:\n{text}");
    second.terminate();
    second.wait_exit(DEADLINE);

    // A daemon told to forget standbys gone for a second runs the job without it.
    let mut third = Daemon::start(&db.url, jobs.path(), &["--forget-standby-after", "1s"]);
    wait_state(&pool, "j", "completed", DEADLINE, Some(&third)).await;
    let wrong: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE n <> 1").fetch_one(&pool).await.unwrap();
    assert_eq!(wrong, 0);
    third.terminate();
    c.start_standby().await;
}
