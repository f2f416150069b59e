//! Tests of the test harness itself: the standby really streams, databases are isolated, and the
//! standby controls produce the lag the throttle tests will rely on.

mod common;

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use common::{cluster, dedicated_cluster, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// Counts rows of `t` with `id = $1` on the given URL; None while the database or table does not
/// exist there yet (the standby may not have replayed its creation).
async fn count_id(url: &str, id: i64) -> Option<i64> {
    let mut conn = PgConnection::connect(url).await.ok()?;
    let n = sqlx::query_scalar("SELECT count(*) FROM t WHERE id = $1").bind(id).fetch_one(&mut conn).await.ok();
    let _ = conn.close().await;
    n
}

#[tokio::test]
async fn a_row_written_on_the_primary_reaches_the_standby() {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE t (id bigint PRIMARY KEY, v text)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO t VALUES (42, 'hello')").execute(&pool).await.unwrap();

    wait_until(DEADLINE, "row 42 on the standby", || async { count_id(&db.standby_url, 42).await == Some(1) }).await;

    let standby = db.standby_pool().await;
    let v: String = sqlx::query_scalar("SELECT v FROM t WHERE id = 42").fetch_one(&standby).await.unwrap();
    assert_eq!(v, "hello");
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&standby).await.unwrap();
    assert!(in_recovery, "standby_url must point at the standby");
    let err =
        sqlx::query("INSERT INTO t VALUES (43, 'nope')").execute(&standby).await.expect_err("the standby is read only");
    assert!(err.to_string().contains("read-only"), "{err}");
}

#[tokio::test]
async fn databases_are_isolated() {
    let c = cluster().await;
    let (a, b) = (c.new_database().await, c.new_database().await);
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);

    let (pa, pb) = (a.pool().await, b.pool().await);
    for (pool, id) in [(&pa, 1i64), (&pb, 2i64)] {
        sqlx::query("CREATE TABLE t (id bigint PRIMARY KEY)").execute(pool).await.unwrap();
        sqlx::query("INSERT INTO t VALUES ($1)").bind(id).execute(pool).await.unwrap();
    }
    let ids_a: Vec<i64> = sqlx::query_scalar("SELECT id FROM t ORDER BY id").fetch_all(&pa).await.unwrap();
    let ids_b: Vec<i64> = sqlx::query_scalar("SELECT id FROM t ORDER BY id").fetch_all(&pb).await.unwrap();
    assert_eq!(ids_a, vec![1]);
    assert_eq!(ids_b, vec![2]);

    // Same isolation on the standby, once replay has caught up.
    a.wait_on_standby().await;
    assert_eq!(count_id(&a.standby_url, 1).await, Some(1));
    assert_eq!(count_id(&a.standby_url, 2).await, Some(0));
    assert_eq!(count_id(&b.standby_url, 2).await, Some(1));
    assert_eq!(count_id(&b.standby_url, 1).await, Some(0));
}

#[tokio::test]
async fn pausing_replay_makes_byte_lag_grow_and_resuming_clears_it() {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE t (id bigint PRIMARY KEY, pad text)").execute(&pool).await.unwrap();
    db.wait_on_standby().await;

    c.pause_replay().await;
    // ~2 MB of heap plus index WAL.
    sqlx::query("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 10000) g")
        .execute(&pool)
        .await
        .unwrap();
    let lag = c.replay_lag_bytes().await.expect("a replay position");
    assert!(lag > 1_000_000, "byte lag while paused: {lag}");
    // Still paused: more time does not shrink it, and the rows are not on the standby.
    wait_until(DEADLINE, "the walreceiver to report the new WAL", || async {
        sent_but_not_replayed(&c.admin_url()).await
    })
    .await;
    assert!(c.replay_lag_bytes().await.unwrap() >= lag);
    assert_eq!(count_id(&db.standby_url, 1).await, Some(0));

    c.resume_replay().await;
    wait_until(DEADLINE, "byte lag back near 0 after resume", || async {
        c.replay_lag_bytes().await.is_some_and(|l| l < 1024)
    })
    .await;
    wait_until(DEADLINE, "the paused rows on the standby", || async {
        count_id(&db.standby_url, 10000).await == Some(1)
    })
    .await;
}

/// True when the standby has received (flushed) WAL it has not replayed: proof that replay, not
/// streaming, is what is held back.
async fn sent_but_not_replayed(admin_url: &str) -> bool {
    let mut conn = PgConnection::connect(admin_url).await.unwrap();
    let gap: Option<i64> =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(flush_lsn, replay_lsn)::bigint FROM pg_stat_replication")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    gap.is_some_and(|g| g > 1_000_000)
}

#[tokio::test]
async fn apply_delay_stop_start_and_primary_restart() {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE t (id bigint PRIMARY KEY)").execute(&pool).await.unwrap();
    db.wait_on_standby().await;

    // recovery_min_apply_delay holds each commit back at least that long after it happened.
    let delay = Duration::from_secs(2);
    c.set_apply_delay(delay).await;
    let committed = Instant::now();
    sqlx::query("INSERT INTO t VALUES (1)").execute(&pool).await.unwrap();
    wait_until(DEADLINE, "delayed row 1 on the standby", || async { count_id(&db.standby_url, 1).await == Some(1) })
        .await;
    let seen_after = committed.elapsed();
    assert!(
        seen_after >= delay - Duration::from_millis(100),
        "row visible after {seen_after:?}, apply delay {delay:?}"
    );
    c.set_apply_delay(Duration::ZERO).await;

    // A stopped standby has no walsender row; its slot keeps the WAL until it comes back.
    c.stop_standby().await;
    assert_eq!(c.replay_lag_bytes().await, None);
    sqlx::query("INSERT INTO t VALUES (2)").execute(&pool).await.unwrap();
    c.start_standby().await;
    wait_until(DEADLINE, "row 2 on the restarted standby", || async { count_id(&db.standby_url, 2).await == Some(1) })
        .await;

    // After a primary restart, fresh connections work and the standby streams again.
    c.restart_primary().await;
    let pool = db.pool().await;
    sqlx::query("INSERT INTO t VALUES (3)").execute(&pool).await.unwrap();
    wait_until(DEADLINE, "row 3 on the standby after primary restart", || async {
        count_id(&db.standby_url, 3).await == Some(1)
    })
    .await;
}
