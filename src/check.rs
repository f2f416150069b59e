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
    /// Whether the database checks ran.
    pub online: bool,
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

/// Check files/directories; with a pool, also against the database.
pub async fn check(paths: &[PathBuf], pool: Option<&PgPool>) -> Result<Report, sqlx::Error> {
    let loaded = spec::load_paths(paths);
    let mut problems = loaded.problems;
    let mut ok = Vec::new();
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
            let found = check_online(pool, &job.spec, &mut checked).await?;
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
    Ok(Report { valid: problems.is_empty(), ok, problems, online: pool.is_some() })
}

async fn check_online(
    pool: &PgPool,
    spec: &JobSpec,
    out: &mut CheckedJob,
) -> Result<Vec<catalog::Finding>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Read-only and short: check must never write nor wait long on a lock.
    sqlx::raw_sql("SET TRANSACTION READ ONLY; SET LOCAL lock_timeout = '5s'; SET LOCAL statement_timeout = '60s'")
        .execute(&mut *tx)
        .await?;
    let resolved = match catalog::resolve(&mut tx, spec).await? {
        Ok(r) => r,
        Err(findings) => return Ok(findings),
    };
    out.table = Some(resolved.target.table.quoted());
    out.key = Some(resolved.target.key.iter().map(|k| k.name.clone()).collect());
    out.key_index = Some(resolved.key_index.clone());
    let mut findings = check_statements(&mut tx, &resolved, spec, out).await?;
    findings.extend(crate::steps::check_catalog(&mut tx, spec, &resolved).await?);
    tx.rollback().await?;
    Ok(findings)
}

/// Prepare the batch statement and inspect its plan.
async fn check_statements(
    conn: &mut sqlx::PgConnection,
    resolved: &Resolved,
    spec: &JobSpec,
    out: &mut CheckedJob,
) -> Result<Vec<catalog::Finding>, sqlx::Error> {
    use sqlx::{Executor, SqlSafeStr};
    let statements = resolved.target.statements();
    if let Err(e) = conn.prepare(sqlx::AssertSqlSafe(statements.next_batch.clone()).into_sql_str()).await {
        let (field, hint) = blame(&e, spec, &statements.next_batch);
        return match e {
            sqlx::Error::Database(db) => Ok(vec![catalog::Finding {
                field,
                message: format!("the batch statement does not prepare: {}", db.message()),
                hint,
            }]),
            other => Err(other),
        };
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
    let first_keys = first_keys.bind(spec.batch.size.clamp(1, 10_000)).fetch_all(&mut *conn).await?;
    let cursor = first_keys.last().unwrap_or(&max);
    let mut q = sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) {}",
        statements.next_batch
    )));
    for v in cursor.iter().chain(max.iter()) {
        q = q.bind(v);
    }
    let plan = q.bind(spec.batch.size).fetch_one(&mut *conn).await?;
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
    walk_plan(&plan, &mut |node| {
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
