//! The files under `deploy/` against the real binary and a real primary + standby: the job specs
//! they ship pass `check` and are all listed in their kustomizations, `deploy/sql/grants.sql` is
//! enough to run a backfill. (`.ci/deploy` lints and validates the same files without a database.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{Daemon, cli_offline};

const DEADLINE: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The kustomize trees that ship job specs, each with its `jobs/` directory.
const TREES: &[&str] = &["deploy/base", "deploy/examples/sidecar", "deploy/examples/job"];

/// kustomize's configMapGenerator takes files, not directories, so a spec added to `jobs/` but not
/// to the kustomization would silently never reach the cluster. And every shipped spec is valid.
#[test]
fn shipped_job_specs_are_listed_in_their_kustomization_and_pass_check() {
    for tree in TREES {
        let dir = repo(tree);
        let kustomization: serde_yaml::Value = serde_yaml::from_str(&read(&dir.join("kustomization.yaml")))
            .unwrap_or_else(|e| panic!("{tree}/kustomization.yaml: {e}"));
        let listed: BTreeSet<String> = kustomization["configMapGenerator"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|generator| generator["files"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        let present: BTreeSet<String> = std::fs::read_dir(dir.join("jobs"))
            .unwrap_or_else(|e| panic!("{tree}/jobs: {e}"))
            .map(|entry| format!("jobs/{}", entry.expect("dir entry").file_name().to_string_lossy()))
            .collect();
        assert!(!present.is_empty(), "{tree}/jobs is empty");
        assert_eq!(listed, present, "{tree}: configMapGenerator files vs the files in jobs/");

        let jobs_dir = dir.join("jobs");
        let out = cli_offline(&["check", jobs_dir.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "pgbackfill check {tree}/jobs failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `deploy/sql/grants.sql`, run as it is, creates a role that can run the base tree's job from
/// start to end: progress schema, lag measurement (pg_monitor), the batches, the verification.
#[tokio::test]
async fn grants_sql_is_enough_to_run_the_shipped_job() {
    let cluster = common::cluster().await;
    let db = cluster.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, fulfillment_channel text);
         INSERT INTO public.orders (id, customer_id) SELECT g, g % 17 FROM generate_series(1, 3000) g;",
    )
    .execute(&pool)
    .await
    .expect("create orders");
    let grants = read(&repo("deploy/sql/grants.sql"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(grants)).execute(&pool).await.expect("deploy/sql/grants.sql");

    // The cluster trusts loopback connections, so the role needs no password here.
    let url = db.url.replacen("postgres@", "pgbackfill@", 1);
    assert_ne!(url, db.url, "expected a postgres@ URL: {}", db.url);
    let mut daemon = Daemon::start(&url, &repo("deploy/base/jobs"), &["--exit-when-done"]);
    let status = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "daemon exited with {status:?}; log:\n{}", daemon.log());
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.orders WHERE fulfillment_channel IS DISTINCT FROM 'web'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(left, 0, "rows not backfilled; log:\n{}", daemon.log());
    let state: String =
        sqlx::query_scalar("SELECT state FROM pgbackfill.jobs WHERE name = 'orders-fulfillment-channel'")
            .fetch_one(&pool)
            .await
            .expect("job state");
    assert_eq!(state, "completed");
}
