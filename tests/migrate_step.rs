//! Issue 11, end to end with the real daemon on the real primary + standby: low-traffic windows
//! (`schedule`) and the steps that run once a job is completed and verified (`then`).
//!
//! Waits are polls with deadlines. "Nothing happened" is asserted on every poll up to the moment
//! something is allowed to happen (a window opening), never after a bare sleep.

mod common;

use std::time::Duration;

use chrono::{DateTime, DurationRound, Timelike, Utc};
use sqlx::{AssertSqlSafe, PgPool};

use common::daemon::{Daemon, JobsDir, cli, wait_state};
use common::{TestDb, cluster};

/// Deadline for a job to finish. Generous: 2 cores shared with other test binaries.
const DEADLINE: Duration = Duration::from_secs(90);

async fn database(setup: &str) -> (TestDb, PgPool) {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(AssertSqlSafe(setup.to_string())).execute(&pool).await.unwrap_or_else(|e| panic!("setup: {e}"));
    (db, pool)
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `pgbackfill status --json` for one job.
fn status_json(url: &str, name: &str) -> serde_json::Value {
    let out = cli(url, &["status", "--json", name]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "status failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status --json: {e}:\n{text}"));
    v["jobs"].as_array().and_then(|a| a.first()).cloned().unwrap_or_else(|| panic!("no status for {name}:\n{text}"))
}

/// `pgbackfill status` as a person reads it.
fn status_text(url: &str) -> String {
    let out = cli(url, &["status"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ----- schedule -----

#[tokio::test]
async fn outside_its_window_a_job_writes_nothing_and_starts_when_the_window_opens() {
    let (db, pool) = database(
        "CREATE TABLE s (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO s (id) SELECT generate_series(1, 300);",
    )
    .await;
    // Windows have minute granularity: the next minute boundary at least 20 s away opens the
    // window, read on Berlin's wall clock (the day named, so day names are exercised too).
    let now = Utc::now();
    let mut opens: DateTime<Utc> =
        now.duration_trunc(chrono::Duration::minutes(1)).unwrap() + chrono::Duration::minutes(1);
    if opens - now < chrono::Duration::seconds(20) {
        opens += chrono::Duration::minutes(1);
    }
    let tz = chrono_tz::Europe::Berlin;
    let (from, to) = (opens.with_timezone(&tz), (opens + chrono::Duration::minutes(30)).with_timezone(&tz));
    let window =
        format!("{} {:02}:{:02}-{:02}:{:02}", from.format("%a"), from.hour(), from.minute(), to.hour(), to.minute());
    let jobs = JobsDir::new();
    jobs.write(
        "s",
        &format!(
            "name: sched\ntable: s\nset:\n  n: n + 1\nbatch:\n  size: 50\n  min_size: 1\n\
             schedule:\n  timezone: Europe/Berlin\n  windows: [\"{window}\"]\n"
        ),
    );
    let daemon = Daemon::start(&db.url, jobs.path(), &[]);
    wait_state(&pool, "sched", "running", Duration::from_secs(15), Some(&daemon)).await;

    // Held, and saying until when, with nothing written on any poll before the window opens.
    let expected = format!("the next opens at {}", from.format("%Y-%m-%d %H:%M %Z"));
    let mut said_so = false;
    while Utc::now() < opens - chrono::Duration::milliseconds(500) {
        assert_eq!(count(&pool, "SELECT count(*) FROM s WHERE n <> 0").await, 0, "wrote outside its window");
        let written = count(
            &pool,
            "SELECT coalesce(sum(rows_updated), 0)::int8 + count(*) FILTER (WHERE cursor IS NOT NULL) \
             FROM pgbackfill.ranges WHERE job = 'sched'",
        )
        .await
        .max(0);
        assert_eq!(written, 0, "the cursor moved outside the window");
        if !said_so {
            let s = status_json(&db.url, "sched");
            if let Some(reason) = s["throttled"].as_str() {
                assert!(reason.contains("outside its schedule windows"), "{reason}");
                assert!(reason.contains(&expected), "`{expected}` not in `{reason}`");
                let text = status_text(&db.url);
                assert!(text.contains(&expected), "{text}");
                said_so = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(said_so, "status never said the job is outside its window; log:\n{}", daemon.log());

    // The window opens: the job runs to completion.
    wait_state(&pool, "sched", "completed", DEADLINE, Some(&daemon)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM s WHERE n = 1").await, 300);
    let first_batch: DateTime<Utc> = sqlx::query_scalar("SELECT started_at FROM pgbackfill.jobs WHERE name = 'sched'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let finished: DateTime<Utc> = sqlx::query_scalar("SELECT finished_at FROM pgbackfill.jobs WHERE name = 'sched'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(first_batch < opens, "planned while held (planning only reads)");
    assert!(finished >= opens, "finished at {finished}, before the window opened at {opens}");
}
