//! Resolving a spec against the database catalog: which table, which key, which types.
//!
//! The keyset walk is only correct when the key is unique and NOT NULL (a duplicate or NULL key
//! makes `(k) > cursor` skip or repeat rows), and only cheap when a btree index on the key serves
//! `ORDER BY key`. Both are checked here, from the catalog, before any batch runs.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::batch::{KeyColumn, Target};
use crate::ident::{QualifiedName, parse_ident, parse_qualified, quote_ident};
use crate::spec::JobSpec;

/// A problem found in the catalog, tied to the spec field it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub field: String,
    pub message: String,
    pub hint: String,
}

impl Finding {
    fn new(field: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into(), hint: hint.into() }
    }
}

/// A spec resolved against the catalog: ready to generate SQL and to run.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub target: Target,
    /// The unique btree index the keyset walks.
    pub key_index: String,
    /// `pg_class.reltuples`-based estimate (0 when unknown), shown while the job waits to start;
    /// the job's own figure is the planner's, taken when it starts (see [`estimate_rows`]).
    pub estimated_rows: i64,
    /// What the job *means*: table, key, set, where. A change here on a job that has progress is refused.
    pub meaning: serde_json::Value,
    pub fingerprint: String,
}

#[derive(Debug)]
struct Column {
    sql_type: String,
    not_null: bool,
}

/// Errors talking to the database, as opposed to problems with the spec.
pub type DbError = sqlx::Error;

/// Resolve a spec. `Ok(Err(findings))` means the database answered and the spec is wrong.
pub async fn resolve(conn: &mut PgConnection, spec: &JobSpec) -> Result<Result<Resolved, Vec<Finding>>, DbError> {
    let mut findings = Vec::new();
    let Ok(name) = parse_qualified(&spec.table) else {
        // Offline validation reports the syntax; nothing to look up.
        return Ok(Err(vec![Finding::new(
            "table",
            format!("`{}` is not a valid table name", spec.table),
            "see `pgbackfill check` offline output",
        )]));
    };
    let row: Option<(i64, String, String, String, f64)> = sqlx::query_as(
        "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text, c.reltuples::float8 \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = to_regclass($1)",
    )
    .bind(name.quoted())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((oid, schema, relname, relkind, reltuples)) = row else {
        return Ok(Err(vec![Finding::new(
            "table",
            format!("table {} does not exist (or is not visible on the search_path)", name.quoted()),
            "check the spelling; qualify it with its schema (`schema.table`); quote mixed-case names",
        )]));
    };
    if relkind != "r" && relkind != "p" {
        return Ok(Err(vec![Finding::new(
            "table",
            format!("{} is not a table (relkind {relkind})", name.quoted()),
            "backfill the underlying table",
        )]));
    }
    let table = QualifiedName { schema: Some(schema), name: relname };

    let mut columns = BTreeMap::new();
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
         WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    for (col, sql_type, not_null) in rows {
        columns.insert(col, Column { sql_type, not_null });
    }

    let key_names: Vec<String> = match &spec.key {
        Some(cols) => cols.iter().filter_map(|c| parse_ident(c).ok()).collect(),
        None => {
            let pk: Option<Vec<String>> = sqlx::query_scalar(
                "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1::oid AND i.indisprimary AND k.ord <= i.indnkeyatts",
            )
            .bind(oid)
            .fetch_one(&mut *conn)
            .await?;
            match pk {
                Some(pk) => pk,
                None => {
                    findings.push(Finding::new(
                        "key",
                        format!("{} has no primary key", table.quoted()),
                        "set `key:` to the columns of a unique, NOT NULL btree index",
                    ));
                    Vec::new()
                }
            }
        }
    };

    let mut key = Vec::new();
    for (i, k) in key_names.iter().enumerate() {
        let field = format!("key[{i}]");
        match columns.get(k) {
            None => findings.push(Finding::new(
                field,
                format!("column {} does not exist in {}", quote_ident(k), table.quoted()),
                "name an existing column; quote mixed-case names",
            )),
            Some(c) => {
                if !c.not_null {
                    findings.push(Finding::new(
                        field,
                        format!(
                            "key column {} is nullable: rows with a NULL key would never be visited",
                            quote_ident(k)
                        ),
                        "use NOT NULL key columns (ALTER TABLE … ALTER COLUMN … SET NOT NULL) or another unique key",
                    ));
                }
                key.push(KeyColumn { name: k.clone(), sql_type: c.sql_type.clone() });
            }
        }
    }

    let mut key_index = String::new();
    if !key.is_empty() && key.len() == key_names.len() {
        // A unique, valid, non-partial btree index whose key columns are exactly ours, in order.
        // It must also sort the way the batch statement does, or it cannot serve `ORDER BY key` and
        // `(key) > cursor`: ascending with NULLS LAST (`indoption` 0), the column's own collation,
        // and the type's default btree operator class (`text_pattern_ops` compares bytes, not the
        // collation's order). Indexes that differ only in those are returned with the reason, so
        // the finding can say why the index the operator sees does not count.
        let idx: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT name, problem FROM (SELECT ic.relname::text AS name, i.indisprimary AS is_primary, \
               (SELECT string_agg(format('%I %s', a.attname, CASE \
                   WHEN i.indoption[k.ord - 1] & 1 <> 0 THEN 'is sorted DESC' \
                   WHEN i.indoption[k.ord - 1] <> 0 THEN 'puts NULLS FIRST' \
                   WHEN i.indcollation[k.ord - 1] <> a.attcollation THEN format('uses collation %s, not the column''s %s', \
                        (SELECT quote_ident(collname) FROM pg_collation WHERE oid = i.indcollation[k.ord - 1]), \
                        (SELECT quote_ident(collname) FROM pg_collation WHERE oid = a.attcollation)) \
                   ELSE format('uses operator class %s, not the default one for its type', oc.opcname) END), '; ' ORDER BY k.ord) \
                FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                JOIN pg_opclass oc ON oc.oid = i.indclass[k.ord - 1] \
                WHERE k.ord <= i.indnkeyatts \
                  AND (i.indoption[k.ord - 1] <> 0 OR i.indcollation[k.ord - 1] <> a.attcollation OR NOT oc.opcdefault)) AS problem \
             FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam \
             WHERE i.indrelid = $1::oid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL \
               AND i.indexprs IS NULL AND am.amname = 'btree' AND i.indnkeyatts = cardinality($2::text[]) \
               AND (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum WHERE k.ord <= i.indnkeyatts) = $2::text[] \
             ) candidates ORDER BY problem IS NULL DESC, is_primary DESC, name LIMIT 1",
        )
        .bind(oid)
        .bind(&key_names)
        .fetch_optional(&mut *conn)
        .await?;
        let columns_sql = key_names.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
        match idx {
            Some((i, None)) => key_index = i,
            Some((i, Some(problem))) => findings.push(Finding::new(
                "key",
                format!(
                    "unique index {} on ({columns_sql}) of {} cannot serve the keyset walk's `ORDER BY`: {problem}",
                    quote_ident(&i),
                    table.quoted()
                ),
                format!(
                    "CREATE UNIQUE INDEX CONCURRENTLY ON {} ({columns_sql}) with no ASC/DESC, NULLS, COLLATE or \
                     operator class options (or use the primary key)",
                    table.quoted()
                ),
            )),
            None => findings.push(Finding::new(
                "key",
                format!(
                    "no unique btree index on ({columns_sql}) of {}: a non-unique key makes the keyset walk skip or repeat rows",
                    table.quoted()
                ),
                "use the primary key, or CREATE UNIQUE INDEX CONCURRENTLY on exactly these columns in this order",
            )),
        }
    }

    // The schema of the key index's comparison operators (`pg_catalog` for built-in types, the
    // extension's schema for citext and the like), so the builder can name it in every comparison
    // (see `Target::operator_schema`). One row comparison takes one operator name, so all key
    // columns must compare with operators of one schema.
    let mut operator_schema = String::from("pg_catalog");
    if !key_index.is_empty() {
        let schemas: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT n.nspname::text FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             CROSS JOIN LATERAL unnest(i.indclass::oid[]) AS c(opclass) \
             JOIN pg_opclass oc ON oc.oid = c.opclass \
             JOIN pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amoplefttype = oc.opcintype \
                AND ao.amoprighttype = oc.opcintype AND ao.amopstrategy IN (1, 2, 5) \
             JOIN pg_operator o ON o.oid = ao.amopopr JOIN pg_namespace n ON n.oid = o.oprnamespace \
             WHERE i.indrelid = $1::oid AND ic.relname = $2 ORDER BY 1",
        )
        .bind(oid)
        .bind(&key_index)
        .fetch_all(&mut *conn)
        .await?;
        match schemas.as_slice() {
            [one] => operator_schema = one.clone(),
            _ => findings.push(Finding::new(
                "key",
                format!(
                    "the key columns compare with operators from {} schemas ({}); pgbackfill names one schema in \
                     its key comparisons",
                    schemas.len(),
                    schemas.join(", ")
                ),
                "use a key whose column types' operators live in one schema (e.g. all built-in types)",
            )),
        }
    }

    let mut set = BTreeMap::new();
    for (col, expr) in &spec.set {
        let field = format!("set.{col}");
        let Ok(c) = parse_ident(col) else { continue };
        if !columns.contains_key(&c) {
            findings.push(Finding::new(
                field,
                format!("column {} does not exist in {}", quote_ident(&c), table.quoted()),
                "add the column first (the expand step), or fix the name",
            ));
            continue;
        }
        if key_names.contains(&c) {
            findings.push(Finding::new(
                field,
                format!("{} is a key column: changing it would move rows under the cursor", quote_ident(&c)),
                "remove it from `set`, or walk another unique key",
            ));
            continue;
        }
        let may_update: bool = sqlx::query_scalar("SELECT has_column_privilege($1::oid, $2, 'UPDATE')")
            .bind(oid)
            .bind(&c)
            .fetch_one(&mut *conn)
            .await?;
        if !may_update {
            findings.push(Finding::new(
                field,
                format!("the current role may not UPDATE column {}", quote_ident(&c)),
                format!("GRANT UPDATE ({}) ON {} TO <role>", quote_ident(&c), table.quoted()),
            ));
        }
        set.insert(c, expr.clone());
    }
    let may_select: bool =
        sqlx::query_scalar("SELECT has_table_privilege($1::oid, 'SELECT')").bind(oid).fetch_one(&mut *conn).await?;
    if !may_select {
        findings.push(Finding::new(
            "table",
            format!("the current role may not SELECT from {}", table.quoted()),
            format!("GRANT SELECT ON {} TO <role>", table.quoted()),
        ));
    }

    if !findings.is_empty() {
        return Ok(Err(findings));
    }
    let target = Target { table, key, set, where_: spec.where_.clone(), operator_schema };
    let meaning = meaning_of(&target);
    let fingerprint = hex::encode(Sha256::digest(meaning.to_string().as_bytes()));
    Ok(Ok(Resolved { target, key_index, estimated_rows: reltuples.max(0.0) as i64, meaning, fingerprint }))
}

/// The fields that define what a job does. Tuning (batch, timeouts, throttle) is deliberately absent.
pub fn meaning_of(target: &Target) -> serde_json::Value {
    serde_json::json!({
        "table": target.table.quoted(),
        "key": target.key.iter().map(|k| k.name.clone()).collect::<Vec<_>>(),
        "set": target.set,
        "where": target.where_,
    })
}

/// What the completion check needs to know about a table before it starts (see `verify`).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyFacts {
    /// The server's `server_version_num`.
    pub server_version_num: i32,
    /// `r` plain table, `p` partitioned.
    pub relkind: String,
    /// `pg_class.relpages` and `reltuples` (0 and -1 before the first VACUUM or ANALYZE): the
    /// table's density as last measured.
    pub pages: i64,
    pub tuples: f64,
}

/// The planner's row count for the whole table (partitions and inheritance children included,
/// as the UPDATE covers them): what `status` measures progress against.
///
/// `pg_class.reltuples` alone is -1 until the first VACUUM or ANALYZE, stays -1 on a partitioned
/// parent (autovacuum never analyzes one) and goes stale as the table grows; the planner scales
/// the last measured density to the table's current size, or guesses it from the column widths.
/// `None` when the plan has no row count (never seen): the caller keeps what it had.
pub async fn estimate_rows(conn: &mut PgConnection, table: &QualifiedName) -> Result<Option<i64>, DbError> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    // Behind a migration's ACCESS EXCLUSIVE it gives up within a second, and the caller keeps the
    // figure it has. Nothing from the spec reaches these statements but the quoted name.
    sqlx::raw_sql("SET LOCAL lock_timeout = '1s'; SET LOCAL statement_timeout = '5s'").execute(&mut *tx).await?;
    let plan: serde_json::Value =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}", table.quoted())))
            .fetch_one(&mut *tx)
            .await?;
    tx.rollback().await?;
    Ok(plan_rows(&plan))
}

/// `Plan Rows` of the top plan node of `EXPLAIN (FORMAT JSON)` output.
fn plan_rows(plan: &serde_json::Value) -> Option<i64> {
    let rows = plan.get(0)?.get("Plan")?.get("Plan Rows")?.as_f64()?;
    (rows.is_finite() && rows >= 0.0).then_some(rows.round() as i64)
}

/// Read [`VerifyFacts`] from the catalog alone: no lock on the table, so a lock held on it (a
/// migration's ACCESS EXCLUSIVE) holds up the first chunk, under the job's timeouts, not this.
/// `None` when the table is gone.
pub async fn verify_facts(conn: &mut PgConnection, table: &QualifiedName) -> Result<Option<VerifyFacts>, DbError> {
    let row: Option<(i32, String, i64, f64)> = sqlx::query_as(
        "SELECT current_setting('server_version_num')::int4, c.relkind::text, c.relpages::int8, c.reltuples::float8 \
         FROM pg_class c WHERE c.oid = to_regclass($1)",
    )
    .bind(table.quoted())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(server_version_num, relkind, pages, tuples)| VerifyFacts {
        server_version_num,
        relkind,
        pages,
        tuples,
    }))
}

#[cfg(test)]
mod tests {
    use super::plan_rows;

    #[test]
    fn plan_rows_reads_the_top_node() {
        let plan = serde_json::json!([{"Plan": {"Node Type": "Append", "Plan Rows": 1048576.0,
            "Plans": [{"Node Type": "Seq Scan", "Plan Rows": 12.0}]}}]);
        assert_eq!(plan_rows(&plan), Some(1_048_576));
        assert_eq!(plan_rows(&serde_json::json!([{"Plan": {"Node Type": "Result"}}])), None);
        assert_eq!(plan_rows(&serde_json::json!({"Plan": {"Plan Rows": 3}})), None);
    }
}
