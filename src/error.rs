//! Error text for people: each cause once, no driver internals.
//!
//! sqlx's messages carry things an operator cannot use: a server error's position in PostgreSQL's
//! own C source ("division by zero at line 869"), and wrappers that repeat their cause
//! ("error communicating with database: Connection refused (os error 111)" whose source is the
//! same I/O error). [`sql`] words one sqlx error; [`chain`] joins an error's causes, skipping a
//! cause whose text is already shown.

use std::error::Error as StdError;

use sqlx::postgres::PgDatabaseError;

/// One sqlx error, as an operator should read it.
pub fn sql(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => database(d.as_ref()),
        sqlx::Error::Io(io) => io_text(io),
        sqlx::Error::PoolTimedOut => "timed out waiting for a database connection".into(),
        sqlx::Error::Configuration(c) => format!("invalid connection settings: {c}"),
        other => strip_position(&other.to_string()),
    }
}

fn database(d: &dyn sqlx::error::DatabaseError) -> String {
    let mut text = d.message().to_string();
    if let Some(pg) = d.try_downcast_ref::<PgDatabaseError>() {
        if let Some(detail) = pg.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = pg.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
    }
    text
}

fn io_text(io: &std::io::Error) -> String {
    // "Connection refused (os error 111)": the errno is noise for an operator.
    let text = io.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Drop a trailing " at line N" (a position in PostgreSQL's source, added by sqlx's Display).
fn strip_position(text: &str) -> String {
    if let Some(i) = text.rfind(" at line ")
        && text[i + " at line ".len()..].chars().all(|c| c.is_ascii_digit())
        && i + " at line ".len() < text.len()
    {
        return text[..i].to_string();
    }
    text.to_string()
}

/// One cause, worded: sqlx errors through [`sql`], anything else by its Display.
fn cause_text(cause: &(dyn StdError + 'static)) -> String {
    if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
        return sql(e);
    }
    if let Some(pg) = cause.downcast_ref::<PgDatabaseError>() {
        return database(pg);
    }
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        return io_text(io);
    }
    strip_position(&cause.to_string())
}

/// An error and its causes, joined with ": ", each cause once.
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    let mut next: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(cause) = next {
        let text = cause_text(cause);
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        // A sqlx error's own text already covers its source.
        next = if cause.downcast_ref::<sqlx::Error>().is_some() { None } else { cause.source() };
    }
    out
}

/// [`chain`] for an `anyhow::Error` (the CLI's top level).
pub fn report(e: &anyhow::Error) -> String {
    chain(e.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to db:5432/x")]
    struct Outer(#[source] sqlx::Error);

    #[test]
    fn each_cause_once_without_positions() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let e = Outer(sqlx::Error::Io(io));
        assert_eq!(chain(&e), "cannot connect to db:5432/x: Connection refused");
        assert_eq!(strip_position("division by zero at line 869"), "division by zero");
        assert_eq!(strip_position("see line 3"), "see line 3");
        let a = anyhow::Error::new(Outer(sqlx::Error::PoolTimedOut)).context("checking");
        assert_eq!(report(&a), "checking: cannot connect to db:5432/x: timed out waiting for a database connection");
    }
}
