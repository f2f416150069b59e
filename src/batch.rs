//! The backfill SQL, built in one pure place, and the execution of one batch.
//!
//! Every batch is one short transaction: `SET LOCAL lock_timeout`, `SET LOCAL statement_timeout`,
//! the next slice of keys, one UPDATE over it, the progress row advanced (by `progress`), COMMIT.
//! Nothing is held between batches.
//!
//! The slice is chosen by key alone (`(k) > cursor ORDER BY k LIMIT n`, never OFFSET) and the job's
//! `where` filters inside it, so a batch touches a bounded number of rows even when few match. The
//! slice statement returns its size and last key; the UPDATE then walks the key range `(cursor,
//! last key]`: a range scan on the key index, the same access path as the single-statement UPDATE,
//! which is why batching costs little throughput. The `where` sits behind a CASE there so that no
//! index on a `where` column can replace that walk.
//!
//! Two statements, not one: the UPDATE's row count comes from its command tag. As one statement
//! (the UPDATE in a CTE after the slice) the count needed `RETURNING`, whose rows the executor
//! stores and counts: about 10% more CPU per row, measured (see BENCHMARKS.md). Both run in the
//! batch's transaction, with the cursor advance, so a batch is still all or nothing. Rows the
//! application inserts into `(cursor, last key]` between the two are updated too; they are in the
//! job's range, as they would have been a moment earlier.
//! Cursor values travel as text (`key::text` out, `CAST($n::text AS type)` in) so any btree-orderable
//! type round-trips exactly; the session settings that affect text forms are pinned in `db`.

use std::collections::BTreeMap;

use crate::ident::{QualifiedName, quote_ident};

/// A key column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    /// `format_type()` of the column: comes from the catalog, never from the spec.
    pub sql_type: String,
}

/// Everything needed to generate a job's SQL. Built from a spec resolved against the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub table: QualifiedName,
    pub key: Vec<KeyColumn>,
    /// Column -> SQL expression, as the operator wrote it.
    pub set: BTreeMap<String, String>,
    pub where_: Option<String>,
    /// Schema of the key comparison operators: that of the key index's operator classes
    /// (`pg_catalog` for built-in types). Every comparison the builder emits names it,
    /// `OPERATOR("pg_catalog".>)`, so no operator another role created in a schema on the
    /// `search_path` can stand in for it (CVE-2018-1058; see `db::pin_session`).
    pub operator_schema: String,
}

/// A key value: one text form per key column.
pub type KeyValue = Vec<String>;

/// The statements of one job, generated once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statements {
    /// A batch's slice from the beginning of the range: binds `upper..., limit`. Returns the
    /// keys in it and its last key (NULL when empty).
    pub first_slice: String,
    /// A batch's slice after a cursor: binds `cursor..., upper..., limit`.
    pub next_slice: String,
    /// A batch's UPDATE from the beginning of the range: binds `last...` (the slice's last key).
    pub first_update: String,
    /// A batch's UPDATE after a cursor: binds `cursor..., last...`.
    pub next_update: String,
    /// The largest key in the table: no binds. Fixes a job's upper bound at start.
    pub max_key: String,
    /// Rows in `(lower, upper]` still matching `where`: binds `lower..., upper...`.
    pub leftover_after: String,
    /// Same from the first key: binds `upper...`.
    pub leftover_from_start: String,
    /// One verification chunk from the first key: binds `upper..., limit`. Returns the keys
    /// examined, how many of them still match `where`, and the chunk's last key.
    pub verify_first: String,
    /// One verification chunk after a cursor: binds `cursor..., upper..., limit`.
    pub verify_next: String,
    /// One verification chunk over the heap blocks `[from, to)`, read with a TID Range Scan:
    /// binds `'(from,0)', '(to,0)', upper...`. Returns the rows with a key up to `upper` and how
    /// many of them still match `where`.
    pub verify_blocks: String,
    /// The same from block `from` to the end of the table, whatever its size by then: binds
    /// `'(from,0)', upper...`.
    pub verify_blocks_to_end: String,
    /// The table's main fork in blocks now (NULL if the table is gone): no binds.
    pub relation_blocks: String,
    /// Keys below `upper` in order, for choosing range boundaries: binds `upper..., limit`.
    /// `{sample}` is replaced by a TABLESAMPLE clause or nothing.
    pub ordered_keys: String,
}

impl Target {
    fn key_list(&self, prefix: &str) -> String {
        self.key.iter().map(|k| format!("{prefix}{}", quote_ident(&k.name))).collect::<Vec<_>>().join(", ")
    }

    fn key_desc(&self) -> String {
        self.key.iter().map(|k| format!("{} DESC", quote_ident(&k.name))).collect::<Vec<_>>().join(", ")
    }

    fn key_as_text_array(&self) -> String {
        let items = self.key.iter().map(|k| format!("{}::text", quote_ident(&k.name))).collect::<Vec<_>>();
        format!("ARRAY[{}]", items.join(", "))
    }

    /// `(CAST($a::text AS t1), CAST($b::text AS t2))` for params starting at `first`.
    fn params(&self, first: usize) -> String {
        let items = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("CAST(${}::text AS {})", first + i, k.sql_type))
            .collect::<Vec<_>>();
        format!("({})", items.join(", "))
    }

    /// A key comparison operator, schema-qualified.
    fn op(&self, op: &str) -> String {
        format!("OPERATOR({}.{op})", quote_ident(&self.operator_schema))
    }

    fn row(&self) -> String {
        format!("({})", self.key_list(""))
    }

    fn set_clause(&self) -> String {
        self.set.iter().map(|(col, expr)| format!("{} = ({expr})", quote_ident(col))).collect::<Vec<_>>().join(", ")
    }

    /// The job's `where` inside the UPDATE, behind a CASE: the planner cannot match a CASE to an
    /// index, so the UPDATE always walks the key range. A plain `AND (where)` lets it pick an index
    /// on the `where` column instead and visit every matching row of the table in every batch.
    /// (CASE also maps NULL to false, as WHERE does.)
    fn where_clause(&self) -> String {
        match &self.where_ {
            Some(w) => format!("\n  AND CASE WHEN ({w}) THEN true ELSE false END"),
            None => String::new(),
        }
    }

    /// `(k) > (cursor...) AND ` with the cursor's binds from `$1`, or nothing from the range start;
    /// and the first bind after it.
    fn lower(&self, with_cursor: bool, indent: &str) -> (String, usize) {
        if with_cursor {
            (format!("{} {} {}\n{indent}AND ", self.row(), self.op(">"), self.params(1)), self.key.len() + 1)
        } else {
            (String::new(), 1)
        }
    }

    /// The next slice of keys up to the upper bound: how many keys are in it (`scanned`) and its
    /// last key (`cursor`). With `counted` (verification), an expression evaluated on each row of
    /// the slice and summed as `matching` between the two.
    ///
    /// The last key is found by sorting the slice's keys and projecting only the top one: built
    /// for every key (`ARRAY[k::text]` under the sort), the text forms cost more than the walk.
    fn slice(&self, with_cursor: bool, counted: Option<&str>) -> String {
        let (lower, next) = self.lower(with_cursor, "      ");
        if counted.is_none()
            && let Some(slice) = self.integer_slice(&lower, next)
        {
            return slice;
        }
        let (column, matching) = match counted {
            Some(c) => (
                format!(", {c} AS \"pgbackfill matches\""),
                "\n       (SELECT coalesce(sum(\"pgbackfill matches\"), 0)::int8 FROM slice) AS matching,".to_string(),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "WITH slice AS MATERIALIZED (\n\
             \x20   SELECT {keys}{column} FROM {table}\n\
             \x20   WHERE {lower}{row} {le} {upper}\n\
             \x20   ORDER BY {keys} LIMIT ${limit}\n\
             )\n\
             SELECT (SELECT count(*) FROM slice) AS scanned,{matching}\n\
             \x20      (SELECT {cursor} FROM (SELECT {keys} FROM slice ORDER BY {desc} LIMIT 1) last) AS cursor",
            keys = self.key_list(""),
            table = self.table.quoted(),
            row = self.row(),
            le = self.op("<="),
            upper = self.params(next),
            limit = next + self.key.len(),
            desc = self.key_desc(),
            cursor = self.key_as_text_array(),
        )
    }

    /// The slice of a single integer key in one pass: its count and `max`, no sort and no CTE
    /// (about 1 ms of a 10,000-row slice instead of 3–5, measured). Only for `smallint`,
    /// `integer` and `bigint`: `pg_catalog.max` of those is the order of their default btree
    /// operator class, the only one the key index may use (see `catalog`). Other types may have
    /// no `max` (uuid) or reach another type's through an implicit cast (citext to text, whose
    /// order differs): a wrong last key would skip rows, so they take the general form.
    fn integer_slice(&self, lower: &str, next: usize) -> Option<String> {
        let [key] = self.key.as_slice() else { return None };
        if !matches!(key.sql_type.as_str(), "smallint" | "integer" | "bigint") {
            return None;
        }
        let k = quote_ident(&key.name);
        Some(format!(
            "SELECT pg_catalog.count(*) AS scanned,\n\
             \x20      CASE WHEN pg_catalog.max({k}) IS NOT NULL THEN ARRAY[pg_catalog.max({k})::text] END AS cursor\n\
             FROM (\n\
             \x20   SELECT {k} FROM {table}\n\
             \x20   WHERE {lower}{row} {le} {upper}\n\
             \x20   ORDER BY {k} LIMIT ${limit}\n\
             ) slice",
            table = self.table.quoted(),
            row = self.row(),
            le = self.op("<="),
            upper = self.params(next),
            limit = next + 1,
        ))
    }

    /// A batch's UPDATE: the key range `(cursor, last]`, `last` being the slice's last key.
    ///
    /// `last` is a sub-SELECT of its binds, so the planner does not know the value: it plans the
    /// key range with its default selectivity, an index range scan on the key index, as when the
    /// bound came from the slice inside one statement. Seeing the value, it chose a sequential scan
    /// of the whole table for every batch that covers a good part of a small or mid-sized table.
    fn update(&self, with_cursor: bool) -> String {
        let (lower, next) = self.lower(with_cursor, "  ");
        let last = self.params(next);
        let last = format!("(SELECT {})", &last[1..last.len() - 1]);
        format!(
            "UPDATE {table} SET {set}\n\
             WHERE {lower}{row} {le} {last}{filter}",
            table = self.table.quoted(),
            set = self.set_clause(),
            row = self.row(),
            le = self.op("<="),
            filter = self.where_clause(),
        )
    }

    /// A verification chunk: the next slice of keys (as a batch takes it), counting the rows that
    /// still match `where`. Read only, and bounded like a batch, so verification never holds one
    /// long snapshot over the whole table.
    fn verify_chunk(&self, with_cursor: bool) -> String {
        let matches = match &self.where_ {
            Some(w) => format!("CASE WHEN ({w}) THEN 1 ELSE 0 END"),
            None => "0".to_string(),
        };
        self.slice(with_cursor, Some(&matches))
    }

    /// A verification chunk over a range of heap blocks: the rows with a key up to the upper bound,
    /// and how many of them still match `where`.
    ///
    /// The only conditions the scan can use are on `ctid`, so it is a TID Range Scan that reads the
    /// chunk's pages once, in order. The key bound sits behind a CASE for the same reason as the
    /// UPDATE's `where` (see [`Self::where_clause`]): a plain comparison would let the planner walk
    /// the key index instead, the very walk this statement replaces.
    fn verify_block_chunk(&self, to_end: bool) -> String {
        let tid = "CAST($1::text AS pg_catalog.tid)";
        let (to, upper_param) = if to_end {
            (String::new(), self.params(2))
        } else {
            ("\n  AND ctid OPERATOR(pg_catalog.<) CAST($2::text AS pg_catalog.tid)".to_string(), self.params(3))
        };
        let matches = match &self.where_ {
            Some(w) => format!("CASE WHEN ({w}) THEN 1 ELSE 0 END"),
            None => "0".to_string(),
        };
        format!(
            "SELECT count(*) AS scanned,\n\
             \x20      coalesce(sum({matches}), 0)::int8 AS matching\n\
             FROM {table}\n\
             WHERE ctid OPERATOR(pg_catalog.>=) {tid}{to}\n\
             \x20 AND CASE WHEN {row} {le} {upper_param} THEN true ELSE false END",
            table = self.table.quoted(),
            row = self.row(),
            le = self.op("<="),
        )
    }

    /// Generate every statement of the job.
    pub fn statements(&self) -> Statements {
        let n = self.key.len();
        let table = self.table.quoted();
        let row = self.row();
        let filter = match &self.where_ {
            Some(w) => format!(" AND ({w})"),
            None => String::new(),
        };
        Statements {
            first_slice: self.slice(false, None),
            next_slice: self.slice(true, None),
            first_update: self.update(false),
            next_update: self.update(true),
            max_key: format!("SELECT {} FROM {table} ORDER BY {} LIMIT 1", self.key_as_text_array(), self.key_desc()),
            leftover_after: format!(
                "SELECT count(*) FROM {table} WHERE {row} {} {} AND {row} {} {}{filter}",
                self.op(">"),
                self.params(1),
                self.op("<="),
                self.params(n + 1)
            ),
            leftover_from_start: format!(
                "SELECT count(*) FROM {table} WHERE {row} {} {}{filter}",
                self.op("<="),
                self.params(1)
            ),
            verify_first: self.verify_chunk(false),
            verify_next: self.verify_chunk(true),
            verify_blocks: self.verify_block_chunk(false),
            verify_blocks_to_end: self.verify_block_chunk(true),
            // The name as a string literal (standard_conforming_strings is pinned on, see `db`),
            // resolved by to_regclass at each execution: a table dropped and created again under
            // the same name is measured, not the oid a cached plan would hold.
            relation_blocks: format!(
                "SELECT pg_catalog.pg_relation_size(pg_catalog.to_regclass('{}')) \
                 / pg_catalog.current_setting('block_size')::int8",
                table.replace('\'', "''")
            ),
            ordered_keys: format!(
                "SELECT {} FROM {table}{{sample}} WHERE {row} {} {} ORDER BY {} LIMIT ${}",
                self.key_as_text_array(),
                self.op("<"),
                self.params(1),
                self.key_list(""),
                n + 1
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> Target {
        Target {
            table: QualifiedName { schema: Some("public".into()), name: "orders".into() },
            key: vec![KeyColumn { name: "id".into(), sql_type: "bigint".into() }],
            set: BTreeMap::from([("fulfillment_channel".to_string(), "'web'".to_string())]),
            where_: Some("fulfillment_channel IS NULL".into()),
            operator_schema: "pg_catalog".into(),
        }
    }

    #[test]
    fn golden_next_batch_single_key() {
        let s = orders().statements();
        assert_eq!(
            s.next_slice,
            r#"SELECT pg_catalog.count(*) AS scanned,
       CASE WHEN pg_catalog.max("id") IS NOT NULL THEN ARRAY[pg_catalog.max("id")::text] END AS cursor
FROM (
    SELECT "id" FROM "public"."orders"
    WHERE ("id") OPERATOR("pg_catalog".>) (CAST($1::text AS bigint))
      AND ("id") OPERATOR("pg_catalog".<=) (CAST($2::text AS bigint))
    ORDER BY "id" LIMIT $3
) slice"#
        );
        assert_eq!(
            s.next_update,
            r#"UPDATE "public"."orders" SET "fulfillment_channel" = ('web')
WHERE ("id") OPERATOR("pg_catalog".>) (CAST($1::text AS bigint))
  AND ("id") OPERATOR("pg_catalog".<=) (SELECT CAST($2::text AS bigint))
  AND CASE WHEN (fulfillment_channel IS NULL) THEN true ELSE false END"#
        );
    }

    #[test]
    fn golden_first_batch_composite_key_no_where() {
        let t = Target {
            table: QualifiedName { schema: None, name: "Order \"Items\"".into() },
            key: vec![
                KeyColumn { name: "order_id".into(), sql_type: "uuid".into() },
                KeyColumn { name: "line_no".into(), sql_type: "integer".into() },
            ],
            set: BTreeMap::from([("total".to_string(), "qty * price".to_string()), ("a".to_string(), "1".to_string())]),
            where_: None,
            operator_schema: "pg_catalog".into(),
        };
        let s = t.statements();
        assert_eq!(
            s.first_slice,
            r#"WITH slice AS MATERIALIZED (
    SELECT "order_id", "line_no" FROM "Order ""Items"""
    WHERE ("order_id", "line_no") OPERATOR("pg_catalog".<=) (CAST($1::text AS uuid), CAST($2::text AS integer))
    ORDER BY "order_id", "line_no" LIMIT $3
)
SELECT (SELECT count(*) FROM slice) AS scanned,
       (SELECT ARRAY["order_id"::text, "line_no"::text] FROM (SELECT "order_id", "line_no" FROM slice ORDER BY "order_id" DESC, "line_no" DESC LIMIT 1) last) AS cursor"#
        );
        assert_eq!(
            s.first_update,
            r#"UPDATE "Order ""Items""" SET "a" = (1), "total" = (qty * price)
WHERE ("order_id", "line_no") OPERATOR("pg_catalog".<=) (SELECT CAST($1::text AS uuid), CAST($2::text AS integer))"#
        );
        assert_eq!(
            s.next_update,
            r#"UPDATE "Order ""Items""" SET "a" = (1), "total" = (qty * price)
WHERE ("order_id", "line_no") OPERATOR("pg_catalog".>) (CAST($1::text AS uuid), CAST($2::text AS integer))
  AND ("order_id", "line_no") OPERATOR("pg_catalog".<=) (SELECT CAST($3::text AS uuid), CAST($4::text AS integer))"#
        );
    }

    #[test]
    fn golden_support_statements() {
        let s = orders().statements();
        assert_eq!(s.max_key, r#"SELECT ARRAY["id"::text] FROM "public"."orders" ORDER BY "id" DESC LIMIT 1"#);
        assert_eq!(
            s.leftover_after,
            r#"SELECT count(*) FROM "public"."orders" WHERE ("id") OPERATOR("pg_catalog".>) (CAST($1::text AS bigint)) AND ("id") OPERATOR("pg_catalog".<=) (CAST($2::text AS bigint)) AND (fulfillment_channel IS NULL)"#
        );
        assert_eq!(
            s.leftover_from_start,
            r#"SELECT count(*) FROM "public"."orders" WHERE ("id") OPERATOR("pg_catalog".<=) (CAST($1::text AS bigint)) AND (fulfillment_channel IS NULL)"#
        );
        assert_eq!(
            s.ordered_keys,
            r#"SELECT ARRAY["id"::text] FROM "public"."orders"{sample} WHERE ("id") OPERATOR("pg_catalog".<) (CAST($1::text AS bigint)) ORDER BY "id" LIMIT $2"#
        );
    }

    #[test]
    fn golden_verify_chunk() {
        assert_eq!(
            orders().statements().verify_next,
            r#"WITH slice AS MATERIALIZED (
    SELECT "id", CASE WHEN (fulfillment_channel IS NULL) THEN 1 ELSE 0 END AS "pgbackfill matches" FROM "public"."orders"
    WHERE ("id") OPERATOR("pg_catalog".>) (CAST($1::text AS bigint))
      AND ("id") OPERATOR("pg_catalog".<=) (CAST($2::text AS bigint))
    ORDER BY "id" LIMIT $3
)
SELECT (SELECT count(*) FROM slice) AS scanned,
       (SELECT coalesce(sum("pgbackfill matches"), 0)::int8 FROM slice) AS matching,
       (SELECT ARRAY["id"::text] FROM (SELECT "id" FROM slice ORDER BY "id" DESC LIMIT 1) last) AS cursor"#
        );
    }

    /// Only integer keys take `max`: a uuid has none, a citext's would be text's (another order).
    #[test]
    fn golden_first_slice_of_other_single_keys_sorts() {
        for sql_type in ["uuid", "citext", "text", "numeric", "character varying(20)"] {
            let mut t = orders();
            t.key[0].sql_type = sql_type.into();
            let s = t.statements();
            assert_eq!(
                s.first_slice,
                format!(
                    r#"WITH slice AS MATERIALIZED (
    SELECT "id" FROM "public"."orders"
    WHERE ("id") OPERATOR("pg_catalog".<=) (CAST($1::text AS {sql_type}))
    ORDER BY "id" LIMIT $2
)
SELECT (SELECT count(*) FROM slice) AS scanned,
       (SELECT ARRAY["id"::text] FROM (SELECT "id" FROM slice ORDER BY "id" DESC LIMIT 1) last) AS cursor"#
                )
            );
            assert!(!s.next_slice.contains("max("), "{}", s.next_slice);
        }
        for sql_type in ["smallint", "integer", "bigint"] {
            let mut t = orders();
            t.key[0].sql_type = sql_type.into();
            assert!(t.statements().first_slice.contains(r#"pg_catalog.max("id")"#), "{sql_type}");
        }
    }

    #[test]
    fn golden_verify_blocks() {
        let s = orders().statements();
        assert_eq!(
            s.verify_blocks,
            r#"SELECT count(*) AS scanned,
       coalesce(sum(CASE WHEN (fulfillment_channel IS NULL) THEN 1 ELSE 0 END), 0)::int8 AS matching
FROM "public"."orders"
WHERE ctid OPERATOR(pg_catalog.>=) CAST($1::text AS pg_catalog.tid)
  AND ctid OPERATOR(pg_catalog.<) CAST($2::text AS pg_catalog.tid)
  AND CASE WHEN ("id") OPERATOR("pg_catalog".<=) (CAST($3::text AS bigint)) THEN true ELSE false END"#
        );
        assert_eq!(
            s.verify_blocks_to_end,
            r#"SELECT count(*) AS scanned,
       coalesce(sum(CASE WHEN (fulfillment_channel IS NULL) THEN 1 ELSE 0 END), 0)::int8 AS matching
FROM "public"."orders"
WHERE ctid OPERATOR(pg_catalog.>=) CAST($1::text AS pg_catalog.tid)
  AND CASE WHEN ("id") OPERATOR("pg_catalog".<=) (CAST($2::text AS bigint)) THEN true ELSE false END"#
        );
        assert_eq!(
            s.relation_blocks,
            r#"SELECT pg_catalog.pg_relation_size(pg_catalog.to_regclass('"public"."orders"')) / pg_catalog.current_setting('block_size')::int8"#
        );
    }

    #[test]
    fn golden_verify_blocks_composite_key_quoted_table() {
        let t = Target {
            table: QualifiedName { schema: Some("sales".into()), name: "Bob's \"Items\"".into() },
            key: vec![
                KeyColumn { name: "order_id".into(), sql_type: "uuid".into() },
                KeyColumn { name: "line_no".into(), sql_type: "integer".into() },
            ],
            set: BTreeMap::from([("total".to_string(), "qty * price".to_string())]),
            where_: Some("total IS NULL".into()),
            operator_schema: "pg_catalog".into(),
        };
        let s = t.statements();
        assert_eq!(
            s.verify_blocks,
            r#"SELECT count(*) AS scanned,
       coalesce(sum(CASE WHEN (total IS NULL) THEN 1 ELSE 0 END), 0)::int8 AS matching
FROM "sales"."Bob's ""Items"""
WHERE ctid OPERATOR(pg_catalog.>=) CAST($1::text AS pg_catalog.tid)
  AND ctid OPERATOR(pg_catalog.<) CAST($2::text AS pg_catalog.tid)
  AND CASE WHEN ("order_id", "line_no") OPERATOR("pg_catalog".<=) (CAST($3::text AS uuid), CAST($4::text AS integer)) THEN true ELSE false END"#
        );
        assert_eq!(
            s.relation_blocks,
            r#"SELECT pg_catalog.pg_relation_size(pg_catalog.to_regclass('"sales"."Bob''s ""Items"""')) / pg_catalog.current_setting('block_size')::int8"#
        );
    }

    #[test]
    fn no_statement_uses_offset() {
        let s = orders().statements();
        for sql in [
            &s.first_slice,
            &s.next_slice,
            &s.first_update,
            &s.next_update,
            &s.max_key,
            &s.leftover_after,
            &s.ordered_keys,
            &s.verify_first,
            &s.verify_next,
            &s.verify_blocks,
            &s.verify_blocks_to_end,
        ] {
            assert!(!sql.to_uppercase().contains("OFFSET"), "{sql}");
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    /// Keys in the slice (rows examined).
    pub scanned: i64,
    /// Rows the UPDATE changed (those matching `where`).
    pub updated: i64,
    /// The slice's largest key; `None` when the slice was empty.
    pub cursor: Option<KeyValue>,
}

/// How long a batch transaction may sit idle between its statements before the server ends it.
pub const IDLE_IN_BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Open a batch transaction with the job's timeouts, in one round trip. `SET LOCAL` ends with the
/// transaction, so nothing leaks into the pooled connection. lock_timeout matters most: without it
/// an UPDATE queued behind a long lock makes every later query on those rows queue behind *us*.
///
/// `synchronous_commit = off`: COMMIT returns without waiting for the batch's WAL to reach disk (the
/// WAL writer flushes it within a few hundred ms, while the next batch runs). Measured on the
/// benchmark machine, that wait was about half the time of a 10,000-row batch (its ~7 MB of WAL).
/// Exactly-once still holds: a batch and its cursor advance are one transaction, so a server crash
/// can only lose the last few batches *together with* their cursor, and they are done again, once,
/// when the job resumes. WAL is flushed in order, so once anything later commits durably (the
/// job's completion, for one), every batch before it is durable too.
pub async fn begin(
    pool: &sqlx::PgPool,
    lock_timeout: std::time::Duration,
    statement_timeout: std::time::Duration,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with(begin_sql(lock_timeout, statement_timeout)).await
}

/// [`begin`] on a connection the caller keeps between batches (a range worker's own).
pub async fn begin_on(
    conn: &mut sqlx::PgConnection,
    lock_timeout: std::time::Duration,
    statement_timeout: std::time::Duration,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    use sqlx::Connection as _;
    conn.begin_with(begin_sql(lock_timeout, statement_timeout)).await
}

fn begin_sql(lock_timeout: std::time::Duration, statement_timeout: std::time::Duration) -> sqlx::AssertSqlSafe<String> {
    // Integers only: SET takes no bind parameters, and nothing from the spec reaches this string.
    // idle_in_transaction_session_timeout: if this client hangs or vanishes mid-batch (a half-open
    // connection), the server ends the session and releases the row locks instead of holding them
    // for the hours a TCP keepalive can take.
    sqlx::AssertSqlSafe(format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'; \
         SET LOCAL idle_in_transaction_session_timeout = '{}ms'; SET LOCAL synchronous_commit = off",
        lock_timeout.as_millis().max(1),
        statement_timeout.as_millis().max(1),
        IDLE_IN_BATCH_TIMEOUT.as_millis()
    ))
}

/// Run one batch over the slice after `cursor` (from the range start when `None`), up to `upper`:
/// the slice, then the UPDATE of its key range (none when the slice is empty).
pub async fn execute(
    conn: &mut sqlx::PgConnection,
    statements: &Statements,
    cursor: Option<&KeyValue>,
    upper: &KeyValue,
    limit: i64,
) -> Result<BatchResult, sqlx::Error> {
    let sql = if cursor.is_some() { &statements.next_slice } else { &statements.first_slice };
    let mut slice = sqlx::query_as::<_, (i64, Option<Vec<String>>)>(sqlx::AssertSqlSafe(sql.as_str()));
    for v in cursor.into_iter().flatten().chain(upper) {
        slice = slice.bind(v);
    }
    let (scanned, last) = slice.bind(limit).fetch_one(&mut *conn).await?;
    let Some(last) = last else {
        return Ok(BatchResult { scanned, updated: 0, cursor: None });
    };
    let sql = if cursor.is_some() { &statements.next_update } else { &statements.first_update };
    let mut update = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
    for v in cursor.into_iter().flatten().chain(&last) {
        update = update.bind(v);
    }
    let updated = update.execute(&mut *conn).await?.rows_affected();
    Ok(BatchResult { scanned, updated: i64::try_from(updated).unwrap_or(i64::MAX), cursor: Some(last) })
}

/// What one verification chunk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyChunk {
    pub scanned: i64,
    /// Rows of the chunk still matching `where`.
    pub matching: i64,
    pub cursor: Option<KeyValue>,
}

/// Run one verification chunk after `cursor` (from the first key when `None`), up to `upper`.
pub async fn verify_chunk(
    conn: &mut sqlx::PgConnection,
    statements: &Statements,
    cursor: Option<&KeyValue>,
    upper: &KeyValue,
    limit: i64,
) -> Result<VerifyChunk, sqlx::Error> {
    let sql = if cursor.is_some() { &statements.verify_next } else { &statements.verify_first };
    let mut query = sqlx::query_as::<_, (i64, i64, Option<Vec<String>>)>(sqlx::AssertSqlSafe(sql.as_str()));
    for v in cursor.into_iter().flatten().chain(upper) {
        query = query.bind(v);
    }
    let (scanned, matching, cursor) = query.bind(limit).fetch_one(conn).await?;
    Ok(VerifyChunk { scanned, matching, cursor })
}

/// The table's size in blocks now; `None` when the table is gone.
pub async fn relation_blocks(
    conn: &mut sqlx::PgConnection,
    statements: &Statements,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(statements.relation_blocks.as_str())).fetch_one(conn).await
}

/// What one verification chunk over heap blocks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockChunk {
    /// Rows in the blocks with a key up to the upper bound.
    pub scanned: i64,
    /// Those of them still matching `where`.
    pub matching: i64,
}

/// Run one verification chunk over the heap blocks `[from, to)` (`to` `None`: to the end of the
/// table), counting the rows with a key up to `upper`.
pub async fn verify_blocks(
    conn: &mut sqlx::PgConnection,
    statements: &Statements,
    from: i64,
    to: Option<i64>,
    upper: &KeyValue,
) -> Result<BlockChunk, sqlx::Error> {
    let sql = if to.is_some() { &statements.verify_blocks } else { &statements.verify_blocks_to_end };
    let tid = |block: i64| format!("({block},0)");
    let mut query = sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(sql.as_str())).bind(tid(from));
    if let Some(to) = to {
        query = query.bind(tid(to));
    }
    for v in upper {
        query = query.bind(v);
    }
    let (scanned, matching) = query.fetch_one(conn).await?;
    Ok(BlockChunk { scanned, matching })
}

/// Bind a key value's parts, then run a count statement.
pub async fn count(conn: &mut sqlx::PgConnection, sql: &str, values: &[&KeyValue]) -> Result<i64, sqlx::Error> {
    let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
    for value in values {
        for v in value.iter() {
            query = query.bind(v);
        }
    }
    query.fetch_one(conn).await
}

/// Other sessions waiting on a lock this session holds, e.g. an application UPDATE queued behind a
/// row the batch changed. Run after the batch's UPDATE, before COMMIT: the row locks are all still
/// held, so whoever waited on one at any point of the batch is still waiting. `pg_blocking_pids`
/// is only called for sessions that wait on a lock at all. Needs `pg_monitor` to see other roles'
/// sessions (without it, the answer is 0 and batches are sized by time alone).
pub async fn lock_waiters(conn: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pid FROM pg_catalog.pg_stat_activity \
             WHERE wait_event_type OPERATOR(pg_catalog.=) 'Lock' AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
             OFFSET 0) w \
         WHERE pg_catalog.pg_backend_pid() OPERATOR(pg_catalog.=) ANY (pg_catalog.pg_blocking_pids(w.pid))",
    )
    .fetch_one(conn)
    .await
}
