//! No spec text and no session setting can change what the batch statement does (issue 10 §1).
//!
//! Each test reproduces an attack that worked before the session pins and qualified operators, on
//! the real daemon, and checks the rows themselves: jobs use `set: {n: n + 1}` on rows starting at
//! `n = 0`, so "every row exactly once" is `all n = 1`.

mod common;

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool};

use common::daemon::{Daemon, JobsDir, cli};
use common::{TestDb, cluster};

const DEADLINE: Duration = Duration::from_secs(90);

async fn database(setup: &str) -> (TestDb, PgPool) {
    let db = cluster().await.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(AssertSqlSafe(setup.replace("{db}", &db.name)))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("setup: {e}"));
    (db, pool)
}

async fn histogram(pool: &PgPool, table: &str) -> Vec<(i32, i64)> {
    sqlx::query_as(AssertSqlSafe(format!("SELECT n, count(*) FROM {table} GROUP BY n ORDER BY n")))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("histogram of {table}: {e}"))
}

/// Run `run --exit-when-done` on one job until it exits; returns whether it succeeded, and its log.
fn run_to_end(url: &str, jobs: &JobsDir) -> (bool, String) {
    let mut d = Daemon::start(url, jobs.path(), &["--exit-when-done"]);
    let status = d.wait_exit(DEADLINE);
    (status.success(), d.log())
}

/// The `where` of the issue, turned into a predicate that is true for every row when
/// `standard_conforming_strings` is on (two different strings), and that closes the batch
/// statement's CASE and appends `OR true` when it is off (`'\'` does not end the literal there).
const SCS_WHERE: &str = "where: |\n  '\\' <> ' IS NULL) THEN true ELSE false END OR CASE WHEN (true\n  --'\n";

#[tokio::test]
async fn a_where_crafted_for_standard_conforming_strings_off_updates_every_row_exactly_once() {
    let (db, pool) = database(
        "ALTER DATABASE \"{db}\" SET standard_conforming_strings = off;
         CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT generate_series(1, 2000);",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("scs", &format!("name: scs\ntable: t\nset:\n  n: n + 1\nbatch:\n  size: 100\n{SCS_WHERE}"));
    // The predicate is true for every row, so the completion check finds every row still
    // matching it and the run exits 1: that is expected. What matters is the rows.
    let (_, log) = run_to_end(&db.url, &jobs);
    let state = common::daemon::job_state(&pool, "scs").await;
    assert_eq!(state.as_deref(), Some("completed"), "log:\n{log}");
    // Before the pin: every batch updated the whole table, 20 batches → n = 20.
    assert_eq!(histogram(&pool, "t").await, vec![(1, 2000)], "log:\n{log}");
}

#[tokio::test]
async fn the_issues_where_is_rejected_by_check_on_a_standard_conforming_strings_off_database() {
    let (db, _pool) = database(
        "ALTER DATABASE \"{db}\" SET standard_conforming_strings = off;
         CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT generate_series(1, 100);",
    )
    .await;
    let jobs = JobsDir::new();
    // Exactly the YAML block scalar of issue 10: with the pin it is a text value, not a predicate.
    let path = jobs.write(
        "scs",
        "name: scs\ntable: t\nset:\n  n: n + 1\nwhere: |\n  '\\' || ' IS NULL) THEN true ELSE false END OR CASE WHEN (true\n  --'\n",
    );
    let out = cli(&db.url, &["check", path.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "check accepted it:\n{text}");
    assert!(text.contains("where"), "the problem names the field:\n{text}");
    assert!(text.contains("boolean"), "PostgreSQL's message says it is not a predicate:\n{text}");
}

/// Another role plants `public.>`, `<=` and `<` on varchar (exact argument types, so they win over
/// the built-in text operators wherever `public` is on the path) that count their calls.
const HIJACK: &str = r#"
    DROP ROLE IF EXISTS "mallory_{db}";
    CREATE ROLE "mallory_{db}";
    GRANT CREATE ON SCHEMA public TO "mallory_{db}";
    CREATE TABLE public.calls (op text);
    GRANT INSERT ON public.calls TO PUBLIC;
    CREATE TABLE t (id varchar(20) PRIMARY KEY, n int NOT NULL DEFAULT 0);
    INSERT INTO t (id) SELECT format('k%s', lpad(g::text, 6, '0')) FROM generate_series(1, 3000) g;
    SET ROLE "mallory_{db}";
    CREATE FUNCTION public.evil_gt(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO public.calls VALUES ('>'); RETURN a::text > b::text; END $$;
    CREATE FUNCTION public.evil_le(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO public.calls VALUES ('<='); RETURN a::text <= b::text; END $$;
    CREATE FUNCTION public.evil_lt(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO public.calls VALUES ('<'); RETURN a::text < b::text; END $$;
    CREATE OPERATOR public.> (leftarg = varchar, rightarg = varchar, function = public.evil_gt);
    CREATE OPERATOR public.<= (leftarg = varchar, rightarg = varchar, function = public.evil_le);
    CREATE OPERATOR public.< (leftarg = varchar, rightarg = varchar, function = public.evil_lt);
    RESET ROLE;
    SELECT 1 FROM t WHERE id > 'k000001' LIMIT 1;  -- the trap works for unqualified SQL
"#;

#[tokio::test]
async fn a_user_defined_varchar_operator_in_public_never_runs() {
    let (db, pool) = database(HIJACK).await;
    let calls =
        || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM public.calls").fetch_one(&pool).await.unwrap() };
    assert!(calls().await > 0, "the planted operator is not reachable by plain SQL: the test proves nothing");
    sqlx::query("TRUNCATE public.calls").execute(&pool).await.unwrap();

    let jobs = JobsDir::new();
    let path = jobs.write("hijack", "name: hijack\ntable: t\nset:\n  n: n + 1\nbatch:\n  size: 200\nconcurrency: 2\n");
    let out = cli(&db.url, &["check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, log) = run_to_end(&db.url, &jobs);
    assert!(ok, "the job did not complete; log:\n{log}");
    assert_eq!(histogram(&pool, "t").await, vec![(1, 3000)], "log:\n{log}");
    assert_eq!(calls().await, 0, "the planted operator ran inside pgbackfill's statements");
}

#[tokio::test]
async fn a_citext_key_compares_with_its_own_operators() {
    // citext's operators live in the extension's schema and order case-insensitively; comparing
    // its keys with pg_catalog's text operators would walk them in a different order than the index.
    let (db, pool) = database(
        "CREATE SCHEMA ext; CREATE EXTENSION citext SCHEMA ext;
         CREATE TABLE t (id ext.citext PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT CASE WHEN g % 2 = 0 THEN upper(s) ELSE s END
           FROM (SELECT g, md5(g::text) AS s FROM generate_series(1, 1500) g) x;",
    )
    .await;
    let jobs = JobsDir::new();
    jobs.write("ci", "name: ci\ntable: t\nset:\n  n: n + 1\nbatch:\n  size: 100\nconcurrency: 2\n");
    let (ok, log) = run_to_end(&db.url, &jobs);
    assert!(ok, "the job did not complete; log:\n{log}");
    assert_eq!(histogram(&pool, "t").await, vec![(1, 1500)], "log:\n{log}");
}

#[tokio::test]
async fn sessions_are_pinned_and_checked() {
    let (db, _pool) = database(
        "ALTER DATABASE \"{db}\" SET standard_conforming_strings = off; \
         ALTER DATABASE \"{db}\" SET search_path = public, pg_catalog;",
    )
    .await;
    let pool = pgbackfill::db::pool(&db.url, "t", 1).await.unwrap();
    let (scs, path): (String, String) =
        sqlx::query_as("SELECT current_setting('standard_conforming_strings'), current_setting('search_path')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(scs, "on");
    assert_eq!(path, "pg_catalog, public, pg_catalog", "pg_catalog first, then the database's own path");
}

#[tokio::test]
async fn a_session_without_the_pins_is_refused_with_the_reason() {
    // What a transaction-mode pooler that drops startup options hands over: a plain session.
    let db = cluster().await.new_database().await;
    let mut plain = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url).await.unwrap();
    let err = pgbackfill::db::pin_session(&mut plain).await.expect_err("an unpinned session is refused").to_string();
    assert!(err.contains("IntervalStyle") && err.contains("pooler"), "{err}");
    // A pinned one passes.
    let opts = pgbackfill::db::connect_options(&db.url, "t").unwrap();
    let mut pinned = sqlx::ConnectOptions::connect(&opts).await.unwrap();
    pgbackfill::db::pin_session(&mut pinned).await.expect("pinned session");
}
