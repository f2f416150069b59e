//! Connections: one place that decides how pgbackfill talks to PostgreSQL.
//!
//! Cursor values are stored as the key columns' text forms, so every session that writes or reads
//! them must format values the same way: DateStyle, IntervalStyle, TimeZone and extra_float_digits
//! are pinned here rather than inherited from the server or role defaults.

use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Parse a database URL and pin the session settings pgbackfill relies on.
pub fn connect_options(url: &str, application_name: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let opts = PgConnectOptions::from_str(url)?
        .application_name(application_name)
        .options([
            ("DateStyle", "ISO, YMD"),
            ("IntervalStyle", "iso_8601"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
        ])
        // Statement logging at INFO would print every batch's SQL; keep sqlx's own log quiet.
        .log_statements(log::LevelFilter::Debug)
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(60));
    Ok(opts)
}

/// A pool for a daemon or a CLI command.
pub async fn pool(url: &str, application_name: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let opts = connect_options(url, application_name)?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
}

/// The URL with any password removed, for logs and status output.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_string(),
        },
        None => "<database url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://app:s3cr%40t@db:5432/x"), "postgres://app@db:5432/x");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact_url("host=db password=x"), "<database url>");
    }
}
