//! `pgbackfill check` against a real database, through the real binary: every malformed spec is
//! refused with a non-zero exit and a problem naming its file and field, the shipped examples pass,
//! and check never changes the database (catalog and table contents are compared before and
//! after every run, and the progress schema must not appear).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::TestDb;
use common::daemon::{JobsDir, cli, cli_offline};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

const EXAMPLES_SQL: &str = include_str!("fixtures/examples.sql");

/// A valid spec over the fixture's `orders`; each test writes one mistake into a copy of it.
const ORDERS: &str = "\
name: fill-channel
table: public.orders
set:
  fulfillment_channel: \"'web'\"
where: fulfillment_channel IS NULL
";

/// A fresh database with the examples' tables, plus `setup` (more SQL, may be empty).
async fn seeded(setup: &str) -> (TestDb, PgPool) {
    let db = common::cluster().await.new_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql(EXAMPLES_SQL).execute(&pool).await.expect("loading tests/fixtures/examples.sql");
    if !setup.is_empty() {
        sqlx::raw_sql(AssertSqlSafe(setup)).execute(&pool).await.expect("test setup SQL");
    }
    (db, pool)
}

/// Everything `check` might change: relations, columns, schemas, indexes, privileges, sequences'
/// positions and the rows of every user table. (Planner statistics are left out on purpose.)
async fn snapshot(pool: &PgPool) -> String {
    let catalog: String = sqlx::query_scalar(
        "SELECT md5(string_agg(x, E'\\n' ORDER BY x)) FROM ( \
           SELECT format('class %s %s %s %s %s', oid, relnamespace, relname, relkind, relacl) AS x FROM pg_class \
           UNION ALL SELECT format('attr %s %s %s %s %s %s', attrelid, attnum, attname, atttypid, attnotnull, attisdropped) \
             FROM pg_attribute \
           UNION ALL SELECT format('nsp %s %s %s', oid, nspname, nspacl) FROM pg_namespace \
           UNION ALL SELECT format('idx %s %s %s', indexrelid, indisvalid, indisready) FROM pg_index \
           UNION ALL SELECT format('proc %s %s', oid, proname) FROM pg_proc \
         ) s",
    )
    .fetch_one(pool)
    .await
    .expect("catalog snapshot");
    let mut parts = vec![catalog];
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("listing tables");
    for t in tables {
        let sum: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), 'empty') FROM {t} t"
        )))
        .fetch_one(pool)
        .await
        .expect("table checksum");
        parts.push(format!("{t} {sum}"));
    }
    let sequences: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s.%s %s %s', schemaname, sequencename, last_value, is_called) FROM pg_sequences ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    parts.extend(sequences);
    parts.join("\n")
}

/// What one run of `pgbackfill check` printed and returned.
struct Checked {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Checked {
    fn from(out: Output) -> Self {
        Checked {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json output is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `pgbackfill check [--json] PATHS` with DATABASE_URL=`url`, asserting that the database
/// `pool` looks at is exactly the same afterwards and has no progress schema.
async fn check_db(pool: &PgPool, url: &str, paths: &[&Path], json: bool) -> Checked {
    let before = snapshot(pool).await;
    let mut args = vec!["check".to_string()];
    if json {
        args.push("--json".into());
    }
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let url = url.to_string();
    // The binary blocks; keep the runtime's thread free for the other tests' connections.
    let out = tokio::task::spawn_blocking(move || cli(&url, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("running check");
    let checked = Checked::from(out);
    assert_eq!(snapshot(pool).await, before, "check changed the database; {checked}");
    let progress: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = 'pgbackfill'")
            .fetch_optional(pool)
            .await
            .expect("looking for the progress schema");
    assert_eq!(progress, None, "check created the progress schema; {checked}");
    checked
}

/// Asserts `check` refused `file`: exit status 1, a human-readable line `FILE[:L:C]: FIELD: ...MESSAGE...`,
/// and the same problem in `--json`. Returns that problem (JSON) for further assertions.
async fn assert_rejected(pool: &PgPool, url: &str, file: &Path, field: &str, message: &str) -> Value {
    let human = check_db(pool, url, &[file], false).await;
    assert!(!human.success, "check accepted {}; {human}", file.display());
    assert_eq!(human.code, Some(1), "{human}");
    let shown = file.display().to_string();
    let needle = if field.is_empty() { ": ".to_string() } else { format!(": {field}: ") };
    assert!(
        human.stdout.lines().any(|l| l.starts_with(&shown) && l.contains(&needle) && l.contains(message)),
        "no line naming {shown}, field `{field}` and `{message}`; {human}"
    );

    let json = check_db(pool, url, &[file], true).await;
    assert_eq!(json.code, Some(1), "{json}");
    let report = json.json();
    assert_eq!(report["valid"], Value::Bool(false), "{json}");
    let problems = report["problems"].as_array().expect("problems array");
    let found: Vec<&Value> = problems
        .iter()
        .filter(|p| p["file"] == Value::String(shown.clone()) && p["field"] == Value::String(field.into()))
        .collect();
    assert_eq!(found.len(), 1, "one problem for `{field}` in {shown} expected; {json}");
    let problem = found[0].clone();
    assert!(problem["message"].as_str().is_some_and(|m| m.contains(message)), "{problem}");
    assert!(problem["hint"].as_str().is_some_and(|h| !h.is_empty()), "every problem has a fix: {problem}");
    problem
}

/// One spec file (plus `setup` SQL) refused for `field` with `message`. Returns the problem.
async fn rejects(setup: &str, yaml: &str, field: &str, message: &str) -> Value {
    let (db, pool) = seeded(setup).await;
    let jobs = JobsDir::new();
    let file = jobs.write("job", yaml);
    assert_rejected(&pool, &db.url, &file, field, message).await
}

/// `ORDERS` with the line starting with `from` replaced by `to` (or `to` appended if `from` is empty).
fn orders_with(from: &str, to: &str) -> String {
    if from.is_empty() {
        return format!("{ORDERS}{to}\n");
    }
    assert!(ORDERS.lines().any(|l| l.starts_with(from)), "no line `{from}` in ORDERS");
    ORDERS.lines().map(|l| if l.starts_with(from) { to } else { l }).collect::<Vec<_>>().join("\n") + "\n"
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/examples")
}

// ----- what the file itself gets wrong (found offline, reported by the same command) -----

#[tokio::test]
async fn bad_yaml_syntax() {
    // Whole-file problem: no field, but the file, a position and the parser's complaint.
    let p =
        rejects("", "name: a\ntable: public.orders\nset:\n  x: [unclosed\n", "", "did not find expected ',' or ']'")
            .await;
    assert_eq!((p["line"].as_u64(), p["column"].as_u64()), (Some(5), Some(1)), "{p}");
}

#[tokio::test]
async fn unknown_field() {
    let p = rejects("", &orders_with("", "batch:\n  sise: 10"), "batch.sise", "unknown field `sise`").await;
    assert!(p["hint"].as_str().unwrap().contains("did you mean `size`?"), "{p}");
    rejects("", &orders_with("", "tabel: orders"), "tabel", "unknown field `tabel`").await;
}

#[tokio::test]
async fn missing_name() {
    rejects("", &orders_with("name:", ""), "name", "is missing").await;
}

#[tokio::test]
async fn duplicate_names_are_reported_in_each_file() {
    let (db, pool) = seeded("").await;
    let jobs = JobsDir::new();
    let a = jobs.write("a", ORDERS);
    let b = jobs.write("b", &orders_with("where:", "where: status = 'paid'"));
    let out = check_db(&pool, &db.url, &[jobs.path()], true).await;
    assert_eq!(out.code, Some(1), "{out}");
    let report = out.json();
    let problems = report["problems"].as_array().unwrap();
    for (file, other) in [(&a, &b), (&b, &a)] {
        let p = problems
            .iter()
            .find(|p| p["file"] == file.display().to_string().as_str() && p["field"] == "name")
            .unwrap_or_else(|| panic!("no `name` problem for {}; {out}", file.display()));
        let message = p["message"].as_str().unwrap();
        assert!(message.contains("`fill-channel`") && message.contains(&other.display().to_string()), "{p}");
    }
    assert_eq!(report["ok"].as_array().unwrap().len(), 0, "neither duplicate is valid; {out}");
}

#[tokio::test]
async fn empty_set() {
    rejects("", "name: a\ntable: public.orders\nset: {}\n", "set", "assigns no columns").await;
}

#[tokio::test]
async fn zero_and_negative_batch_sizes() {
    rejects("", &orders_with("", "batch:\n  size: 0"), "batch.size", "is 0, must be at least 1 row").await;
    rejects("", &orders_with("", "batch:\n  min_size: -5"), "batch.min_size", "is -5, must be at least 1").await;
}

#[tokio::test]
async fn min_size_above_max_size() {
    let yaml = orders_with("", "batch:\n  size: 500\n  min_size: 1000\n  max_size: 100");
    rejects("", &yaml, "batch.min_size", "min_size 1000 is larger than max_size 100").await;
}

#[tokio::test]
async fn bad_durations() {
    rejects("", &orders_with("", "batch:\n  pause: 5 parsecs"), "batch.pause", "is not a duration").await;
    rejects("", &orders_with("", "timeouts:\n  lock: 0s"), "timeouts.lock", "is zero").await;
}

#[tokio::test]
async fn set_of_an_explicit_key_column_is_refused_offline() {
    let yaml = orders_with("", "key: [id]").replace("set:\n", "set:\n  id: id + 1\n");
    rejects("", &yaml, "set.id", "assigns key column `id`").await;
}

#[tokio::test]
async fn unquoted_injection_in_table_is_not_an_identifier() {
    let p =
        rejects("", &orders_with("table:", "table: orders; DROP TABLE x"), "table", "is not a valid identifier").await;
    assert!(p["message"].as_str().unwrap().contains("`orders; DROP TABLE x`"), "{p}");
}

#[tokio::test]
async fn statements_in_sql_fields_are_refused() {
    let yaml = orders_with("  fulfillment_channel:", "  fulfillment_channel: \"'web'; DROP TABLE public.users\"");
    rejects("", &yaml, "set.fulfillment_channel", "contains `;`").await;
    let yaml = orders_with("where:", "where: true; DELETE FROM public.orders");
    rejects("", &yaml, "where", "contains `;`").await;
}

// ----- what only the database can tell -----

#[tokio::test]
async fn nonexistent_table() {
    let p = rejects("", &orders_with("table:", "table: public.ordres"), "table", "does not exist").await;
    assert!(p["message"].as_str().unwrap().contains(r#""public"."ordres""#), "{p}");
}

#[tokio::test]
async fn quoted_injection_in_table_is_just_a_name_that_does_not_exist() {
    let yaml = orders_with("table:", r#"table: '"orders; DROP TABLE x"'"#);
    let p = rejects("", &yaml, "table", "does not exist").await;
    assert!(p["message"].as_str().unwrap().contains(r#""orders; DROP TABLE x""#), "{p}");
}

#[tokio::test]
async fn quoted_injection_in_a_set_column_is_just_a_name_that_does_not_exist() {
    let yaml = ORDERS.replace("fulfillment_channel: ", r#"'"status"" = 1; DROP TABLE orders; --"': "#);
    rejects("", &yaml, r#"set."status"" = 1; DROP TABLE orders; --""#, "does not exist").await;
}

#[tokio::test]
async fn nonexistent_columns() {
    let yaml = ORDERS.replace("fulfillment_channel: ", "fulfilment_channel: ");
    let p = rejects("", &yaml, "set.fulfilment_channel", "column \"fulfilment_channel\" does not exist").await;
    assert!(p["line"].as_u64() == Some(4), "positioned at the `set` entry: {p}");
    rejects("", &orders_with("", "key: [ident]"), "key[0]", "column \"ident\" does not exist").await;
}

#[tokio::test]
async fn key_that_is_not_unique() {
    // customer_id is NOT NULL and even indexed, but not uniquely.
    let setup = "CREATE INDEX orders_customer ON public.orders (customer_id)";
    let p = rejects(setup, &orders_with("", "key: [customer_id]"), "key", "no unique btree index on (\"customer_id\")")
        .await;
    assert!(p["hint"].as_str().unwrap().contains("CREATE UNIQUE INDEX CONCURRENTLY"), "{p}");
}

#[tokio::test]
async fn key_that_is_only_partially_unique() {
    // Unique only among paid orders: not a key for the whole table.
    let setup = "CREATE UNIQUE INDEX orders_paid_total ON public.orders (total_cents, id) WHERE status = 'paid'";
    rejects(setup, &orders_with("", "key: [total_cents, id]"), "key", "no unique btree index").await;
}

#[tokio::test]
async fn key_that_is_nullable() {
    let setup = "ALTER TABLE public.orders ADD COLUMN external_ref bigint UNIQUE";
    let p = rejects(setup, &orders_with("", "key: [external_ref]"), "key[0]", "is nullable").await;
    assert!(p["hint"].as_str().unwrap().contains("SET NOT NULL"), "{p}");
}

#[tokio::test]
async fn set_of_the_default_primary_key_is_refused_by_the_database_check() {
    // No `key:` written: only the catalog knows `id` is the key, so offline check lets it through.
    let yaml = ORDERS.replace("set:\n", "set:\n  id: id + 1000000\n");
    let jobs = JobsDir::new();
    let file = jobs.write("job", &yaml);
    let offline = Checked::from(cli_offline(&["check", &file.display().to_string()]));
    assert!(offline.success, "offline cannot know the primary key; {offline}");

    let (db, pool) = seeded("").await;
    let p = assert_rejected(&pool, &db.url, &file, "set.id", "\"id\" is a key column").await;
    assert_eq!(p["line"].as_u64(), Some(4), "{p}");
}

/// A text-keyed table without a primary key; `index` is the unique index to put on `code`.
fn events_with(index: &str) -> String {
    format!(
        "CREATE TABLE public.events (code text NOT NULL, note text); {index}; \
         INSERT INTO public.events SELECT 'e' || g, NULL FROM generate_series(1, 2000) g; ANALYZE public.events;"
    )
}

const EVENTS: &str = "name: notes\ntable: public.events\nkey: [code]\nset:\n  note: \"'x'\"\n";

#[tokio::test]
async fn key_index_sorted_descending_is_refused() {
    // `ORDER BY code` could still walk it backwards, but NULLS FIRST/LAST and row comparisons are
    // where such an index silently stops serving the batch: only the plain ascending one counts.
    let setup = events_with("CREATE UNIQUE INDEX events_code_desc ON public.events (code DESC)");
    let p = rejects(&setup, EVENTS, "key", "unique index \"events_code_desc\" on (\"code\")").await;
    assert!(p["message"].as_str().unwrap().contains("code is sorted DESC"), "{p}");
    assert!(p["hint"].as_str().unwrap().contains("CREATE UNIQUE INDEX CONCURRENTLY"), "{p}");
}

#[tokio::test]
async fn key_index_with_another_operator_class_or_collation_is_refused() {
    let setup = events_with("CREATE UNIQUE INDEX events_code_pattern ON public.events (code text_pattern_ops)");
    let p = rejects(&setup, EVENTS, "key", "unique index \"events_code_pattern\"").await;
    assert!(p["message"].as_str().unwrap().contains("uses operator class text_pattern_ops"), "{p}");
    let setup = events_with("CREATE UNIQUE INDEX events_code_c ON public.events (code COLLATE \"C\")");
    let p = rejects(&setup, EVENTS, "key", "unique index \"events_code_c\"").await;
    assert!(p["message"].as_str().unwrap().contains("uses collation \"C\""), "{p}");
}

#[tokio::test]
async fn a_plain_index_is_preferred_to_one_that_sorts_differently() {
    let setup = events_with(
        "CREATE UNIQUE INDEX events_a_desc ON public.events (code DESC); \
         CREATE UNIQUE INDEX events_b_plain ON public.events (code)",
    );
    let (db, pool) = seeded(&setup).await;
    let jobs = JobsDir::new();
    let file = jobs.write("job", EVENTS);
    let out = check_db(&pool, &db.url, &[&file], false).await;
    assert!(out.success && out.stdout.contains("via index events_b_plain"), "{out}");
}

#[tokio::test]
async fn table_without_primary_key_needs_an_explicit_key() {
    let setup = "CREATE TABLE public.events (code text NOT NULL, note text); \
                 CREATE UNIQUE INDEX events_code ON public.events (code); \
                 INSERT INTO public.events SELECT 'e' || g, NULL FROM generate_series(1, 2000) g; ANALYZE public.events;";
    let yaml = "name: notes\ntable: public.events\nset:\n  note: \"'x'\"\n";
    let p = rejects(setup, yaml, "key", "\"public\".\"events\" has no primary key").await;
    assert!(p["hint"].as_str().unwrap().contains("set `key:`"), "{p}");
}

#[tokio::test]
async fn sql_errors_in_set_blame_the_set_entry() {
    let cases = [
        ("lower(no_such_column)", "column \"no_such_column\" does not exist"),
        ("no_such_function(status)", "function no_such_function(text) does not exist"),
        ("'web' ||", "syntax error"),
        ("total_cents / 'x'", "invalid input syntax for type bigint"),
    ];
    let (db, pool) = seeded("").await;
    let jobs = JobsDir::new();
    for (expr, message) in cases {
        let yaml = orders_with("  fulfillment_channel:", &format!("  fulfillment_channel: \"{expr}\""));
        let file = jobs.write("job", &yaml);
        let p = assert_rejected(&pool, &db.url, &file, "set.fulfillment_channel", message).await;
        assert!(p["message"].as_str().unwrap().contains("does not prepare"), "{expr}: {p}");
    }
    // With several entries, the one at fault (found by the error's position in the statement).
    let yaml = ORDERS.replace("set:\n", "set:\n  status: upper(status) || no_such_function(1)\n");
    let file = jobs.write("job", &yaml);
    let p =
        assert_rejected(&pool, &db.url, &file, "set.status", "function no_such_function(integer) does not exist").await;
    assert_eq!(p["line"].as_u64(), Some(4), "{p}");
}

#[tokio::test]
async fn sql_errors_in_where_blame_where() {
    let cases = [
        ("fulfillment_channel IS NUL", "syntax error"),
        ("no_such_column IS NULL", "column \"no_such_column\" does not exist"),
        ("status = 1", "operator does not exist: text = integer"),
        // "argument of AND …", or "of CASE/WHEN …" when the batch wraps `where` in a CASE.
        ("total_cents", "must be type boolean, not type bigint"),
        ("no_such_function(status)", "function no_such_function(text) does not exist"),
    ];
    let (db, pool) = seeded("").await;
    let jobs = JobsDir::new();
    for (predicate, message) in cases {
        let file = jobs.write("job", &orders_with("where:", &format!("where: {predicate}")));
        assert_rejected(&pool, &db.url, &file, "where", message).await;
    }
}

#[tokio::test]
async fn role_without_update_privilege_is_told_what_to_grant() {
    let (db, pool) = seeded("").await;
    let role = format!("r_{}", db.name);
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE ROLE {role} LOGIN"))).execute(&pool).await.expect("CREATE ROLE");
    let url = format!("postgres://{role}@127.0.0.1:{}/{}", common::cluster().await.primary_port(), db.name);
    let jobs = JobsDir::new();
    let file = jobs.write("job", ORDERS);

    // Nothing granted: neither SELECT nor UPDATE.
    let out = check_db(&pool, &url, &[&file], true).await;
    assert_eq!(out.code, Some(1), "{out}");
    let report = out.json();
    let fields: Vec<&str> = report["problems"].as_array().unwrap().iter().filter_map(|p| p["field"].as_str()).collect();
    assert!(fields.contains(&"table") && fields.contains(&"set.fulfillment_channel"), "{out}");

    sqlx::raw_sql(AssertSqlSafe(format!("GRANT SELECT ON public.orders TO {role}"))).execute(&pool).await.unwrap();
    let p =
        assert_rejected(&pool, &url, &file, "set.fulfillment_channel", "may not UPDATE column \"fulfillment_channel\"")
            .await;
    assert_eq!(p["hint"], r#"GRANT UPDATE ("fulfillment_channel") ON "public"."orders" TO <role>"#);

    // Granting exactly what the hint says is enough.
    sqlx::raw_sql(AssertSqlSafe(format!("GRANT UPDATE (fulfillment_channel) ON public.orders TO {role}")))
        .execute(&pool)
        .await
        .unwrap();
    let out = check_db(&pool, &url, &[&file], false).await;
    assert!(out.success, "{out}");
}

// ----- what passes -----

#[tokio::test]
async fn examples_pass_against_the_fixture() {
    let (db, pool) = seeded("").await;
    let out = check_db(&pool, &db.url, &[&examples()], false).await;
    assert!(out.success, "{out}");
    for (name, table, index) in [
        ("order-items-composite", r#""public"."order_items""#, "order_items_pkey"),
        ("orders-fulfillment-channel", r#""public"."orders""#, "orders_pkey"),
        ("users-email-lowercase", r#""public"."users""#, "users_pkey"),
    ] {
        let line = format!("ok: {name} (");
        let expected = format!(": {table} via index {index}");
        assert!(out.stdout.lines().any(|l| l.starts_with(&line) && l.contains(&expected)), "{name}; {out}");
    }
    assert!(out.stdout.contains("0 problem(s), 3 valid job(s)"), "{out}");
    assert!(!out.stdout.contains("offline"), "{out}");

    let out = check_db(&pool, &db.url, &[&examples()], true).await;
    let report = out.json();
    assert_eq!(report["valid"], true, "{out}");
    assert_eq!(report["online"], true, "{out}");
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{out}");
    assert_eq!(report["ok"].as_array().unwrap().len(), 3, "{out}");
    let composite = report["ok"].as_array().unwrap().iter().find(|j| j["name"] == "order-items-composite").unwrap();
    assert_eq!(composite["key"], serde_json::json!(["order_id", "line_no"]), "{out}");
}

#[tokio::test]
async fn key_unique_through_an_index_passes() {
    let setup = "CREATE TABLE public.events (code text NOT NULL, note text); \
                 CREATE UNIQUE INDEX events_code ON public.events (code); \
                 INSERT INTO public.events SELECT 'e' || g, NULL FROM generate_series(1, 5000) g; ANALYZE public.events;";
    let (db, pool) = seeded(setup).await;
    let jobs = JobsDir::new();
    let file =
        jobs.write("job", "name: notes\ntable: events\nkey: [code]\nset:\n  note: \"'x'\"\nwhere: note IS NULL\n");
    let out = check_db(&pool, &db.url, &[&file], false).await;
    assert!(out.success, "{out}");
    assert!(
        out.stdout.contains(r#"ok: notes ("#) && out.stdout.contains(r#"): "public"."events" via index events_code"#),
        "{out}"
    );
}

#[tokio::test]
async fn a_plan_that_scans_the_table_is_refused() {
    // With index scans disabled for the database, the batch can only be planned as a full scan:
    // that is what check must catch (the same happens when a `where` defeats the key index).
    let (db, pool) = seeded("").await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER DATABASE {0} SET enable_indexscan = off; ALTER DATABASE {0} SET enable_bitmapscan = off; \
         ALTER DATABASE {0} SET enable_indexonlyscan = off",
        db.name
    )))
    .execute(&pool)
    .await
    .unwrap();
    let jobs = JobsDir::new();
    let file = jobs.write("job", ORDERS);
    let p = assert_rejected(&pool, &db.url, &file, "key", "scans the whole table instead of walking index orders_pkey")
        .await;
    assert!(p["hint"].as_str().unwrap().contains("ANALYZE"), "{p}");
}

/// The index the UPDATE under the plan's `ModifyTable` walks (`None`: no index, e.g. a Seq Scan).
/// Written here independently of `check`, to hold its verdict against.
fn update_index(plan: &Value) -> Option<String> {
    fn find<'a>(v: &'a Value, ty: &str) -> Option<&'a Value> {
        if v["Node Type"] == ty {
            return Some(v);
        }
        match v {
            Value::Array(a) => a.iter().find_map(|x| find(x, ty)),
            Value::Object(o) => o.values().find_map(|x| find(x, ty)),
            _ => None,
        }
    }
    let modify = find(plan, "ModifyTable").expect("a ModifyTable node");
    let scan = modify["Plans"].as_array()?.iter().find(|c| c["Parent Relationship"] == "Outer")?;
    match scan["Node Type"].as_str()? {
        "Index Scan" | "Index Only Scan" => scan["Index Name"].as_str().map(String::from),
        "Bitmap Heap Scan" => find(scan, "Bitmap Index Scan")?["Index Name"].as_str().map(String::from),
        _ => None,
    }
}

#[tokio::test]
async fn an_update_that_walks_a_where_index_is_refused() {
    // 200k orders, 0.1% of them legacy, and an index on status: planned naively, the UPDATE finds
    // its rows through `orders_status` (all legacy rows of the table, every batch) instead of the
    // batch's key range. Whatever the batch SQL looks like, check must agree with the plan.
    let setup = "INSERT INTO public.orders (id, customer_id, status, total_cents) \
                 SELECT g, 1, CASE WHEN g % 1000 = 0 THEN 'legacy' ELSE 'paid' END, 1 \
                 FROM generate_series(5001, 200000) g; \
                 CREATE INDEX orders_status ON public.orders (status); ANALYZE public.orders;";
    let (db, pool) = seeded(setup).await;
    let yaml = orders_with("where:", "where: status = 'legacy'") + "batch:\n  size: 1000\n";
    let jobs = JobsDir::new();
    let file = jobs.write("job", &yaml);

    // The statement check plans the UPDATE as it does: cursor one batch in, a batch's key range.
    let spec = pgbackfill::spec::parse_str(&file, &yaml).expect("valid spec");
    let mut conn = pool.acquire().await.unwrap();
    let resolved = pgbackfill::catalog::resolve(&mut conn, &spec).await.unwrap().expect("resolves");
    let sql = resolved.target.statements().next_update;
    let plan: Value = sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}")))
        .bind("1000")
        .bind("2000")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    match update_index(&plan).as_deref() {
        Some("orders_pkey") => {
            let out = check_db(&pool, &db.url, &[&file], false).await;
            assert!(out.success, "the UPDATE walks the key index, check must pass; {out}\n{plan:#}");
        }
        Some(other) => {
            let p = assert_rejected(&pool, &db.url, &file, "where", &format!("walks index {other} instead")).await;
            assert!(p["hint"].as_str().unwrap().contains("ANALYZE"), "{p}");
        }
        None => {
            assert_rejected(&pool, &db.url, &file, "key", "scans the whole table").await;
        }
    }
}

#[tokio::test]
async fn check_prepares_and_plans_but_never_executes() {
    // A `set` with side effects: were the batch executed (even rolled back), the sequence would move.
    let setup = "CREATE SEQUENCE public.witness";
    let (db, pool) = seeded(setup).await;
    let jobs = JobsDir::new();
    let yaml = orders_with("  fulfillment_channel:", "  fulfillment_channel: \"nextval('public.witness')::text\"");
    let file = jobs.write("job", &yaml);
    let out = check_db(&pool, &db.url, &[&file], false).await;
    assert!(out.success, "{out}");
    let called: bool = sqlx::query_scalar("SELECT is_called FROM public.witness").fetch_one(&pool).await.unwrap();
    assert!(!called, "the batch statement ran");
}

#[tokio::test]
async fn json_output_lists_every_problem_with_file_and_field() {
    let (db, pool) = seeded("").await;
    let jobs = JobsDir::new();
    let bad_batch = jobs.write("bad-batch", &orders_with("", "batch:\n  size: 0"));
    let bad_table = jobs.write("bad-table", &orders_with("name:", "name: other").replace("public.orders", "nope"));
    let good = jobs.write("good", &orders_with("name:", "name: fine"));
    let out = check_db(&pool, &db.url, &[jobs.path()], true).await;
    assert_eq!(out.code, Some(1), "{out}");
    let report = out.json();
    assert_eq!(report["valid"], false);
    assert_eq!(report["online"], true);
    let problems = report["problems"].as_array().unwrap();
    let pairs: Vec<(String, String)> = problems
        .iter()
        .map(|p| (p["file"].as_str().unwrap().to_string(), p["field"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        pairs,
        [
            (bad_batch.display().to_string(), "batch.size".to_string()),
            (bad_table.display().to_string(), "table".to_string())
        ],
        "{out}"
    );
    let ok = report["ok"].as_array().unwrap();
    assert_eq!(ok.len(), 1, "{out}");
    assert_eq!(ok[0]["file"], good.display().to_string().as_str());
    assert_eq!(ok[0]["key_index"], "orders_pkey");
}

#[tokio::test]
async fn offline_check_validates_without_a_database() {
    let out = Checked::from(cli_offline(&["check", &examples().display().to_string()]));
    assert!(out.success, "{out}");
    assert!(out.stdout.contains("(offline"), "{out}");
    assert!(out.stdout.contains("0 problem(s), 3 valid job(s)"), "{out}");

    let jobs = JobsDir::new();
    let bad = jobs.write("bad", &orders_with("", "batch:\n  size: 0"));
    let out = Checked::from(cli_offline(&["check", "--json", &bad.display().to_string()]));
    assert_eq!(out.code, Some(1), "{out}");
    let report = out.json();
    assert_eq!(report["valid"], false);
    assert_eq!(report["online"], false);
    assert_eq!(report["problems"][0]["field"], "batch.size", "{out}");
    assert_eq!(report["problems"][0]["file"], bad.display().to_string().as_str(), "{out}");

    // What needs the catalog is not claimed offline.
    let unknown =
        jobs.write("unknown-table", &orders_with("table:", "table: public.ordres").replace("fill-channel", "x"));
    let out = Checked::from(cli_offline(&["check", &unknown.display().to_string()]));
    assert!(out.success, "{out}");
}
