//! Offline validation of a parsed spec: every problem, each with its field and a fix.
//!
//! Offline means: nothing here knows whether the table or its columns exist, or whether an
//! expression is valid SQL. Those checks need the database and run later; this module catches what a
//! person can get wrong in the file itself, and reports all of it at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::JobSpec;
use crate::ident::{self, MAX_IDENT_BYTES};

/// Most workers one job may run; more would only fight over the same table's locks and WAL.
pub const MAX_CONCURRENCY: i64 = 64;

/// One thing wrong with a spec file, precise enough for a person to fix it without guessing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: PathBuf,
    /// Dotted field path, e.g. `batch.min_size`; empty for whole-file problems (YAML syntax).
    pub field: String,
    /// 1-based, where known.
    pub line: Option<usize>,
    /// 1-based, where known.
    pub column: Option<usize>,
    pub message: String,
    pub hint: String,
}

impl Problem {
    /// A problem without a position yet (validation does not see the text; loading adds it).
    pub fn new(file: &Path, field: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            field: field.into(),
            line: None,
            column: None,
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// The same problem at a 1-based line and column.
    pub fn at(mut self, position: Option<(usize, usize)>) -> Self {
        if let Some((line, column)) = position {
            self.line = Some(line);
            self.column = Some(column);
        }
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, " (fix: {})", self.hint)?;
        }
        Ok(())
    }
}

impl JobSpec {
    /// Every offline problem with this spec (empty when it is fine). `file` only labels the problems.
    ///
    /// Cross-field rules (`min_size <= size <= max_size`, `resume_lag < max_lag`, `set` never
    /// assigning a key column) are checked here too, so callers have one place to ask.
    pub fn validate(&self, file: &Path) -> Vec<Problem> {
        let mut v = Validator { file, problems: Vec::new() };
        v.name(&self.name);
        v.table(&self.table);
        let key = self.key.as_deref().and_then(|key| v.key(key));
        v.set(&self.set, key.as_deref());
        if let Some(predicate) = &self.where_ {
            v.sql(
                "where",
                predicate,
                "remove `where` to update every row, or write a predicate such as `status IS NULL`",
            );
        }
        v.batch(self);
        v.timeouts(self);
        v.throttle(self);
        if let Some(schedule) = &self.schedule {
            v.schedule(schedule);
        }
        v.then(self);
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            v.push(
                "concurrency",
                format!("is {}, must be between 1 and {MAX_CONCURRENCY}", self.concurrency),
                "start with `concurrency: 1`; raise it only if one worker cannot keep up",
            );
        }
        v.problems
    }
}

struct Validator<'a> {
    file: &'a Path,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Problem::new(self.file, field, message, hint));
    }

    fn name(&mut self, name: &str) {
        const HINT: &str = "use lower-case letters, digits, `-` and `_`, starting with a letter or digit, e.g. `orders-fulfillment-channel`";
        if name.is_empty() {
            self.push("name", "is empty", HINT);
            return;
        }
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !first_ok || !rest_ok {
            self.push("name", format!("`{name}` is not a valid job name"), HINT);
        }
        if name.len() > MAX_IDENT_BYTES {
            self.push(
                "name",
                format!("is {} characters long, at most {MAX_IDENT_BYTES} are allowed", name.len()),
                "shorten the name; it is stored as the job's key in the progress table",
            );
        }
    }

    fn table(&mut self, table: &str) {
        if let Err(e) = ident::parse_qualified(table) {
            self.push(
                "table",
                e.to_string(),
                "write the table as `table` or `schema.table`, e.g. `public.orders`; double-quote names with capitals or special characters",
            );
        }
    }

    /// Checks the key list; returns the folded column names when every entry parsed.
    fn key(&mut self, key: &[String]) -> Option<Vec<String>> {
        if key.is_empty() {
            self.push(
                "key",
                "is an empty list",
                "list the key columns, e.g. `key: [id]`, or leave `key` out to use the primary key",
            );
            return None;
        }
        let mut folded: Vec<String> = Vec::with_capacity(key.len());
        let mut all_ok = true;
        for (i, entry) in key.iter().enumerate() {
            match ident::parse_ident(entry) {
                Ok(column) => {
                    if let Some(first) = folded.iter().position(|c| *c == column) {
                        self.push(
                            format!("key[{i}]"),
                            format!("column `{column}` is listed twice (also key[{first}])"),
                            "list each key column once",
                        );
                    }
                    folded.push(column);
                }
                Err(e) => {
                    all_ok = false;
                    self.push(format!("key[{i}]"), e.to_string(), "write a column name, e.g. `id`");
                }
            }
        }
        all_ok.then_some(folded)
    }

    fn set(&mut self, set: &BTreeMap<String, String>, key: Option<&[String]>) {
        if set.is_empty() {
            self.push(
                "set",
                "assigns no columns",
                "add at least one `column: expression`, e.g. `fulfillment_channel: \"'web'\"`",
            );
            return;
        }
        // Two spellings may fold to the same column (`Email` and `email`): that is one column assigned twice.
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (column, expression) in set {
            let field = format!("set.{column}");
            match ident::parse_ident(column) {
                Ok(folded) => {
                    if let Some(other) = seen.get(&folded) {
                        self.push(
                            field.clone(),
                            format!("assigns column `{folded}` a second time (also as `{other}`)"),
                            "assign each column once",
                        );
                    } else if key.is_some_and(|key| key.contains(&folded)) {
                        self.push(
                            field.clone(),
                            format!("assigns key column `{folded}`"),
                            "the key orders the batches and must not change while the backfill runs: \
                             remove it from `set` or choose another `key`",
                        );
                    }
                    seen.insert(folded, column);
                }
                Err(e) => self.push(
                    field.clone(),
                    format!("column name {e}"),
                    "write a column name; double-quote it if it has capitals or special characters",
                ),
            }
            self.sql(
                &field,
                expression,
                "write one SQL expression, e.g. `lower(email)`; a SQL string literal needs its own quotes: `\"'web'\"`",
            );
        }
    }

    /// The offline part of checking SQL text: not empty, and one expression that stays inside the
    /// parentheses the batch statement wraps it in. Whether it is valid SQL is the database's to say, later.
    fn sql(&mut self, field: &str, text: &str, hint: &str) {
        if text.trim().is_empty() {
            self.push(field, "is empty", hint);
            return;
        }
        let Some(found) = scan_sql(text) else { return };
        // 1-based character (not byte) positions, as an editor shows them.
        let at = |byte: usize| text[..byte].chars().count() + 1;
        let (message, fix) = match found {
            Unsafe::Semicolon(i) => (
                format!("contains `;` at character {} outside a quoted string", at(i)),
                "write a single SQL expression without `;`; a `;` inside a string literal like `'a;b'` is fine"
                    .to_string(),
            ),
            Unsafe::StrayClose(i) => (
                format!("has a `)` at character {} that closes a parenthesis it did not open", at(i)),
                "balance the parentheses: the expression is spliced into the batch statement inside `( … )` \
                 and must not close it; a `)` in a string literal like `'a)b'` or a quoted name is fine"
                    .to_string(),
            ),
            Unsafe::Unclosed(i) => (
                format!("has a `(` at character {} that is never closed", at(i)),
                "balance the parentheses: close every `(` the expression opens".to_string(),
            ),
            Unsafe::Parameter(i, digits) => (
                format!("contains the positional parameter `{}` at character {}", &text[i..=i + digits], at(i)),
                "write the value as a literal; `$1`, `$2`… would bind to pgbackfill's own cursor parameters \
                 (dollar-quoted strings such as `$$text$$` or `$q$text$q$` are fine)"
                    .to_string(),
            ),
            Unsafe::Comma(i) => (
                format!("has a `,` at character {} outside any parentheses or brackets", at(i)),
                "write one expression: the batch statement wraps it in `( … )`, where a top-level `,` makes a row \
                 of several values; commas inside a function call like `coalesce(a, b)` are fine"
                    .to_string(),
            ),
            Unsafe::LineComment(i) => (
                format!("has a `--` comment at character {}", at(i)),
                "use a `/* … */` comment: a `--` comment would run over the `)` the batch statement puts after \
                 the expression"
                    .to_string(),
            ),
            Unsafe::Unterminated(i, what) => (
                format!("has a {what} starting at character {} that never ends", at(i)),
                format!("close the {what}; to write a quote inside a string literal, double it: `'it''s'`"),
            ),
        };
        self.push(field, message, fix);
    }

    fn batch(&mut self, spec: &JobSpec) {
        let b = &spec.batch;
        let mut all_positive = true;
        for (field, value) in
            [("batch.size", b.start_size()), ("batch.min_size", b.min_size), ("batch.max_size", b.max_size)]
        {
            if value <= 0 {
                all_positive = false;
                self.push(
                    field,
                    format!("is {value}, must be at least 1 row"),
                    "use a positive number of rows, e.g. `1000`",
                );
            }
        }
        if all_positive {
            if b.min_size > b.max_size {
                self.push(
                    "batch.min_size",
                    format!("min_size {} is larger than max_size {}", b.min_size, b.max_size),
                    "make `min_size` at most `max_size` (defaults: 100 and 100000)",
                );
            } else if let Some(size) = b.size.filter(|s| !(b.min_size..=b.max_size).contains(s)) {
                self.push(
                    "batch.size",
                    format!("size {size} is outside min_size..max_size ({}..{})", b.min_size, b.max_size),
                    "set `size` between `min_size` and `max_size` (defaults: 100 and 100000), or widen the range",
                );
            }
        }
        if b.target_time == Some(Duration::ZERO) {
            self.push(
                "batch.target_time",
                "is zero",
                "write a positive duration such as `500ms`, or remove it to keep the size fixed",
            );
        }
    }

    fn timeouts(&mut self, spec: &JobSpec) {
        let t = &spec.timeouts;
        for (field, value) in [("timeouts.lock", t.lock), ("timeouts.statement", t.statement)] {
            if value.is_zero() {
                self.push(
                    field,
                    "is zero, which PostgreSQL reads as \"no timeout\"",
                    "write a positive duration such as `2s` or `30s`",
                );
            }
        }
    }

    fn throttle(&mut self, spec: &JobSpec) {
        let t = &spec.throttle;
        if t.max_lag.is_zero() {
            self.push(
                "throttle.max_lag",
                "is zero, so every batch would wait",
                "write a positive duration such as `10s`",
            );
        } else if let Some(resume) = t.resume_lag
            && resume >= t.max_lag
        {
            self.push(
                "throttle.resume_lag",
                format!(
                    "resume_lag {} is not below max_lag {}",
                    humantime::format_duration(resume),
                    humantime::format_duration(t.max_lag)
                ),
                "make `resume_lag` smaller than `max_lag` (it defaults to half of it) so throttling does not flap",
            );
        }
        if t.min_replicas < 0 {
            self.push(
                "throttle.min_replicas",
                format!("is {}, must be 0 or more", t.min_replicas),
                "use `0` to not require standbys",
            );
        }
        for (field, value) in [
            ("throttle.max_lag_bytes", t.max_lag_bytes),
            ("throttle.max_slot_retained_bytes", t.max_slot_retained_bytes),
        ] {
            if value.is_some_and(|v| v.as_u64() == 0) {
                self.push(
                    field,
                    "is zero, so every batch would wait",
                    "write a positive size such as `16MB` or `1GiB`, or remove it",
                );
            }
        }
        if let Some(rate) = t.max_rate
            && rate <= 0
        {
            self.push(
                "throttle.max_rate",
                format!("is {rate}, must be at least 1 (rows per second)"),
                "write a positive number of rows per second such as `5000`, or remove it for no cap",
            );
        }
        if t.max_transaction_age.is_some_and(|age| age.is_zero()) {
            self.push(
                "throttle.max_transaction_age",
                "is zero, so every batch would wait",
                "write a positive duration such as `10m`, or remove it",
            );
        }
    }
}

impl Validator<'_> {
    fn then(&mut self, spec: &JobSpec) {
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, step) in spec.then.iter().enumerate() {
            let field = format!("then[{i}]");
            let (kind, name, what) = match step {
                super::ThenStep::NotNull(column) => {
                    ("not_null", column, "a column name, e.g. `not_null: fulfillment_channel`")
                }
                super::ThenStep::ValidateConstraint(name) => (
                    "validate_constraint",
                    name,
                    "a constraint name, e.g. `validate_constraint: orders_total_positive`",
                ),
            };
            match ident::parse_ident(name) {
                Ok(folded) => {
                    let key = format!("{kind}:{folded}");
                    if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                        self.push(
                            field,
                            format!("`{kind}: {name}` is listed twice (also then[{first}])"),
                            "list each step once",
                        );
                    } else {
                        seen.push((key, i));
                    }
                }
                Err(e) => self.push(
                    field,
                    format!("`{kind}`: {e}"),
                    format!("write {what}; double-quote names with capitals or special characters"),
                ),
            }
        }
        if spec.then_lock_timeout.is_zero() {
            self.push(
                "then_lock_timeout",
                "is zero, which PostgreSQL reads as \"no timeout\": a DDL statement could queue every session behind it",
                "write a short positive duration such as `2s`",
            );
        }
    }

    fn schedule(&mut self, schedule: &super::ScheduleSpec) {
        if let Err(e) = crate::schedule::parse_timezone(&schedule.timezone) {
            self.push(
                "schedule.timezone",
                e,
                "write an IANA time zone name such as `UTC`, `Europe/Berlin` or `America/New_York`",
            );
        }
        if schedule.windows.is_empty() {
            self.push(
                "schedule.windows",
                "has no windows, so the job would never run",
                format!(
                    "list at least one window, e.g. {}; remove `schedule` to run at any time",
                    crate::schedule::WINDOW_EXAMPLE
                ),
            );
        }
        for (i, window) in schedule.windows.iter().enumerate() {
            if let Err(e) = crate::schedule::Window::parse(window) {
                self.push(
                    format!("schedule.windows[{i}]"),
                    format!("`{window}`: {e}"),
                    format!("write `[DAYS ]HH:MM-HH:MM`, e.g. {}", crate::schedule::WINDOW_EXAMPLE),
                );
            }
        }
    }
}

/// What makes SQL text unsafe to splice into the batch statement, which wraps each `set`
/// expression as `"col" = (expr)` and `where` as `AND (predicate)`. Offsets are in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsafe {
    /// A second statement.
    Semicolon(usize),
    /// A `)` that closes the wrapper's `(`: the rest of the text escapes it
    /// (`status = 'x') OR (true` turns the filter into `OR true`).
    StrayClose(usize),
    /// A `(` never closed: the wrapper's `)` would close it and the text runs into what follows.
    Unclosed(usize),
    /// `$1`, `$2`…: would bind to pgbackfill's own cursor and limit parameters.
    Parameter(usize, usize),
    /// A `,` outside parentheses and brackets: inside the wrapper's `( … )` the text becomes a row
    /// of several values instead of one expression.
    Comma(usize),
    /// `--`: it would comment out the wrapper's closing `)` (and, in `set`, the entries after it).
    LineComment(usize),
    /// A string, quoted identifier, dollar quote or block comment with no end: it would swallow
    /// the statement's text after it, up to a quote in another field.
    Unterminated(usize, &'static str),
}

/// A small lexer, not a parser: outside string literals (`'…'`, `E'…'`), quoted identifiers,
/// dollar-quoted strings and comments, it finds `;`, unbalanced parentheses, top-level commas and
/// positional parameters. It follows PostgreSQL's lexer where the two could disagree about what is quoted:
/// `$` inside an identifier (`a$b$`) does not start a dollar quote, block comments nest, and the
/// `E` of an escape string must stand alone. It reads plain `'…'` literals as PostgreSQL does with
/// `standard_conforming_strings = on` (backslash is an ordinary character): every session pins that
/// setting and is refused when it did not take (`db::pin_session`), so the two always agree.
/// `tests/fuzz.rs` checks what it accepts against PostgreSQL itself.
fn scan_sql(sql: &str) -> Option<Unsafe> {
    let bytes = sql.as_bytes();
    let ident_start = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
    let ident_char = |b: u8| ident_start(b) || b.is_ascii_digit() || b == b'$';
    let mut open: Vec<usize> = Vec::new();
    // `[ … ]` (array constructors and subscripts) nest too; only their commas are checked.
    let mut brackets = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' => return Some(Unsafe::Semicolon(i)),
            b'[' => brackets += 1,
            b']' => brackets = brackets.saturating_sub(1),
            b',' if open.is_empty() && brackets == 0 => return Some(Unsafe::Comma(i)),
            b'(' => open.push(i),
            // The guard pops: a `)` closes the innermost open `(`, or escapes the wrapper's.
            b')' if open.pop().is_none() => return Some(Unsafe::StrayClose(i)),
            b if ident_start(b) => {
                // A whole word, so a `$` inside it is not mistaken for a dollar quote or parameter.
                let word_start = i;
                while bytes.get(i + 1).is_some_and(|b| ident_char(*b)) {
                    i += 1;
                }
                // `E'…'` (not `xe'…'`) is an escape string: backslash escapes its quote.
                if i == word_start && matches!(b, b'E' | b'e') && bytes.get(i + 1) == Some(&b'\'') {
                    match string_end(bytes, i + 1, true) {
                        Some(end) => i = end,
                        None => return Some(Unsafe::Unterminated(i, "string literal")),
                    }
                }
            }
            b'\'' => match string_end(bytes, i, false) {
                Some(end) => i = end,
                None => return Some(Unsafe::Unterminated(i, "string literal")),
            },
            b'"' => match bytes[i + 1..].iter().position(|b| *b == b'"') {
                // `""` inside a name closes and reopens: the same thing for this purpose.
                Some(len) => i += len + 1,
                None => return Some(Unsafe::Unterminated(i, "quoted identifier")),
            },
            // A `--` comment runs to the end of the line, and the wrapper's `)` follows on that line.
            b'-' if bytes.get(i + 1) == Some(&b'-') => return Some(Unsafe::LineComment(i)),
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let start = i;
                let mut depth = 0usize;
                loop {
                    match (bytes.get(i), bytes.get(i + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 1;
                            if depth == 0 {
                                break;
                            }
                            i += 1;
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return Some(Unsafe::Unterminated(start, "block comment")),
                    }
                }
            }
            b'$' => {
                let digits = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                if digits > 0 {
                    return Some(Unsafe::Parameter(i, digits));
                }
                // `$tag$ … $tag$` or `$$ … $$`.
                let tag_len = bytes[i + 1..].iter().take_while(|b| ident_start(**b) || b.is_ascii_digit()).count();
                if bytes.get(i + 1 + tag_len) == Some(&b'$') {
                    let tag = &sql[i..i + tag_len + 2];
                    let body = i + tag.len();
                    match sql[body..].find(tag) {
                        Some(end) => i = body + end + tag.len() - 1,
                        None => return Some(Unsafe::Unterminated(i, "dollar-quoted string")),
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    open.first().map(|at| Unsafe::Unclosed(*at))
}

/// Offset of the quote closing the string literal opened at `start`; `None` when it never closes.
/// `''` is a quote in every string; with `escapes` (an `E'…'` string) so is `\'`.
fn string_end(bytes: &[u8], start: usize, escapes: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 1,
            b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 1,
            b'\'' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_comments_are_refused() {
        // `--` would comment out the wrapper's `)` that follows on the same line.
        assert_eq!(scan_sql("x -- trailing; comment )"), Some(Unsafe::LineComment(2)));
        assert_eq!(scan_sql("'--' || x"), None);
    }

    #[test]
    fn quoted_text_and_comments_are_skipped() {
        for ok in [
            "'a;b'",
            "'it''s;' || x",
            r"E'\';' || x",
            "\"odd;col\" + 1",
            "$$a;b$$ || $t$;$t$",
            "x /* ; ) */ + 1",
            "x /* nested /* ) */ still comment ( */ + 1",
            "'a)b' || \"col)\" || $$)$$ || $q$($q$",
            "lower(email)",
            "coalesce(nullif(trim(a), ''), (b))",
            "a$b$ + 1",
            "col$1 + 1",
        ] {
            assert_eq!(scan_sql(ok), None, "{ok}");
        }
    }

    #[test]
    fn unsafe_text_is_found() {
        assert_eq!(scan_sql("lower(email); DROP TABLE users"), Some(Unsafe::Semicolon(12)));
        assert_eq!(scan_sql("1, ''"), Some(Unsafe::Comma(1)));
        assert_eq!(scan_sql("coalesce(a, b) || ARRAY[1, 2]::text || x[1:2] || '{a,b}'"), None);
        assert_eq!(scan_sql("'a' ; 'b'"), Some(Unsafe::Semicolon(4)));
        assert_eq!(scan_sql("status = 'legacy') OR (id < 100"), Some(Unsafe::StrayClose(17)));
        assert_eq!(scan_sql("lower(email"), Some(Unsafe::Unclosed(5)));
        assert_eq!(scan_sql("x = $1"), Some(Unsafe::Parameter(4, 1)));
        assert_eq!(scan_sql("x = $12 || $$a$$"), Some(Unsafe::Parameter(4, 2)));
        assert_eq!(scan_sql("'abc"), Some(Unsafe::Unterminated(0, "string literal")));
        assert_eq!(scan_sql(r"E'\'"), Some(Unsafe::Unterminated(0, "string literal")));
        assert_eq!(scan_sql("\"abc"), Some(Unsafe::Unterminated(0, "quoted identifier")));
        assert_eq!(scan_sql("$q$abc$$"), Some(Unsafe::Unterminated(0, "dollar-quoted string")));
        assert_eq!(scan_sql("/* /* */ ) OR (true"), Some(Unsafe::Unterminated(0, "block comment")));
        // `$` inside an identifier is not a dollar quote: PostgreSQL sees the `)` here.
        assert_eq!(scan_sql("c$a$) OR (true) OR (c$a$"), Some(Unsafe::StrayClose(4)));
    }

    #[test]
    fn display_has_position_field_and_fix() {
        let p = Problem::new(Path::new("jobs/a.yaml"), "batch.size", "is 0", "use 1000").at(Some((7, 3)));
        assert_eq!(p.to_string(), "jobs/a.yaml:7:3: batch.size: is 0 (fix: use 1000)");
        let p = Problem::new(Path::new("a.yaml"), "", "cannot read", "");
        assert_eq!(p.to_string(), "a.yaml: cannot read");
    }
}
