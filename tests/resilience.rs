//! Resilience of the real daemon: exactly-once under repeated kill -9, several daemons on one jobs
//! directory, lease takeover after a crash, a database restart mid-job, graceful SIGTERM.
//!
//! Every job here is deliberately non-idempotent (`counter = counter + 1`, no `where`): a batch
//! applied twice leaves a 2, a batch skipped leaves a 0, so `counter = 1` on every row is the
//! exactly-once proof, and the progress table's counters must agree with it.

mod common;

use pgbackfill::localpg::poll_until as poll;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

use common::daemon::{Daemon, JobsDir, job_state, wait_state};
use common::{cluster, dedicated_cluster};

/// Deadline for a whole job to complete (2 shared cores, other test binaries running).
const COMPLETE: Duration = Duration::from_secs(90);
/// Deadline for a daemon to start and claim a range; includes waiting out a dead daemon's lease
/// (`--lease 3s` in the FAST defaults).
const CLAIM: Duration = Duration::from_secs(30);
/// Polling interval of [`poll`]: finer than the harness's 100 ms, so the random run time before a
/// kill starts close to the moment the daemon claimed its range.
const POLL: Duration = Duration::from_millis(20);
/// Outer bound on a harness call that has its own deadlines inside (cluster start, restart).
const HARNESS: Duration = Duration::from_secs(180);

/// `name` with `rows` rows, all at `counter = 0`.
async fn counter_table(pool: &PgPool, table: &str, rows: i64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0); \
         INSERT INTO {table} (id) SELECT g FROM generate_series(1, {rows}) g; ANALYZE {table};"
    )))
    .execute(pool)
    .await
    .unwrap_or_else(|e| panic!("creating {table}: {e}"));
}

/// A non-idempotent job: every row it touches twice ends up at 2.
fn counter_job(name: &str, table: &str, size: i64, pause: &str, concurrency: i64) -> String {
    format!(
        "name: {name}\ntable: {table}\nset:\n  counter: counter + 1\nbatch:\n  size: {size}\n  min_size: {size}\n  \
         max_size: {size}\n  pause: {pause}\nconcurrency: {concurrency}\n"
    )
}

/// Rows whose counter is not exactly 1.
async fn wrong_rows(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table} WHERE counter <> 1")))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("counting {table}: {e}"))
}

/// The job's committed `rows_updated` (0 before the daemon created the progress schema).
async fn rows_updated(pool: &PgPool, job: &str) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(rows_updated), 0)::int8 FROM pgbackfill.ranges WHERE job = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// Owners currently recorded on the job's ranges (dead daemons' included).
async fn owners(pool: &PgPool, job: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT owner FROM pgbackfill.ranges WHERE job = $1 AND owner IS NOT NULL")
        .bind(job)
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

/// The process id in an owner id (`host:pid:nonce`).
fn owner_pid(owner: &str) -> Option<u32> {
    owner.rsplit(':').nth(1)?.parse().ok()
}

/// Whether the daemon with this pid holds a range of the job.
async fn held_by(pool: &PgPool, job: &str, pid: u32) -> bool {
    owners(pool, job).await.iter().any(|o| owner_pid(o) == Some(pid))
}

/// The highest epoch of the job's ranges: it grows on every change of hands.
async fn max_epoch(pool: &PgPool, job: &str) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(epoch), 0)::int8 FROM pgbackfill.ranges WHERE job = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// Every row at exactly 1, and the progress table counted each row once.
async fn assert_exactly_once(pool: &PgPool, table: &str, job: &str, rows: i64) {
    assert_eq!(wrong_rows(pool, table).await, 0, "rows of {table} not updated exactly once");
    let (updated, scanned): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(rows_updated), 0)::int8, coalesce(sum(rows_scanned), 0)::int8 \
         FROM pgbackfill.ranges WHERE job = $1",
    )
    .bind(job)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(updated, rows, "{job}: rows_updated in the progress table");
    assert_eq!(scanned, rows, "{job}: rows_scanned in the progress table");
    assert_eq!(job_state(pool, job).await.as_deref(), Some("completed"), "{job}: state");
}

/// The seed for the kill schedule: `RESILIENCE_SEED` to replay a failure, else the clock.
fn seed() -> u64 {
    std::env::var("RESILIENCE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

#[tokio::test]
async fn exactly_once_under_repeated_kill_9() {
    const ROWS: i64 = 20_000;
    const KILLS: usize = 15;
    let seed = seed();
    println!("kill schedule seed: {seed} (replay with RESILIENCE_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    counter_table(&pool, "items", ROWS).await;
    let jobs = JobsDir::new();
    // ~100 batches of 200 with a pause: a few seconds of work, so most kills land mid-job.
    jobs.write("count", &counter_job("count", "items", 200, "30ms", 1));

    // A kill right after start, before the daemon could connect, let alone run a batch.
    let mut d = Daemon::start(&db.url, jobs.path(), &[]);
    d.kill9();
    assert_eq!(rows_updated(&pool, "count").await, 0, "a batch ran before the first kill");

    let mut after_kill = Vec::new();
    for i in 0..KILLS {
        let mut d = Daemon::start(&db.url, jobs.path(), &[]);
        let pid = d.pid();
        // The previous daemon's lease must run out first: the random run time counts from the claim.
        let ready = poll(CLAIM, || async {
            held_by(&pool, "count", pid).await || job_state(&pool, "count").await.as_deref() == Some("completed")
        })
        .await;
        assert!(ready, "kill {i}: daemon {pid} never claimed the range; log:\n{}", d.log());
        let run = rng.random_range(50..=400u64);
        // The one deliberate sleep: how long the daemon works before it is killed.
        tokio::time::sleep(Duration::from_millis(run)).await;
        d.kill9();
        let done = rows_updated(&pool, "count").await;
        println!("kill {i}: daemon {pid} killed {run} ms after its claim; {done}/{ROWS} rows done");
        after_kill.push(done);
    }
    let mid_job = after_kill.iter().filter(|&&d| 0 < d && d < ROWS).count();
    assert!(mid_job >= 5, "only {mid_job} of {KILLS} kills landed mid-job: {after_kill:?}");
    assert!(after_kill.windows(2).all(|w| w[0] <= w[1]), "progress went backwards: {after_kill:?}");

    let mut last = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    let status = last.wait_exit(COMPLETE);
    assert!(status.success(), "final daemon: {status}; log:\n{}", last.log());
    assert_exactly_once(&pool, "items", "count", ROWS).await;
}

#[tokio::test]
async fn three_daemons_share_one_jobs_directory() {
    // (job, table, rows, concurrency)
    const JOBS: [(&str, &str, i64, i64); 3] =
        [("three-a", "ta", 9_000, 3), ("three-b", "tb", 6_000, 1), ("three-c", "tc", 6_000, 1)];
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    let jobs = JobsDir::new();
    for (job, table, rows, concurrency) in JOBS {
        counter_table(&pool, table, rows).await;
        jobs.write(job, &counter_job(job, table, 200, "30ms", concurrency));
    }
    // One job per daemon at a time: whoever starts first cannot take all three jobs, so the work
    // is spread over the daemons by the claims rather than by luck.
    let args = ["--exit-when-done", "--max-jobs", "1"];
    let mut daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start(&db.url, jobs.path(), &args)).collect();
    let pids: BTreeSet<u32> = daemons.iter().map(Daemon::pid).collect();

    // Ranges give their owner back when done, so owners are sampled while the jobs run.
    let mut seen: BTreeSet<u32> = BTreeSet::new();
    let end = Instant::now() + COMPLETE;
    let completed = loop {
        let mut all = true;
        for (job, ..) in JOBS {
            seen.extend(owners(&pool, job).await.iter().filter_map(|o| owner_pid(o)));
            all &= job_state(&pool, job).await.as_deref() == Some("completed");
        }
        if all || Instant::now() >= end {
            break all;
        }
        tokio::time::sleep(POLL).await;
    };
    let logs = || daemons.iter().map(Daemon::log).collect::<Vec<_>>().join("\n----\n");
    assert!(completed, "jobs did not all complete; logs:\n{}", logs());
    for d in &mut daemons {
        let status = d.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "daemon {}: {status}; log:\n{}", d.pid(), d.log());
    }
    for (job, table, rows, concurrency) in JOBS {
        assert_exactly_once(&pool, table, job, rows).await;
        let ranges: i64 = sqlx::query_scalar("SELECT count(*) FROM pgbackfill.ranges WHERE job = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(ranges, concurrency, "{job}: key ranges planned");
    }
    assert!(seen.is_subset(&pids), "owners {seen:?} are not our daemons {pids:?}");
    assert!(seen.len() >= 2, "one daemon did all the work ({seen:?}) despite --max-jobs 1");
}

#[tokio::test]
async fn another_daemon_takes_over_after_a_kill_9() {
    const ROWS: i64 = 20_000;
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    counter_table(&pool, "items", ROWS).await;
    let jobs = JobsDir::new();
    jobs.write("takeover", &counter_job("takeover", "items", 200, "30ms", 1));

    let mut a = Daemon::start(&db.url, jobs.path(), &[]);
    let started = poll(CLAIM, || async {
        held_by(&pool, "takeover", a.pid()).await && rows_updated(&pool, "takeover").await > 0
    })
    .await;
    assert!(started, "daemon A never started the job; log:\n{}", a.log());
    // B runs next to A: it scans every 200 ms but must not get the range while A's lease lives.
    let mut b = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    let b_up = poll(CLAIM, || async { b.log().contains("pgbackfill starting") }).await;
    assert!(b_up, "daemon B did not start; log:\n{}", b.log());
    assert!(held_by(&pool, "takeover", a.pid()).await, "A lost its range to B while alive; B log:\n{}", b.log());

    let epoch = max_epoch(&pool, "takeover").await;
    a.kill9();
    let killed = Instant::now();
    let done_at_kill = rows_updated(&pool, "takeover").await;
    assert!(done_at_kill < ROWS, "the job finished before A was killed");

    let took_over = poll(Duration::from_secs(20), || async { held_by(&pool, "takeover", b.pid()).await }).await;
    let waited = killed.elapsed();
    assert!(took_over, "B did not take over within 20s of the kill; B log:\n{}", b.log());
    println!("B took over {waited:?} after A was killed, {done_at_kill}/{ROWS} rows done");
    // A's last batch or renewal set its lease to at least ~2.2s past the kill (lease 3s, renewal
    // every 750 ms): an earlier takeover would mean B ignored a live lease.
    assert!(waited >= Duration::from_secs(1), "B took over after only {waited:?}: A's lease was ignored");
    assert!(waited <= Duration::from_secs(10), "B took {waited:?} to take over a 3s lease");
    assert!(max_epoch(&pool, "takeover").await > epoch, "the takeover did not bump the epoch");

    let status = b.wait_exit(COMPLETE);
    assert!(status.success(), "daemon B: {status}; log:\n{}", b.log());
    assert_exactly_once(&pool, "items", "takeover", ROWS).await;
}

#[tokio::test]
async fn a_database_restart_mid_job_is_retried() {
    const ROWS: i64 = 4_000;
    // Restarting the shared primary would break every other test's connections.
    // Outer bounds on the harness calls: one full-suite run hung here once, unexplained; a
    // timeout turns that into a failure that says where.
    let c = tokio::time::timeout(HARNESS, dedicated_cluster()).await.expect("dedicated cluster start hung");
    let db = c.new_database().await;
    let pool = db.pool().await;
    counter_table(&pool, "items", ROWS).await;
    // A slow batch (an application trigger, once per statement): the restart then lands while a
    // batch is in flight, which is what must be rolled back and retried.
    sqlx::raw_sql(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END $$; \
         CREATE TRIGGER slow BEFORE UPDATE ON items FOR EACH STATEMENT EXECUTE FUNCTION slow();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let jobs = JobsDir::new();
    jobs.write("restart", &counter_job("restart", "items", 200, "50ms", 1));

    let mut d = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    let in_flight = poll(CLAIM, || async {
        if rows_updated(&pool, "restart").await < 400 {
            return false;
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE 'UPDATE %items%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        active > 0
    })
    .await;
    assert!(in_flight, "no batch in flight after 2 batches; log:\n{}", d.log());
    let done_at_restart = rows_updated(&pool, "restart").await;
    println!("restarting the primary with {done_at_restart}/{ROWS} rows done");
    pool.close().await;
    let restarted = tokio::time::timeout(HARNESS, c.restart_primary()).await;
    assert!(
        restarted.is_ok(),
        "primary restart hung; primary log:\n{}\ndaemon log:\n{}",
        c.log_tail("primary"),
        d.log()
    );

    // The daemon keeps going: with --exit-when-done it exits 0 only once the job completed.
    let status = d.wait_exit(COMPLETE);
    let log = d.log();
    assert!(status.success(), "daemon: {status}; log:\n{log}");
    let pool = db.pool().await;
    assert!(done_at_restart < ROWS, "the job finished before the restart");
    assert_exactly_once(&pool, "items", "restart", ROWS).await;
    assert!(log.contains("batch failed, will retry"), "no retry warning in the log:\n{log}");
}

#[tokio::test]
async fn sigterm_releases_ranges_and_exits_0() {
    const ROWS: i64 = 20_000;
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    counter_table(&pool, "items", ROWS).await;
    let jobs = JobsDir::new();
    jobs.write("term", &counter_job("term", "items", 200, "30ms", 2));

    let mut d = Daemon::start(&db.url, jobs.path(), &[]);
    let working = poll(CLAIM, || async {
        owners(&pool, "term").await.iter().filter(|o| owner_pid(o) == Some(d.pid())).count() == 2
            && rows_updated(&pool, "term").await > 0
    })
    .await;
    assert!(working, "the daemon never held both ranges; log:\n{}", d.log());

    d.terminate();
    let status = d.wait_exit(Duration::from_secs(10));
    let log = d.log();
    assert!(status.success(), "SIGTERM exit: {status}; log:\n{log}");
    assert!(log.contains("shutdown requested"), "no shutdown message in the log:\n{log}");
    let held: Vec<(i32, Option<String>, bool)> = sqlx::query_as(
        "SELECT range_no, owner, lease_until IS NOT NULL FROM pgbackfill.ranges WHERE job = $1 AND NOT done",
    )
    .bind("term")
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!held.is_empty(), "the job finished before SIGTERM");
    assert!(held.iter().all(|(_, owner, leased)| owner.is_none() && !leased), "ranges not released: {held:?}");

    let mut next = Daemon::start(&db.url, jobs.path(), &["--exit-when-done"]);
    wait_state(&pool, "term", "completed", COMPLETE, Some(&next)).await;
    let status = next.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "second daemon: {status}; log:\n{}", next.log());
    assert_exactly_once(&pool, "items", "term", ROWS).await;
}
