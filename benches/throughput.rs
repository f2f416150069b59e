//! Throughput benchmark: pgbackfill against the obvious alternative, the single-statement UPDATE,
//! on identical copies of a realistic table, in the same run, on a real primary + streaming standby.
//!
//! Jobs use the documented configuration: adaptive batches toward `target_time: 500ms`.
//!
//! Run: `cargo bench --bench throughput` (env `BENCH_ROWS`, default 1,000,000; `BENCH_REPS`, default 3).
//! Variants are alternated within each repetition (these machines vary ±15–20% run to run) and the
//! report gives per-repetition ratios and their median. It also reports whether per-batch cost grows
//! with the cursor's position (first vs last tenth of the batches of a pgbackfill run).
//!
//! Server settings are production-like for durability (fsync and synchronous_commit on), since a
//! batched backfill commits far more often than one statement does.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::daemon::{Daemon, JobsDir};
use sqlx::{AssertSqlSafe, PgPool};

const VARIANTS: &[&str] = &["single UPDATE", "pgbackfill c=1", "pgbackfill c=2"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows = env_usize("BENCH_ROWS", 1_000_000);
    let reps = env_usize("BENCH_REPS", 3);
    let cluster = common::dedicated_cluster().await;
    let mut admin = cluster.admin_conn().await;
    for setting in ["fsync = on", "synchronous_commit = on", "shared_buffers = '512MB'", "max_wal_size = '4GB'"] {
        sqlx::raw_sql(AssertSqlSafe(format!("ALTER SYSTEM SET {setting}")))
            .execute(&mut admin)
            .await
            .expect("alter system");
    }
    drop(admin);
    cluster.restart_primary().await;
    let db = cluster.new_database().await;
    let pool = db.pool().await;
    eprintln!("seeding the template table with {rows} rows…");
    seed(&pool, rows).await;

    let mut results: Vec<[f64; 3]> = Vec::new();
    let mut growth: Vec<f64> = Vec::new();
    for rep in 0..reps {
        let mut secs = [0.0; 3];
        // Rotate the order each repetition so no variant always runs first (cold) or last.
        for k in 0..VARIANTS.len() {
            let v = (k + rep) % VARIANTS.len();
            let table = format!("bench_{rep}_{v}");
            copy_table(&pool, &table).await;
            db.wait_on_standby().await;
            sqlx::query("CHECKPOINT").execute(&pool).await.expect("checkpoint");
            let (elapsed, batch_growth) = match v {
                0 => (single_update(&pool, &table).await, None),
                _ => {
                    let (e, g) = backfill(&db.url, &table, v).await;
                    (e, Some(g))
                }
            };
            let updated: i64 =
                sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table} WHERE channel = 'web'")))
                    .fetch_one(&pool)
                    .await
                    .expect("count");
            assert_eq!(updated as usize, rows, "{} did not update every row", VARIANTS[v]);
            secs[v] = elapsed.as_secs_f64();
            if let Some(g) = batch_growth
                && v == 1
            {
                growth.push(g);
            }
            eprintln!("rep {rep}: {:<16} {:>7.2}s  {:>9.0} rows/s", VARIANTS[v], secs[v], rows as f64 / secs[v]);
            sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {table}"))).execute(&pool).await.expect("drop");
        }
        results.push(secs);
    }

    println!(
        "\n## Throughput: {rows} rows, {reps} repetitions (rows/s; ratio = variant / single UPDATE, same repetition)\n"
    );
    println!("| rep | single UPDATE | pgbackfill c=1 | ratio | pgbackfill c=2 | ratio |");
    println!("|---|---|---|---|---|---|");
    let mut r1 = Vec::new();
    let mut r2 = Vec::new();
    for (i, s) in results.iter().enumerate() {
        let rate = |t: f64| rows as f64 / t;
        r1.push(s[0] / s[1]);
        r2.push(s[0] / s[2]);
        println!(
            "| {i} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
            rate(s[0]),
            rate(s[1]),
            s[0] / s[1],
            rate(s[2]),
            s[0] / s[2]
        );
    }
    println!("\nmedian ratio c=1: {:.2}, c=2: {:.2}", median(&mut r1), median(&mut r2));
    println!(
        "time per row, last tenth / first tenth of batches (c=1), median over repetitions: {:.2}",
        median(&mut growth)
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// A table shaped like a real one: ~200 bytes a row, a secondary index, and the new nullable column.
async fn seed(pool: &PgPool, rows: usize) {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE template (
            id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL,
            total_cents bigint NOT NULL, created_at timestamptz NOT NULL, note text NOT NULL, channel text);
         INSERT INTO template SELECT g, g % 50000, (ARRAY['new','paid','shipped','done'])[1 + g % 4],
            (g * 7919) % 100000, timestamptz '2024-01-01' + g * interval '1 second',
            repeat(md5(g::text), 4), NULL FROM generate_series(1::bigint, {rows}) g;"
    )))
    .execute(pool)
    .await
    .expect("seed");
}

async fn copy_table(pool: &PgPool, table: &str) {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {table} AS SELECT * FROM template ORDER BY id;
         ALTER TABLE {table} ADD PRIMARY KEY (id);
         CREATE INDEX ON {table} (customer_id);"
    )))
    .execute(pool)
    .await
    .expect("copy table");
    // VACUUM refuses to run inside the implicit transaction of a multi-statement string.
    sqlx::raw_sql(AssertSqlSafe(format!("VACUUM ANALYZE {table}"))).execute(pool).await.expect("vacuum");
}

async fn single_update(pool: &PgPool, table: &str) -> Duration {
    let start = Instant::now();
    sqlx::raw_sql(AssertSqlSafe(format!("UPDATE {table} SET channel = 'web' WHERE channel IS NULL")))
        .execute(pool)
        .await
        .expect("single update");
    start.elapsed()
}

/// Run pgbackfill to completion; returns wall time and the per-batch growth ratio from its log.
async fn backfill(url: &str, table: &str, concurrency: usize) -> (Duration, f64) {
    let jobs = JobsDir::new();
    jobs.write(
        table,
        &format!(
            "name: {table}\ntable: {table}\nset:\n  channel: \"'web'\"\nwhere: channel IS NULL\n\
             batch: {{size: 10000, max_size: 100000, target_time: 500ms}}\nthrottle: {{max_lag: 1h}}\nconcurrency: {concurrency}\n"
        ),
    );
    let start = Instant::now();
    let mut daemon = Daemon::start(url, jobs.path(), &["--exit-when-done"]);
    let status = daemon.wait_exit(Duration::from_secs(1800));
    let elapsed = start.elapsed();
    assert!(status.success(), "pgbackfill failed:\n{}", daemon.log());
    (elapsed, batch_growth(&daemon.log()))
}

/// Time per row of the last tenth of batches over the first tenth, from the debug log. Per row, not
/// per batch: adaptive sizing grows the batches on purpose.
fn batch_growth(log: &str) -> f64 {
    let field = |l: &str, key: &str| -> Option<f64> {
        l.split(key).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let per_row: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("batch committed"))
        .filter_map(|l| Some(field(l, "ms=")? / field(l, "scanned=")?.max(1.0)))
        .collect();
    let tenth = (per_row.len() / 10).max(1);
    if per_row.len() < 2 * tenth {
        return f64::NAN;
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    mean(&per_row[per_row.len() - tenth..]) / mean(&per_row[..tenth]).max(1e-9)
}
