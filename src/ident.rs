//! SQL identifiers: parsing what operators write, and quoting what we send.
//!
//! Operators write identifiers the way psql accepts them: unquoted names fold to lower case, double
//! quotes keep the exact spelling (`"OrderItems"`, with `""` for a quote inside). Everything we send to
//! PostgreSQL is *always* quoted, so a table called `orders; DROP TABLE x` can only ever be a name
//! that does not exist, never SQL.

use std::fmt;

use thiserror::Error;

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes; a longer name would silently address
/// a different object, so we refuse it.
pub const MAX_IDENT_BYTES: usize = 63;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentError {
    #[error("is empty")]
    Empty,
    #[error(
        "`{0}` is not a valid identifier (unquoted names use letters, digits, _ and $, and do not start with a digit); if that really is its name, write it in double quotes"
    )]
    Invalid(String),
    #[error("`{0}` has an unterminated double quote")]
    Unterminated(String),
    #[error("`{0}` is longer than {MAX_IDENT_BYTES} bytes, PostgreSQL would truncate it")]
    TooLong(String),
    #[error("`{0}` has more than two parts; write `schema.table`")]
    TooManyParts(String),
}

/// A possibly schema-qualified relation name, parts already unquoted/folded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub name: String,
}

impl QualifiedName {
    /// The name as SQL, every part quoted.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// Quote an identifier for SQL: always double-quoted, embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Parse one identifier as psql would (unquoted names fold to lower case).
pub fn parse_ident(text: &str) -> Result<String, IdentError> {
    let parts = split_parts(text)?;
    match parts.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(IdentError::Invalid(text.to_string())),
    }
}

/// Parse `table` or `schema.table`.
pub fn parse_qualified(text: &str) -> Result<QualifiedName, IdentError> {
    let mut parts = split_parts(text)?;
    match parts.len() {
        1 => Ok(QualifiedName { schema: None, name: parts.remove(0) }),
        2 => {
            let name = parts.remove(1);
            Ok(QualifiedName { schema: Some(parts.remove(0)), name })
        }
        _ => Err(IdentError::TooManyParts(text.to_string())),
    }
}

fn split_parts(text: &str) -> Result<Vec<String>, IdentError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(IdentError::Empty);
    }
    let mut parts = Vec::new();
    let mut chars = trimmed.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(IdentError::Unterminated(text.to_string())),
                }
            }
            if part.is_empty() {
                return Err(IdentError::Invalid(text.to_string()));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                let ok = c == '_' || c.is_alphabetic() || (!part.is_empty() && (c.is_ascii_digit() || c == '$'));
                if !ok {
                    return Err(IdentError::Invalid(text.to_string()));
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return Err(IdentError::Invalid(text.to_string()));
            }
        }
        if part.len() > MAX_IDENT_BYTES {
            return Err(IdentError::TooLong(text.to_string()));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(_) => return Err(IdentError::Invalid(text.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_unquoted_and_keeps_quoted() {
        assert_eq!(
            parse_qualified("Public.Orders").unwrap(),
            QualifiedName { schema: Some("public".into()), name: "orders".into() }
        );
        assert_eq!(
            parse_qualified("\"My Schema\".\"Or\"\"ders\"").unwrap(),
            QualifiedName { schema: Some("My Schema".into()), name: "Or\"ders".into() }
        );
        assert_eq!(parse_ident("\"OrderId\"").unwrap(), "OrderId");
    }

    #[test]
    fn injection_is_not_an_identifier() {
        assert!(matches!(parse_qualified("orders; DROP TABLE x"), Err(IdentError::Invalid(_))));
        assert!(matches!(parse_qualified("a.b.c"), Err(IdentError::TooManyParts(_))));
        assert!(matches!(parse_qualified("\"abc"), Err(IdentError::Unterminated(_))));
        assert!(matches!(parse_ident("1abc"), Err(IdentError::Invalid(_))));
        assert!(matches!(parse_ident(""), Err(IdentError::Empty)));
    }

    #[test]
    fn quoting_escapes_quotes() {
        let q = QualifiedName { schema: None, name: "orders\"; DROP TABLE x; --".into() };
        assert_eq!(q.quoted(), "\"orders\"\"; DROP TABLE x; --\"");
    }

    #[test]
    fn too_long_is_refused() {
        let long = "a".repeat(64);
        assert!(matches!(parse_ident(&long), Err(IdentError::TooLong(_))));
        assert!(parse_ident(&"a".repeat(63)).is_ok());
    }
}
