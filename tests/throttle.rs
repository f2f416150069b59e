//! The throttle against a real streaming standby: paused replay, apply delay, a stopped standby, a
//! role without `pg_monitor`, a logical slot nobody consumes, and what `status` and `/metrics` show.
//!
//! Every test owns its cluster ([`dedicated_cluster`]): lag on a standby throttles every job of
//! every database on its primary. Daemons run with the harness's fast settings (lag polled every
//! 200 ms); the standby replies every second (`wal_receiver_status_interval = 1s`).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, PgPool};

use common::daemon::{Daemon, JobsDir, cli, daemon_ticks, wait_state};
use common::{dedicated_cluster, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);
/// The daemon's lag poll interval in [`common::daemon::FAST`].
const POLL: Duration = Duration::from_millis(200);
/// Rounds of daemon activity (two lag polls each) a throttled job is watched for, to prove it
/// does not write.
const HOLD_ROUNDS: usize = 6;

/// `items(id, v, pad)` with `n` rows whose `v` the job fills.
async fn make_table(pool: &PgPool, n: i64) {
    sqlx::query("CREATE TABLE items (id bigint PRIMARY KEY, v bigint, pad text)").execute(pool).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO items SELECT g, NULL, repeat('x', 100) FROM generate_series(1, {n}) g"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// A job over `items` in fixed batches of 200 rows with a short pause, so it runs for a while.
fn spec(name: &str, throttle: &str) -> String {
    format!(
        "name: {name}\ntable: items\nset:\n  v: id * 2\nwhere: v IS NULL\n\
         batch:\n  size: 200\n  min_size: 20\n  max_size: 200\n  pause: 50ms\n\
         throttle:\n{throttle}"
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    batches: i64,
    rows_updated: i64,
}

async fn counters(pool: &PgPool, job: &str) -> Counters {
    let (batches, rows_updated): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(batches), 0)::int8, coalesce(sum(rows_updated), 0)::int8 \
         FROM pgbackfill.ranges WHERE job = $1",
    )
    .bind(job)
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0));
    Counters { batches, rows_updated }
}

async fn throttle_reason(pool: &PgPool, job: &str) -> Option<String> {
    sqlx::query_scalar("SELECT throttle_reason FROM pgbackfill.jobs WHERE name = $1")
        .bind(job)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .flatten()
}

async fn throttled_seconds(pool: &PgPool, job: &str) -> f64 {
    sqlx::query_scalar("SELECT throttled_seconds FROM pgbackfill.jobs WHERE name = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .unwrap_or(0.0)
}

/// Waits until the job records a throttle reason containing `needle`; returns the reason and the
/// counters read right after it appeared.
async fn wait_throttled(pool: &PgPool, job: &str, needle: &str, daemon: &Daemon) -> (String, Counters) {
    let start = Instant::now();
    loop {
        if let Some(reason) = throttle_reason(pool, job).await
            && reason.contains(needle)
        {
            return (reason, counters(pool, job).await);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "job {job} not throttled with a reason containing {needle:?} within {DEADLINE:?} (reason now {:?}); log:\n{}",
            throttle_reason(pool, job).await,
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts the job stays held, by state rather than by a sleep: across several rounds of the
/// daemon's own activity ([`daemon_ticks`]: each a lag poll the controller published, so each a
/// fresh decision of the worker's gate), at most one more batch commits (the one in flight when
/// the throttle began) and the progress table keeps a throttle reason.
async fn assert_holds(pool: &PgPool, job: &str, at_throttle: Counters, daemon: &Daemon) -> Counters {
    let mut now = counters(pool, job).await;
    for round in 0..HOLD_ROUNDS {
        daemon_ticks(pool, 2, DEADLINE).await;
        now = counters(pool, job).await;
        assert!(
            now.batches <= at_throttle.batches + 1,
            "throttled job kept writing: {at_throttle:?} when throttled, {now:?} after {} rounds; log:\n{}",
            round + 1,
            daemon.log()
        );
        assert!(
            throttle_reason(pool, job).await.is_some(),
            "throttle lifted while it should hold; log:\n{}",
            daemon.log()
        );
    }
    now
}

async fn wait_batches_above(pool: &PgPool, job: &str, batches: i64, daemon: &Daemon) -> Duration {
    let start = Instant::now();
    while counters(pool, job).await.batches <= batches {
        assert!(start.elapsed() < DEADLINE, "job {job} did not continue; log:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn unfilled(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items WHERE v IS DISTINCT FROM id * 2").fetch_one(pool).await.unwrap()
}

/// An application writing a row every 100 ms until stopped: with an apply delay on the standby, this
/// keeps replay steadily behind even while the job itself is not writing.
async fn app_writer(pool: &PgPool) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>) {
    sqlx::query("CREATE TABLE app_writes (at timestamptz DEFAULT clock_timestamp())").execute(pool).await.unwrap();
    let pool = pool.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        while !writer_stop.is_cancelled() {
            let _ = sqlx::query("INSERT INTO app_writes DEFAULT VALUES").execute(&pool).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (stop, writer)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /metrics` over plain HTTP/1.0; the body.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// Values of a metric's samples whose label set contains `label` (e.g. `job="x"`).
fn samples(body: &str, metric: &str, label: &str) -> Vec<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, labels) = name_labels.split_once('{').unwrap_or((name_labels, ""));
            (name == metric && labels.contains(label)).then(|| value.parse().ok())?
        })
        .collect()
}

/// Done-when 1: pausing replay throttles after the lag crosses `max_lag`, with at most the batch
/// in flight committing; resuming lets batches continue within a poll interval plus the standby's
/// reply interval.
#[tokio::test]
async fn paused_replay_throttles_and_resume_continues_promptly() {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    make_table(&pool, 40_000).await;
    db.wait_on_standby().await;
    let jobs = JobsDir::new();
    jobs.write("j", &spec("lag", "  max_lag: 2s\n  resume_lag: 1s\n"));
    let daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_until(DEADLINE, "first batches", || async { counters(&pool, "lag").await.batches >= 3 }).await;

    c.pause_replay().await;
    let paused_at = Instant::now();
    let (reason, at_throttle) = wait_throttled(&pool, "lag", "replay lag", &daemon).await;
    let took = paused_at.elapsed();
    assert!(took >= Duration::from_millis(1500), "throttled {took:?} after the pause, before the lag could pass 2s");
    assert!(reason.contains("over 2s"), "{reason}");
    let held = assert_holds(&pool, "lag", at_throttle, &daemon).await;
    assert!(unfilled(&pool).await > 0, "the job finished before the throttle could be tested");

    let resumed_at = Instant::now();
    c.resume_replay().await;
    wait_batches_above(&pool, "lag", held.batches, &daemon).await;
    let latency = resumed_at.elapsed();
    eprintln!("throttled {took:?} after pause; next batch {latency:?} after resume");
    // Poll interval + the standby's 1 s reply interval, plus 1.5 s for a loaded 2-core machine.
    let bound = POLL + Duration::from_secs(1) + Duration::from_millis(1500);
    assert!(latency <= bound, "batches continued {latency:?} after resume, bound {bound:?}; log:\n{}", daemon.log());

    wait_state(&pool, "lag", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(unfilled(&pool).await, 0);
    assert_eq!(throttle_reason(&pool, "lag").await, None, "a completed job is not throttled");
}

/// Done-when 2: `recovery_min_apply_delay` above `max_lag` keeps the job throttled while writes
/// go on (a background writer, as an application would); below it the job runs to the end.
#[tokio::test]
async fn apply_delay_above_max_lag_throttles_below_it_runs() {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    make_table(&pool, 10_000).await;
    db.wait_on_standby().await;
    c.set_apply_delay(Duration::from_secs(4)).await;

    // The application's writes: a commit every 100 ms keeps the delayed standby steadily behind.
    let (stop, writer) = app_writer(&pool).await;

    let jobs = JobsDir::new();
    jobs.write("j", &spec("delay", "  max_lag: 2s\n  resume_lag: 1s\n"));
    let daemon = Daemon::start(&db.url, jobs.path(), &[]);
    let (reason, at_throttle) = wait_throttled(&pool, "delay", "replay lag", &daemon).await;
    assert!(reason.contains("over"), "{reason}");
    assert_holds(&pool, "delay", at_throttle, &daemon).await;
    assert!(unfilled(&pool).await > 0);

    c.set_apply_delay(Duration::from_millis(300)).await;
    wait_state(&pool, "delay", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(unfilled(&pool).await, 0);
    stop.cancel();
    writer.await.unwrap();
}

/// Stop the standby while a job runs: the job must hold (reason containing `needle`, at most the
/// batch in flight committing) until the standby is started again, then complete. Returns the reason.
async fn standby_outage_holds_the_job(job: &str, throttle: &str, needle: &str) -> String {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    make_table(&pool, 30_000).await;
    db.wait_on_standby().await;
    let jobs = JobsDir::new();
    jobs.write("j", &spec(job, throttle));
    let daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_until(DEADLINE, "first batches", || async { counters(&pool, job).await.batches >= 2 }).await;

    c.stop_standby().await;
    let (reason, at_throttle) = wait_throttled(&pool, job, needle, &daemon).await;
    assert_holds(&pool, job, at_throttle, &daemon).await;
    assert!(unfilled(&pool).await > 0, "the job finished before the standby stopped");

    c.start_standby().await;
    wait_state(&pool, job, "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(unfilled(&pool).await, 0);
    reason
}

/// Done-when 3: with `min_replicas: 1`, a stopped standby throttles (reason names min_replicas);
/// started again, the job resumes and completes.
#[tokio::test]
async fn stopped_standby_throttles_with_min_replicas() {
    let reason = standby_outage_holds_the_job("replicas", "  max_lag: 10s\n  min_replicas: 1\n", "min_replicas").await;
    assert!(reason.contains("0 standby(s) streaming"), "{reason}");
}

/// Done-when 4: a role that cannot read replication status fails closed, with the grant as the
/// fix, and writes nothing; after the grant it runs.
#[tokio::test]
async fn role_without_pg_monitor_fails_closed_with_the_grant_hint() {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    make_table(&pool, 2_000).await;
    for sql in [
        "CREATE ROLE backfiller LOGIN".to_string(),
        "GRANT SELECT, UPDATE ON items TO backfiller".to_string(),
        format!("GRANT CREATE ON DATABASE \"{}\" TO backfiller", db.name),
    ] {
        sqlx::query(AssertSqlSafe(sql)).execute(&pool).await.unwrap();
    }
    let url = format!("postgres://backfiller@127.0.0.1:{}/{}", c.primary_port(), db.name);
    let jobs = JobsDir::new();
    jobs.write("j", &spec("nopriv", "  max_lag: 10s\n"));
    let daemon = Daemon::start(&url, jobs.path(), &[]);

    let (reason, at_throttle) = wait_throttled(&pool, "nopriv", "GRANT pg_monitor", &daemon).await;
    assert!(reason.contains("backfiller"), "the hint names the role: {reason}");
    assert_holds(&pool, "nopriv", at_throttle, &daemon).await;
    assert_eq!(at_throttle, Counters { batches: 0, rows_updated: 0 });
    assert_eq!(counters(&pool, "nopriv").await, Counters { batches: 0, rows_updated: 0 });
    assert_eq!(unfilled(&pool).await, 2_000, "nothing may be written without a lag measurement");
    let log = daemon.log();
    assert!(log.contains("GRANT pg_monitor"), "the log names the fix:\n{log}");

    sqlx::query("GRANT pg_monitor TO backfiller").execute(&pool).await.unwrap();
    wait_state(&pool, "nopriv", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(unfilled(&pool).await, 0);
}

/// Done-when 5: a logical slot nobody consumes retains WAL; over `max_slot_retained_bytes` the job
/// is throttled with the slot named. Dropping the slot lets it finish.
#[tokio::test]
async fn unconsumed_logical_slot_throttles_naming_the_slot() {
    let c = dedicated_cluster().await;
    {
        // The harness runs wal_level=replica; logical decoding needs a restart with `logical`.
        let mut admin = c.admin_conn().await;
        sqlx::query("ALTER SYSTEM SET wal_level = logical").execute(&mut admin).await.unwrap();
    }
    c.restart_primary().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    make_table(&pool, 30_000).await;
    sqlx::query("SELECT pg_create_logical_replication_slot('cdc_s1', 'test_decoding')").execute(&pool).await.unwrap();
    db.wait_on_standby().await;
    let jobs = JobsDir::new();
    jobs.write("j", &spec("slot", "  max_lag: 10s\n  max_slot_retained_bytes: 1MB\n"));
    let daemon = Daemon::start(&db.url, jobs.path(), &[]);

    let (reason, at_throttle) = wait_throttled(&pool, "slot", "replication slot cdc_s1", &daemon).await;
    assert!(reason.contains("max_slot_retained_bytes") || reason.contains("over"), "{reason}");
    assert_holds(&pool, "slot", at_throttle, &daemon).await;
    assert!(unfilled(&pool).await > 0);

    sqlx::query("SELECT pg_drop_replication_slot('cdc_s1')").execute(&pool).await.unwrap();
    wait_state(&pool, "slot", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(unfilled(&pool).await, 0);
}

/// Done-when 6: `status` (text and JSON) shows the reason and the time throttled; `/metrics` has
/// per-standby lag, the job's throttled flag and scale, and the throttled-seconds counter.
#[tokio::test]
async fn status_and_metrics_show_the_throttle() {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    make_table(&pool, 30_000).await;
    db.wait_on_standby().await;
    let jobs = JobsDir::new();
    jobs.write("j", &spec("shown", "  max_lag: 30s\n  max_lag_bytes: 1MB\n"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &addr]);
    wait_until(DEADLINE, "first batches", || async { counters(&pool, "shown").await.batches >= 2 }).await;

    // Running: per-standby gauges exist, the job is not throttled and goes at full speed.
    let body = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
    assert_eq!(samples(&body, "pgbackfill_replica_lag_seconds", "replica=").len(), 1, "{body}");
    assert_eq!(samples(&body, "pgbackfill_replica_lag_bytes", "replica=").len(), 1, "{body}");
    // Not held: every reason of `pgbackfill_throttled` is 0.
    assert_eq!(
        samples(&body, "pgbackfill_throttled", "job=\"shown\""),
        vec![0.0; pgbackfill::metrics::ThrottleReason::ALL.len()],
        "{body}"
    );
    assert_eq!(samples(&body, "pgbackfill_throttle_scale_ratio", "job=\"shown\"").len(), 1, "{body}");

    c.pause_replay().await;
    let (reason, _) = wait_throttled(&pool, "shown", "bytes behind", &daemon).await;
    assert!(reason.contains("over 1000000 bytes") || reason.contains("over"), "{reason}");
    // The time throttled reaches the progress table in periodic flushes.
    wait_until(DEADLINE, "throttled time recorded", || async { throttled_seconds(&pool, "shown").await >= 1.0 }).await;

    let out = cli(&db.url, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("shown")).unwrap_or_else(|| panic!("no job line:\n{text}"));
    // Held (a daemon holds the job, the throttle keeps it from writing), and by what, underneath.
    assert!(line.contains(" held "), "{text}");
    assert!(text.contains("held by: ") && text.contains("bytes behind"), "{text}");
    assert!(text.contains("s throttled in total"), "{text}");
    assert!(text.contains("replication (live):") && text.contains("standby "), "{text}");

    let out = cli(&db.url, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let job =
        json["jobs"].as_array().and_then(|a| a.iter().find(|j| j["name"] == "shown")).expect("job in JSON").clone();
    // The live replication snapshot names the paused standby and its byte lag.
    let standby = &json["replication"]["standbys"][0];
    assert!(standby["lag_bytes"].as_i64().is_some_and(|b| b > 1_000_000), "{json}");
    assert_eq!(job["state"], "held", "{job}");
    assert!(job["held_by"].as_str().is_some_and(|r| r.contains("bytes behind")), "{job}");
    assert!(job["throttled_seconds"].as_f64().is_some_and(|s| s >= 1.0), "{job}");

    let body = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
    // Held for the byte lag: that reason is 1, the others 0.
    assert_eq!(samples(&body, "pgbackfill_throttled", "job=\"shown\",reason=\"lag_bytes\""), vec![1.0], "{body}");
    assert_eq!(samples(&body, "pgbackfill_throttled", "job=\"shown\"").iter().sum::<f64>(), 1.0, "{body}");
    assert_eq!(samples(&body, "pgbackfill_throttle_scale_ratio", "job=\"shown\""), vec![0.0], "{body}");
    let total = samples(&body, "pgbackfill_throttled_seconds_total", "job=\"shown\"");
    assert!(total.len() == 1 && total[0] >= 1.0, "{total:?}\n{body}");
    let lag_bytes = samples(&body, "pgbackfill_replica_lag_bytes", "replica=");
    assert!(lag_bytes.len() == 1 && lag_bytes[0] > 1_000_000.0, "{lag_bytes:?}\n{body}");
    let lag_seconds = samples(&body, "pgbackfill_replica_lag_seconds", "replica=");
    assert!(lag_seconds.len() == 1 && lag_seconds[0] > 0.5, "a paused standby lags in time too: {lag_seconds:?}");

    c.resume_replay().await;
    wait_state(&pool, "shown", "completed", DEADLINE, Some(&daemon)).await;
    let body = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
    // Not held: every reason of `pgbackfill_throttled` is 0.
    assert_eq!(
        samples(&body, "pgbackfill_throttled", "job=\"shown\""),
        vec![0.0; pgbackfill::metrics::ThrottleReason::ALL.len()],
        "{body}"
    );
}

/// "Beyond stop/go": a standby steadily lagging more than half of `max_lag` (but under it) slows the
/// job down (a duty cycle below 1, shown in `pgbackfill_throttle_scale_ratio`) without holding it; once the
/// lag goes away the rate climbs back to full speed and the job completes.
#[tokio::test]
async fn approaching_max_lag_slows_down_without_stopping() {
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    make_table(&pool, 40_000).await;
    db.wait_on_standby().await;
    // Lag around 2.5 s, against max_lag 4s: above APPROACH (half), below the limit.
    c.set_apply_delay(Duration::from_millis(2500)).await;
    let (stop, writer) = app_writer(&pool).await;

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let jobs = JobsDir::new();
    jobs.write("j", &spec("slow", "  max_lag: 4s\n  resume_lag: 3s\n"));
    let daemon = Daemon::start(&db.url, jobs.path(), &["--metrics-addr", &addr]);
    wait_until(DEADLINE, "first batches", || async { counters(&pool, "slow").await.batches >= 1 }).await;

    // Slowed: a rate below full speed while the job is not held.
    let start = Instant::now();
    let slowed = loop {
        let body = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
        let scale = samples(&body, "pgbackfill_throttle_scale_ratio", "job=\"slow\"");
        if let [s] = scale.as_slice()
            && *s > 0.0
            && *s < 0.5
        {
            break *s;
        }
        assert!(start.elapsed() < DEADLINE, "never slowed down: scale {scale:?}; log:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // ... and still writing, slowly: batches keep committing over a few seconds.
    let before = counters(&pool, "slow").await;
    wait_batches_above(&pool, "slow", before.batches + 2, &daemon).await;
    assert!(unfilled(&pool).await > 0, "the job finished before it could be observed slowed (scale {slowed})");

    // Lag gone: the rate climbs back to full speed (additive increase) and the job completes.
    c.set_apply_delay(Duration::ZERO).await;
    wait_until(DEADLINE, "full speed again", || async move {
        let body = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
        samples(&body, "pgbackfill_throttle_scale_ratio", "job=\"slow\"") == vec![1.0]
    })
    .await;
    wait_state(&pool, "slow", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(unfilled(&pool).await, 0);
    stop.cancel();
    writer.await.unwrap();
}

/// A standby that disconnects drops out of `pg_stat_replication`. Even without `min_replicas`, the
/// throttle does not simply forget it (that would fail open): its lag is unknown and jobs are held
/// until it reconnects.
#[tokio::test]
async fn a_disconnected_standby_holds_jobs_until_it_returns() {
    let reason = standby_outage_holds_the_job("gone", "  max_lag: 10s\n", "disconnected").await;
    assert!(reason.contains("lag unknown"), "{reason}");
}

/// Issue 9: the throttle reacts within one batch. The lag poll runs only once a second here (the
/// default), yet once the standby's byte lag crosses `max_lag_bytes` — which the test sees for
/// itself on the primary, in the same snapshot as the batch counter — at most the batch in flight
/// commits: each batch reads the lag again on its own connection before it writes. Resuming still
/// takes at most a poll interval plus the standby's reply interval, and every row is updated
/// exactly once (`n + 1` would show a repeat).
#[tokio::test]
async fn at_most_the_batch_in_flight_commits_after_the_lag_crosses_its_limit() {
    const BATCH: i64 = 2_000;
    let c = dedicated_cluster().await;
    let db = c.new_database().await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE counted (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0, pad text)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO counted SELECT g, 0, repeat('x', 200) FROM generate_series(1, 300000) g")
        .execute(&pool)
        .await
        .unwrap();
    db.wait_on_standby().await;
    let jobs = JobsDir::new();
    jobs.write(
        "j",
        &format!(
            "name: react\ntable: counted\nset:\n  n: n + 1\n\
             batch:\n  size: {BATCH}\n  min_size: {BATCH}\n  max_size: {BATCH}\n\
             throttle:\n  max_lag: 1h\n  max_lag_bytes: 4MB\n"
        ),
    );
    let daemon = Daemon::start(&db.url, jobs.path(), &["--lag-poll-interval", "1s"]);
    wait_until(DEADLINE, "first batches", || async { counters(&pool, "react").await.batches >= 2 }).await;

    c.pause_replay().await;
    // The crossing, seen from the primary: byte lag and committed batches in one snapshot.
    let limit = 4_000_000i64;
    let start = Instant::now();
    let (lag_at_cross, at_cross) = loop {
        let (lag, batches, rows): (Option<i64>, i64, i64) = sqlx::query_as(
            "SELECT (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::int8 FROM pg_stat_replication), \
                    coalesce(sum(batches), 0)::int8, coalesce(sum(rows_updated), 0)::int8 \
             FROM pgbackfill.ranges WHERE job = 'react'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if lag.is_some_and(|l| l > limit) {
            break (lag, Counters { batches, rows_updated: rows });
        }
        assert!(start.elapsed() < DEADLINE, "byte lag never crossed {limit}; log:\n{}", daemon.log());
    };
    let (reason, _) = wait_throttled(&pool, "react", "bytes behind", &daemon).await;
    // Longer than a lag poll, so a batch let through by a stale poll would have committed by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = counters(&pool, "react").await;
    eprintln!("crossing seen at {lag_at_cross:?} bytes, {at_cross:?}; {after:?} after; {reason}");
    assert!(
        after.batches <= at_cross.batches + 1 && after.rows_updated <= at_cross.rows_updated + BATCH,
        "more than the batch in flight committed after the crossing: {at_cross:?} then {after:?}; log:\n{}",
        daemon.log()
    );
    assert!(after.rows_updated < 300_000, "the job finished before the throttle could be tested");

    let resumed_at = Instant::now();
    c.resume_replay().await;
    wait_batches_above(&pool, "react", after.batches, &daemon).await;
    let latency = resumed_at.elapsed();
    // Poll interval (1 s) + the standby's 1 s reply interval, plus 1.5 s for a loaded 2-core machine.
    assert!(latency <= Duration::from_millis(3500), "resumed {latency:?} after replay resumed; log:\n{}", daemon.log());
    wait_state(&pool, "react", "completed", DEADLINE, Some(&daemon)).await;
    let wrong: i64 = sqlx::query_scalar("SELECT count(*) FROM counted WHERE n <> 1").fetch_one(&pool).await.unwrap();
    assert_eq!(wrong, 0, "every row exactly once");
}
