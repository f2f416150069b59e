//! `pgbackfill check`: everything that can be known about a spec before it runs.
//!
//! Offline: parse and validate. With a database: resolve against the catalog (table, columns,
//! privileges, unique NOT NULL key), prepare the exact batch statement (so SQL errors in `set` and
//! `where` surface now, with PostgreSQL's message) and EXPLAIN it to make sure it walks the key
//! index rather than scanning the table. All of it inside a transaction that is rolled back: check
//! never writes.

use std::path::PathBuf;

use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::{PgDatabaseError, PgErrorPosition};

use crate::catalog::{self, Resolved};
use crate::spec::{self, JobSpec, Problem};

/// The outcome of checking some files.
#[derive(Debug, Serialize)]
pub struct Report {
    pub valid: bool,
    /// Jobs that passed every check that ran.
    pub ok: Vec<CheckedJob>,
    pub problems: Vec<Problem>,
    /// Not errors, but worth knowing before a run (a job that would do harm if run twice, a role
    /// that cannot read replication lag). They do not change the exit code.
    pub warnings: Vec<Warning>,
    /// Whether the database checks ran.
    pub online: bool,
}

#[derive(Debug, Serialize)]
pub struct Warning {
    /// The spec file, or none for a warning about the database or role.
    pub file: Option<PathBuf>,
    pub field: Option<String>,
    pub message: String,
    pub hint: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("warning: ")?;
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{} (fix: {})", self.message, self.hint)
    }
}

#[derive(Debug, Serialize)]
pub struct CheckedJob {
    pub name: String,
    pub file: PathBuf,
    /// Set when checked online.
    pub table: Option<String>,
    pub key: Option<Vec<String>>,
    pub key_index: Option<String>,
    pub notes: Vec<String>,
}

/// Check files/directories; with a pool, also against the database and the progress table in
/// `schema` (a job whose meaning changed since it was registered would be refused by the daemon).
pub async fn check(paths: &[PathBuf], pool: Option<&PgPool>, schema: &str) -> Result<Report, sqlx::Error> {
    let loaded = spec::load_paths(paths);
    let mut problems = loaded.problems;
    let mut ok = Vec::new();
    let mut warnings = Vec::new();
    if let Some(pool) = pool {
        warnings.extend(role_warnings(pool).await?);
    }
    for job in &loaded.jobs {
        warnings.extend(rerun_warnings(&job.spec, &job.path));
    }
    for job in loaded.jobs {
        let mut checked = CheckedJob {
            name: job.spec.name.clone(),
            file: job.path.clone(),
            table: None,
            key: None,
            key_index: None,
            notes: Vec::new(),
        };
        if let Some(pool) = pool {
            let found = check_online(pool, &job.spec, &mut checked, schema).await?;
            if !found.is_empty() {
                problems.extend(found.into_iter().map(|f| {
                    let at = spec::locate_field(&job.path, &f.field);
                    Problem::new(&job.path, f.field, f.message, f.hint).at(at)
                }));
                continue;
            }
        }
        ok.push(checked);
    }
    Ok(Report { valid: problems.is_empty(), ok, problems, warnings, online: pool.is_some() })
}

/// A role without `pg_monitor` (or `pg_read_all_stats`) sees replication lag as NULL: the throttle
/// fails closed and every job would sit throttled.
async fn role_warnings(pool: &PgPool) -> Result<Vec<Warning>, sqlx::Error> {
    let (role, can_monitor): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, pg_has_role(current_user, 'pg_monitor', 'USAGE') \
           OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') \
           OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_one(pool)
    .await?;
    Ok(if can_monitor {
        Vec::new()
    } else {
        vec![Warning {
            file: None,
            field: None,
            message: format!(
                "role {} lacks pg_monitor: it cannot read replication lag, so the throttle fails closed and every \
                 job would stay throttled",
                crate::ident::quote_ident(&role)
            ),
            hint: format!("GRANT pg_monitor TO {}", crate::ident::quote_ident(&role)),
        }]
    })
}

/// A `set` that reads the column it writes (`n: n + 1`) changes the row again each time it runs;
/// without a `where` that stops matching once a row is done, a reset (or a second job) applies it
/// twice.
fn rerun_warnings(spec: &JobSpec, file: &std::path::Path) -> Vec<Warning> {
    if spec.where_.is_some() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (written, expr) in &spec.set {
        let Ok(column) = crate::ident::parse_ident(written) else { continue };
        if identifiers(expr).contains(&column) {
            out.push(Warning {
                file: Some(file.to_path_buf()),
                field: Some(format!("set.{written}")),
                message: format!(
                    "`{expr}` reads the column it writes and no `where` guards it: the job is not idempotent, so \
                     running it again (after `pgbackfill reset`, or as a copy under another name) changes rows twice"
                ),
                hint: format!(
                    "add a `where` that only matches rows not done yet (e.g. `where: {} IS NULL` with a new column), \
                     or make the expression not depend on the old value",
                    crate::ident::quote_ident(&column)
                ),
            });
        }
    }
    out
}

/// The identifiers an SQL expression mentions, as PostgreSQL reads them: unquoted names folded to
/// lower case, quoted names exact; string literals (plain, `E''`, dollar-quoted) skipped.
fn identifiers(sql: &str) -> Vec<String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // A string literal; `E'…'` allows backslash escapes.
            let escapes = i > 0 && matches!(chars[i - 1], 'e' | 'E');
            i += 1;
            while i < chars.len() {
                if escapes && chars[i] == '\\' {
                    i += 2;
                    continue;
                }
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
        } else if c == '$' && !chars.get(i.wrapping_sub(1)).is_some_and(|p| p.is_alphanumeric() || *p == '_') {
            // `$tag$ … $tag$` (or a `$1` parameter, which the spec refuses anyway).
            let start = i;
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if chars.get(j) == Some(&'$') {
                let tag: String = chars[start..=j].iter().collect();
                let rest: String = chars[j + 1..].iter().collect();
                i = match rest.find(&tag) {
                    Some(end) => j + 1 + rest[..end].chars().count() + tag.chars().count(),
                    None => chars.len(),
                };
            } else {
                i = j;
            }
        } else if c == '"' {
            let mut name = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' {
                    if chars.get(i + 1) == Some(&'"') {
                        name.push('"');
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(name);
        } else if c.is_alphabetic() || c == '_' {
            let mut name = String::new();
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                name.push(chars[i]);
                i += 1;
            }
            // `E'…'`: the prefix of a string literal, not a name.
            if !(name.eq_ignore_ascii_case("e") && chars.get(i) == Some(&'\'')) {
                out.push(name.to_lowercase());
            }
        } else {
            i += 1;
        }
    }
    out
}

async fn check_online(
    pool: &PgPool,
    spec: &JobSpec,
    out: &mut CheckedJob,
    schema: &str,
) -> Result<Vec<catalog::Finding>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Read-only and short: check must never write nor wait long on a lock.
    sqlx::raw_sql("SET TRANSACTION READ ONLY; SET LOCAL lock_timeout = '5s'; SET LOCAL statement_timeout = '60s'")
        .execute(&mut *tx)
        .await?;
    // Each expression on its own, so every bad one is reported, not only the first the batch
    // statement trips on (and also when the catalog already found other problems).
    let expressions = expression_findings(&mut tx, spec).await?;
    let resolved = match catalog::resolve(&mut tx, spec).await? {
        Ok(r) => r,
        Err(mut findings) => {
            let new: Vec<_> =
                expressions.into_iter().filter(|e| !findings.iter().any(|f| f.field == e.field)).collect();
            findings.extend(new);
            return Ok(findings);
        }
    };
    out.table = Some(resolved.target.table.quoted());
    out.key = Some(resolved.target.key.iter().map(|k| k.name.clone()).collect());
    out.key_index = Some(resolved.key_index.clone());
    if !expressions.is_empty() {
        return Ok(expressions);
    }
    if let Some(changed) = meaning_changed(&mut tx, spec, &resolved, schema).await? {
        return Ok(vec![changed]);
    }
    let mut findings = check_statements(&mut tx, &resolved, spec, out).await?;
    findings.extend(crate::steps::check_catalog(&mut tx, spec, &resolved).await?);
    tx.rollback().await?;
    Ok(findings)
}

/// Prepare `set` expressions and `where` one by one against the table (each in a savepoint: a failed
/// prepare aborts the transaction), so a spec with several mistakes gets all of them at once.
async fn expression_findings(
    conn: &mut sqlx::PgConnection,
    spec: &JobSpec,
) -> Result<Vec<catalog::Finding>, sqlx::Error> {
    use sqlx::{Executor, SqlSafeStr};
    let Ok(table) = crate::ident::parse_qualified(&spec.table) else { return Ok(Vec::new()) };
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass($1)::text").bind(table.quoted()).fetch_one(&mut *conn).await?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let mut probes: Vec<(String, String, &str)> = spec
        .set
        .iter()
        .map(|(col, expr)| {
            (
                format!("set.{col}"),
                format!("SELECT ({expr}) FROM {} LIMIT 0", table.quoted()),
                "fix the SQL expression; it is evaluated for each updated row",
            )
        })
        .collect();
    if let Some(w) = &spec.where_ {
        probes.push((
            "where".into(),
            format!("SELECT 1 FROM {} WHERE ({w}) LIMIT 0", table.quoted()),
            "fix the SQL predicate",
        ));
    }
    let mut findings = Vec::new();
    for (field, sql, hint) in probes {
        sqlx::raw_sql("SAVEPOINT pgbackfill_check").execute(&mut *conn).await?;
        let prepared = conn.prepare(sqlx::AssertSqlSafe(sql).into_sql_str()).await.map(|_| ());
        sqlx::raw_sql("ROLLBACK TO SAVEPOINT pgbackfill_check").execute(&mut *conn).await?;
        match prepared {
            Ok(()) => {}
            Err(sqlx::Error::Database(db)) => findings.push(catalog::Finding {
                field,
                message: format!("does not prepare: {}", db.message()),
                hint: hint.into(),
            }),
            Err(other) => return Err(other),
        }
    }
    Ok(findings)
}

/// The job is already in the progress table with another meaning: the daemon would refuse it.
async fn meaning_changed(
    conn: &mut sqlx::PgConnection,
    spec: &JobSpec,
    resolved: &Resolved,
    schema: &str,
) -> Result<Option<catalog::Finding>, sqlx::Error> {
    let jobs = format!("{}.jobs", crate::ident::quote_ident(schema));
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&jobs).fetch_one(&mut *conn).await?;
    if exists.is_none() {
        return Ok(None);
    }
    // Needs SELECT on the progress table; without it, this comparison is skipped, not an error.
    sqlx::raw_sql("SAVEPOINT pgbackfill_meaning").execute(&mut *conn).await?;
    let row: Result<Option<(String, serde_json::Value)>, sqlx::Error> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT fingerprint, meaning FROM {jobs} WHERE name = $1")))
            .bind(&spec.name)
            .fetch_optional(&mut *conn)
            .await;
    sqlx::raw_sql("ROLLBACK TO SAVEPOINT pgbackfill_meaning").execute(&mut *conn).await?;
    let Ok(Some((fingerprint, was))) = row else { return Ok(None) };
    if fingerprint == resolved.fingerprint {
        return Ok(None);
    }
    let now = &resolved.meaning;
    let field = ["table", "key", "set", "where"].into_iter().find(|f| was.get(f) != now.get(f)).unwrap_or("name");
    let show = |v: Option<&serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "null".into());
    Ok(Some(catalog::Finding {
        field: field.into(),
        message: format!(
            "job `{}` is in the progress table with a different meaning ({field} was {}, now {}): a daemon \
             will refuse it",
            spec.name,
            show(was.get(field)),
            show(now.get(field))
        ),
        hint: format!(
            "rename the job to start a new backfill, or run `pgbackfill reset {}` to start this one over",
            spec.name
        ),
    }))
}

/// Prepare the batch statements and inspect their plans.
async fn check_statements(
    conn: &mut sqlx::PgConnection,
    resolved: &Resolved,
    spec: &JobSpec,
    out: &mut CheckedJob,
) -> Result<Vec<catalog::Finding>, sqlx::Error> {
    use sqlx::{Executor, SqlSafeStr};
    let statements = resolved.target.statements();
    for sql in [&statements.next_slice, &statements.next_update] {
        if let Err(e) = conn.prepare(sqlx::AssertSqlSafe(sql.clone()).into_sql_str()).await {
            let (field, hint) = blame(&e, spec, sql);
            return match e {
                sqlx::Error::Database(db) => Ok(vec![catalog::Finding {
                    field,
                    message: format!("the batch statement does not prepare: {}", db.message()),
                    hint,
                }]),
                other => Err(other),
            };
        }
    }
    // Plan a realistic mid-job batch: the upper bound at the largest key, the cursor about one
    // batch in. (A cursor at the largest key would plan an empty range, which always looks cheap.)
    let max: Option<Vec<String>> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(statements.max_key.as_str())).fetch_optional(&mut *conn).await?;
    let Some(max) = max else {
        out.notes.push("table is empty: plan not checked".into());
        return Ok(Vec::new());
    };
    let mut first_keys =
        sqlx::query_scalar::<_, Vec<String>>(sqlx::AssertSqlSafe(statements.ordered_keys.replace("{sample}", "")));
    for v in &max {
        first_keys = first_keys.bind(v);
    }
    // Capped: reading a few thousand keys is enough to be past the start, and stays cheap.
    let first_keys = first_keys.bind(spec.batch.start_size().clamp(1, 10_000)).fetch_all(&mut *conn).await?;
    let cursor = first_keys.last().unwrap_or(&max);
    let explain = |sql: &str| {
        sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}")))
    };
    let mut q = explain(&statements.next_slice);
    for v in cursor.iter().chain(max.iter()) {
        q = q.bind(v);
    }
    let slice_plan = q.bind(spec.batch.start_size()).fetch_one(&mut *conn).await?;
    // The UPDATE is planned for the key range of that slice. Reading the slice's keys is a read.
    let mut q = sqlx::query_as::<_, (i64, Option<Vec<String>>)>(sqlx::AssertSqlSafe(statements.next_slice.as_str()));
    for v in cursor.iter().chain(max.iter()) {
        q = q.bind(v);
    }
    let (_, last) = q.bind(spec.batch.start_size()).fetch_one(&mut *conn).await?;
    let last = last.unwrap_or_else(|| max.clone());
    let mut q = explain(&statements.next_update);
    for v in cursor.iter().chain(last.iter()) {
        q = q.bind(v);
    }
    let plan = q.fetch_one(&mut *conn).await?;
    // On a partitioned table the plan names each partition's index, not the parent's.
    let key_indexes: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_partition_tree(to_regclass($1)) p JOIN pg_class c ON c.oid = p.relid",
    )
    .bind(format!(
        "{}.{}",
        crate::ident::quote_ident(resolved.target.table.schema.as_deref().unwrap_or("public")),
        crate::ident::quote_ident(&resolved.key_index)
    ))
    .fetch_all(&mut *conn)
    .await?;
    let is_key_index = |name: &str| name == resolved.key_index || key_indexes.iter().any(|k| k == name);

    // The UPDATE itself must walk the key range. Its WHERE also holds the `where` predicate, and
    // when that is selective the planner may prefer an index on a `where` column: every batch
    // would then visit all matching rows of the whole table, not just its own key range.
    match update_scan(&plan, &is_key_index) {
        UpdateScan::KeyRange => {}
        UpdateScan::Missing => {
            return Ok(vec![catalog::Finding {
                field: "key".into(),
                message: "the batch plan has no UPDATE scan that check recognises".into(),
                hint: "run EXPLAIN on the batch statement and report the plan shape".into(),
            }]);
        }
        UpdateScan::FullScan(ty) => return Ok(vec![full_scan(&resolved.key_index, &format!("{ty} under the UPDATE"))]),
        UpdateScan::OtherIndex(other) => {
            let columns: Vec<String> = sqlx::query_scalar(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                 ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                 WHERE i.indexrelid = to_regclass($1)",
            )
            .bind(format!(
                "{}.{}",
                crate::ident::quote_ident(resolved.target.table.schema.as_deref().unwrap_or("public")),
                crate::ident::quote_ident(&other)
            ))
            .fetch_all(&mut *conn)
            .await?;
            let predicate = spec.where_.as_deref().unwrap_or("").to_lowercase();
            let on_where = columns.iter().any(|c| predicate.contains(&c.to_lowercase()));
            return Ok(vec![catalog::Finding {
                field: if on_where { "where" } else { "key" }.into(),
                message: format!(
                    "the batch's UPDATE walks index {other} instead of the key index {}: each batch would visit \
                     every row that index matches in the whole table, not only its own key range",
                    resolved.key_index
                ),
                hint: if on_where {
                    "ANALYZE the table; if it persists, `where` is selective enough that PostgreSQL prefers the \
                     index on its column to the key range: drop `where` and test the condition in `set` instead \
                     (`col: CASE WHEN … THEN new ELSE col END`)"
                        .into()
                } else {
                    "ANALYZE the table; make sure `where` and `set` do not steer the UPDATE away from the key index"
                        .into()
                },
            }]);
        }
    }

    // The slice (keyset over the key index) must not scan the table either.
    let table_name = &resolved.target.table.name;
    let mut seq = false;
    let mut uses_index = false;
    walk_plan(&slice_plan, &mut |node| {
        let ty = node.get("Node Type").and_then(|v| v.as_str()).unwrap_or("");
        let rel = node.get("Relation Name").and_then(|v| v.as_str()).unwrap_or("");
        let idx = node.get("Index Name").and_then(|v| v.as_str()).unwrap_or("");
        if ty == "Seq Scan" && rel == table_name {
            seq = true;
        }
        if is_key_index(idx) {
            uses_index = true;
        }
    });
    if seq || !uses_index {
        return Ok(vec![if seq {
            full_scan(&resolved.key_index, "Seq Scan in the slice")
        } else {
            catalog::Finding {
                field: "key".into(),
                message: format!("the batch plan does not use the key index {}", resolved.key_index),
                hint: "ANALYZE the table; make sure `where` and `set` do not force a sequential scan".into(),
            }
        }]);
    }
    Ok(Vec::new())
}

fn full_scan(key_index: &str, node_type: &str) -> catalog::Finding {
    catalog::Finding {
        field: "key".into(),
        message: format!("the batch plan scans the whole table instead of walking index {key_index} ({node_type})"),
        hint: "ANALYZE the table; make sure `where` and `set` do not force a sequential scan".into(),
    }
}

/// How the batch's UPDATE finds its rows: the scan directly under the `ModifyTable` node.
#[derive(Debug, PartialEq, Eq)]
enum UpdateScan {
    /// An index scan, index-only scan or bitmap heap scan over the key index only.
    KeyRange,
    /// Another index (named).
    OtherIndex(String),
    /// Anything else under the UPDATE: a sequential scan and the like (node type).
    FullScan(String),
    /// No `ModifyTable` node with a scan under it.
    Missing,
}

fn update_scan(plan: &serde_json::Value, is_key_index: &dyn Fn(&str) -> bool) -> UpdateScan {
    let mut modify = None;
    walk_plan(plan, &mut |node| {
        if modify.is_none() && node.get("Node Type").and_then(|v| v.as_str()) == Some("ModifyTable") {
            modify = Some(node.clone());
        }
    });
    let Some(modify) = modify else { return UpdateScan::Missing };
    // The rows to update come from the outer child; InitPlans (`SELECT … FROM last`) sit beside it.
    let Some(scan) = children(&modify).find(|c| c.get("Parent Relationship").and_then(|v| v.as_str()) == Some("Outer"))
    else {
        return UpdateScan::Missing;
    };
    scan_kind(scan, is_key_index)
}

fn scan_kind(node: &serde_json::Map<String, serde_json::Value>, is_key_index: &dyn Fn(&str) -> bool) -> UpdateScan {
    let ty = node.get("Node Type").and_then(|v| v.as_str()).unwrap_or("");
    let index = |n: &serde_json::Map<String, serde_json::Value>| {
        n.get("Index Name").and_then(|v| v.as_str()).unwrap_or("").to_string()
    };
    match ty {
        "Index Scan" | "Index Only Scan" => {
            let name = index(node);
            if is_key_index(&name) { UpdateScan::KeyRange } else { UpdateScan::OtherIndex(name) }
        }
        "Bitmap Heap Scan" => {
            // Every Bitmap Index Scan feeding it (through BitmapAnd/Or too) must be on the key index.
            let mut other = None;
            walk_plan(&serde_json::Value::Object(node.clone()), &mut |n| {
                let name = index(n);
                if n.get("Node Type").and_then(|v| v.as_str()) == Some("Bitmap Index Scan")
                    && !is_key_index(&name)
                    && other.is_none()
                {
                    other = Some(name);
                }
            });
            other.map_or(UpdateScan::KeyRange, UpdateScan::OtherIndex)
        }
        // A partitioned table: every partition's scan must walk the key range. A Result node
        // (e.g. for a one-time filter) is looked through.
        "Append" | "MergeAppend" | "Result" if children(node).next().is_some() => children(node)
            .filter(|c| c.get("Parent Relationship").and_then(|v| v.as_str()) != Some("InitPlan"))
            .map(|c| scan_kind(c, is_key_index))
            .find(|k| *k != UpdateScan::KeyRange)
            .unwrap_or(UpdateScan::KeyRange),
        other => UpdateScan::FullScan(other.to_string()),
    }
}

fn children(
    node: &serde_json::Map<String, serde_json::Value>,
) -> impl Iterator<Item = &serde_json::Map<String, serde_json::Value>> {
    node.get("Plans").and_then(|p| p.as_array()).into_iter().flatten().filter_map(|c| c.as_object())
}

fn walk_plan(v: &serde_json::Value, f: &mut dyn FnMut(&serde_json::Map<String, serde_json::Value>)) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| walk_plan(x, f)),
        serde_json::Value::Object(o) => {
            if o.contains_key("Node Type") {
                f(o);
            }
            o.values().for_each(|x| walk_plan(x, f));
        }
        _ => {}
    }
}

/// Which spec field a prepare error comes from. PostgreSQL reports a character position in the
/// statement for most errors (unknown function, operator or type mismatch, syntax), and we know
/// where each expression sits; the message text is only a fallback for errors without a position.
fn blame(e: &sqlx::Error, spec: &JobSpec, statement: &str) -> (String, String) {
    let msg = match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    };
    let position = match e {
        sqlx::Error::Database(db) => db.try_downcast_ref::<PgDatabaseError>().and_then(|pg| match pg.position() {
            Some(PgErrorPosition::Original(p)) => Some(p),
            _ => None,
        }),
        _ => None,
    };
    if let Some(field) = position.and_then(|p| field_at(statement, p, spec)) {
        let hint = if field == "where" {
            "fix the SQL predicate"
        } else {
            "fix the SQL expression; it is evaluated for each updated row"
        };
        return (field, hint.into());
    }
    for (col, expr) in &spec.set {
        if msg.contains(expr.trim()) || mentions_identifier(&msg, expr) {
            return (format!("set.{col}"), "fix the SQL expression; it is evaluated for each updated row".into());
        }
    }
    if let Some(w) = &spec.where_
        && (msg.contains(w.trim()) || mentions_identifier(&msg, w))
    {
        return ("where".into(), "fix the SQL predicate".into());
    }
    match (&spec.where_, spec.set.len()) {
        (None, 1) => {
            (format!("set.{}", spec.set.keys().next().cloned().unwrap_or_default()), "fix the SQL expression".into())
        }
        _ => ("set/where".into(), "fix the SQL in `set` or `where`".into()),
    }
}

/// The spec field whose text covers 1-based character `position` of the batch statement, which
/// embeds each `set` entry as `"col" = (expr)` and `where` as `AND (predicate)` (or
/// `AND CASE WHEN (predicate) THEN true ELSE false END`) in its UPDATE.
/// The parentheses count as the field's: a truncated expression fails at its closing one.
fn field_at(statement: &str, position: usize, spec: &JobSpec) -> Option<String> {
    let at = statement.char_indices().nth(position.checked_sub(1)?)?.0;
    let update = statement.find("UPDATE ")?;
    let covers = |needle: &str, inner: &str| {
        statement[update..].find(needle).map(|start| {
            let end = update + start + needle.len();
            (end - inner.len() - 2..end).contains(&at)
        })
    };
    for (written, expr) in &spec.set {
        let Ok(column) = crate::ident::parse_ident(written) else { continue };
        if covers(&format!("{} = ({expr})", crate::ident::quote_ident(&column)), expr) == Some(true) {
            return Some(format!("set.{written}"));
        }
    }
    // `AND (predicate)`, or `AND CASE WHEN (predicate) THEN …` where the batch hides it from the planner.
    let w = spec.where_.as_deref()?;
    let in_where = [format!("AND ({w})"), format!("WHEN ({w})")].iter().any(|needle| covers(needle, w) == Some(true));
    in_where.then(|| "where".to_string())
}

/// PostgreSQL names the offending identifier in quotes (`column "x" does not exist`).
fn mentions_identifier(msg: &str, expr: &str) -> bool {
    msg.split('"').skip(1).step_by(2).any(|ident| !ident.is_empty() && expr.contains(ident))
}

#[cfg(test)]
mod tests {
    use super::identifiers;

    #[test]
    fn identifiers_skip_literals_and_fold_case() {
        assert_eq!(identifiers("N + 1"), vec!["n"]);
        assert_eq!(identifiers("lower(\"Name\") || 'n' || E'\\'n' || $$ n $$"), vec!["lower", "Name"]);
        assert_eq!(identifiers("coalesce(t.total, 0) * 1.1"), vec!["coalesce", "t", "total"]);
        assert!(identifiers("'web'").is_empty());
        assert_eq!(identifiers("$q$ x $q$ || y"), vec!["y"]);
    }
}
