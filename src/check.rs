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
    let findings = check_statements(&mut tx, &resolved, spec, out).await?;
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
    // Plan a mid-job batch: cursor and upper bound at the largest key.
    let max: Option<Vec<String>> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(statements.max_key.as_str())).fetch_optional(&mut *conn).await?;
    let Some(max) = max else {
        out.notes.push("table is empty: plan not checked".into());
        return Ok(Vec::new());
    };
    let mut q = sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) {}",
        statements.next_batch
    )));
    for v in max.iter().chain(max.iter()) {
        q = q.bind(v);
    }
    let plan = q.bind(spec.batch.size).fetch_one(&mut *conn).await?;
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
        if idx == resolved.key_index {
            uses_index = true;
        }
    });
    if seq || !uses_index {
        return Ok(vec![catalog::Finding {
            field: "key".into(),
            message: format!(
                "the batch plan {} instead of walking index {}",
                if seq { "scans the whole table" } else { "does not use the key index" },
                resolved.key_index
            ),
            hint: "ANALYZE the table; make sure `where` and `set` do not force a sequential scan".into(),
        }]);
    }
    Ok(Vec::new())
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
/// embeds each `set` entry as `"col" = (expr)` and `where` as `AND (predicate)` in its UPDATE.
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
    let w = spec.where_.as_deref()?;
    (covers(&format!("AND ({w})"), w) == Some(true)).then(|| "where".to_string())
}

/// PostgreSQL names the offending identifier in quotes (`column "x" does not exist`).
fn mentions_identifier(msg: &str, expr: &str) -> bool {
    msg.split('"').skip(1).step_by(2).any(|ident| !ident.is_empty() && expr.contains(ident))
}
