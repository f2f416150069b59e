//! Connections: one place that decides how pgbackfill talks to PostgreSQL.
//!
//! Cursor values are stored as the key columns' text forms, so every session that writes or reads
//! them must format values the same way: DateStyle (ISO output), IntervalStyle, TimeZone and
//! extra_float_digits are pinned here rather than inherited from the server or role defaults.
//!
//! Two more settings decide how the generated SQL *parses*, and are pinned for safety:
//! `standard_conforming_strings = on` (the spec lexer reads quotes that way: with it off, `'\''` is a
//! whole literal and a crafted `where` can close the batch statement's parentheses), and
//! `search_path` with `pg_catalog` first (see [`pin_session`]). Every new connection is checked after
//! connecting; a session where a pin did not take (a pooler in transaction mode that drops startup
//! options) is refused rather than used.

use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

/// How long one `acquire` waits for a connection (including connect retries while the server
/// refuses connections) before giving up.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Session settings sent in the startup packet of every connection.
///
/// The TCP keepalives are a safety net for a peer that vanishes without closing the connection
/// (a failed-over primary, a dropped NAT entry): the server notices within about a minute
/// (30 s idle + 3 × 10 s probes) and ends the session, so a half-open connection does not keep a
/// batch's locks or a lease's transaction alive. They are ignored on Unix sockets.
///
/// `idle_in_transaction_session_timeout` is deliberately *not* set here: each batch sets its own,
/// scoped to its transaction, and a global value would also cut the progress table's sessions.
///
/// DateStyle (`ISO, MDY`), TimeZone (`UTC`) and extra_float_digits are sent by sqlx itself as
/// startup parameters, which PostgreSQL applies *after* these `-c` options: so they are set
/// through sqlx ([`connect_options`]) and only checked here ([`pin_session`]).
pub const SESSION_OPTIONS: [(&str, &str); 5] = [
    ("standard_conforming_strings", "on"),
    ("IntervalStyle", "iso_8601"),
    ("tcp_keepalives_idle", "30"),
    ("tcp_keepalives_interval", "10"),
    ("tcp_keepalives_count", "3"),
];

/// How to write special characters of a password inside a URL.
const PERCENT_ENCODE_HINT: &str = "percent-encode special characters in the user name and password \
     (@ as %40, / as %2F, : as %3A, ? as %3F, # as %23, % as %25), or use a libpq key=value string \
     (host=… port=… dbname=… user=… password='…')";

/// The fix for a connection string the driver refused over its `sslmode`, if that is what it was.
fn sslmode_hint(driver_message: &str) -> Option<&'static str> {
    driver_message
        .contains("ssl_mode")
        .then_some("sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full")
}

fn config(message: String) -> sqlx::Error {
    sqlx::Error::Configuration(message.into())
}

/// libpq keywords accepted in a `key=value` connection string (those sqlx's URL form understands).
const KEYWORDS: [&str; 12] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "options",
];

/// Split a libpq keyword/value string (`host=db port=5432 password='a b\'c'`) into pairs, with
/// libpq's quoting: single quotes around a value, backslash escaping `'` and `\` inside them.
fn keyword_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("`{key}` has no `=value` (expected key=value pairs separated by spaces)"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("the value of `{key}` has no closing quote")),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("the value of `{key}` has no closing quote")),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(format!("unsupported keyword `{key}` (supported: {})", KEYWORDS.join(", ")));
        }
        pairs.push((key, value));
    }
}

/// Parse a connection string the way the driver will use it: a `postgres://` / `postgresql://` URL
/// or a libpq `key=value` string. Errors never echo the string (it may hold a password).
pub fn parse_target(conn: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let s = conn.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        // A password with an unescaped `/`, `?` or `#` ends the authority early: the rest of it
        // would become the database name (or a fragment) and show up in messages. Refuse that.
        match url::Url::parse(s) {
            Ok(u) if u.path().contains('@') || u.fragment().is_some() => Err(config(format!(
                "the database URL has an `@` or `#` after its host part, so part of the password would be \
                 read as the host, port or database name: {PERCENT_ENCODE_HINT}"
            ))),
            Ok(_) => PgConnectOptions::from_str(s).map_err(|e| match e {
                sqlx::Error::Configuration(inner) => {
                    // Anything but a bad sslmode is most often a special character of the
                    // password read as part of the URL.
                    let hint = sslmode_hint(&inner.to_string()).unwrap_or(PERCENT_ENCODE_HINT);
                    config(format!("invalid database URL ({inner}); {hint}"))
                }
                other => other,
            }),
            Err(e) => Err(config(format!("invalid database URL ({e}); {PERCENT_ENCODE_HINT}"))),
        }
    } else if s.contains('=') {
        let pairs = keyword_values(s).map_err(|e| config(format!("invalid key=value connection string: {e}")))?;
        // Through the driver's own URL form, so both spellings mean exactly the same.
        let mut url = url::Url::parse("postgres://").map_err(|e| config(e.to_string()))?;
        url.query_pairs_mut().extend_pairs(pairs.iter());
        PgConnectOptions::from_str(url.as_str()).map_err(|e| {
            let message = crate::error::sql(&e);
            match sslmode_hint(&message) {
                Some(hint) => config(format!("invalid key=value connection string: {message}; {hint}")),
                None => config(format!("invalid key=value connection string: {message}")),
            }
        })
    } else {
        Err(config(
            "the database URL must be a postgres:// (or postgresql://) URL, or a libpq key=value string \
             such as `host=db port=5432 dbname=app user=backfill`"
                .to_string(),
        ))
    }
}

/// What a connection is to, for messages: `host:port/database as user` (a Unix socket shows its
/// directory). Never the password.
pub fn describe_target(opts: &PgConnectOptions) -> String {
    let host = match opts.get_socket() {
        Some(dir) => dir.display().to_string(),
        None => opts.get_host().to_string(),
    };
    let database = opts.get_database().unwrap_or(opts.get_username());
    format!("{host}:{}/{database} as {}", opts.get_port(), opts.get_username())
}

/// [`describe_target`] of a connection string; a placeholder when it does not parse.
pub fn target(conn: &str) -> String {
    parse_target(conn).map(|o| describe_target(&o)).unwrap_or_else(|_| "<database url>".to_string())
}

/// Parse a database URL and pin the session settings pgbackfill relies on.
pub fn connect_options(url: &str, application_name: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let opts = parse_target(url)?
        .application_name(application_name)
        .options(SESSION_OPTIONS)
        .extra_float_digits(3)
        // Statement logging at INFO would print every batch's SQL; keep sqlx's own log quiet.
        .log_statements(log::LevelFilter::Debug)
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(60));
    Ok(opts)
}

/// The startup options whose effect [`pin_session`] verifies (the keepalives are not visible on Unix
/// sockets, and change nothing about how SQL parses or formats).
const VERIFIED: [(&str, &str); 5] = [
    ("standard_conforming_strings", "on"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "iso_8601"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
];

/// Run on every new connection: put `pg_catalog` first in `search_path`, then check that every pin
/// took effect. A session that does not have them is refused (the error names the setting).
///
/// Why `search_path` is *prepended to*, not replaced: a job's `table:` may be unqualified, and its
/// `set`/`where` may call the operator's own functions unqualified, both resolved through the
/// role's or database's `search_path` exactly as in the operator's own sessions. A fixed path in the
/// startup packet would silently change what those names mean. What our generated SQL needs is
/// different: the key comparisons (`(k) > cursor`) must never resolve to an operator someone else
/// created. `pg_catalog` first does not guarantee that on its own: an operator whose argument types
/// match exactly wins over a built-in that needs a cast, wherever it sits in the path
/// (CVE-2018-1058; there is no built-in `varchar > varchar`). So `batch` also qualifies every
/// operator it emits (`OPERATOR(pg_catalog.>)`, or the schema of the key index's operator class),
/// and `pg_catalog` first covers the functions we call unqualified (`count`, `coalesce`…) and the
/// progress tables' comparisons. Operators and functions *inside* a user's `set`/`where` still
/// resolve through the user's path: README's security section says so.
pub async fn pin_session(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let (path, scs, date_style, interval_style, time_zone, float_digits): (String, String, String, String, String, String) =
        sqlx::query_as(
            "SELECT set_config('search_path', concat_ws(', ', 'pg_catalog', \
                    nullif(current_setting('search_path'), '')), false), \
                    current_setting('standard_conforming_strings'), current_setting('DateStyle'), \
                    current_setting('IntervalStyle'), current_setting('TimeZone'), current_setting('extra_float_digits')",
        )
        .fetch_one(&mut *conn)
        .await?;
    let got = [scs, date_style, interval_style, time_zone, float_digits];
    let wrong: Vec<String> = VERIFIED
        .iter()
        .zip(&got)
        .filter(|((_, want), got)| !want.eq_ignore_ascii_case(got))
        .map(|((name, want), got)| format!("{name} is {got:?}, not {want:?}"))
        .collect();
    if !wrong.is_empty() {
        return Err(sqlx::Error::Configuration(
            format!(
                "refusing this database session: the settings pgbackfill sends at connect did not take effect ({}); \
                 a connection pooler in transaction or statement mode (PgBouncer) drops them: connect pgbackfill \
                 directly to PostgreSQL or through a session-mode pool",
                wrong.join(", ")
            )
            .into(),
        ));
    }
    if !path.starts_with("pg_catalog") {
        return Err(sqlx::Error::Configuration(
            format!("refusing this database session: search_path is {path:?}").into(),
        ));
    }
    Ok(())
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|conn, _meta| Box::pin(pin_session(conn)))
}

/// A pool for a daemon or a CLI command.
///
/// The pool is lazy: it opens no connection here, so a daemon started next to its database
/// (a sidecar, or a database that is restarting) gets past start-up and waits in its own retry
/// loop instead of exiting. Only a malformed URL fails here; an unreachable database shows on the
/// first query — call [`check_connection`] to get that error, with its cause, up front.
///
/// Still `async` so callers need not change.
pub async fn pool(url: &str, application_name: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let opts = connect_options(url, application_name)?;
    Ok(pool_options(max_connections).connect_lazy_with(opts))
}

/// The database could not be reached; the message names the target (host:port/database as user,
/// never the password) and the cause.
#[derive(Debug, thiserror::Error)]
// The cause is the source, not part of the message: `{:#}` would print it twice.
#[error("cannot connect to {target}")]
pub struct ConnectError {
    pub target: String,
    #[source]
    pub source: sqlx::Error,
}

/// How long one direct connection attempt may take before [`check_connection`] gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Open (and close) one connection directly, for commands that should fail fast and clearly when
/// the database is unreachable: a closed port says "connection refused" at once, instead of the
/// pool retrying until [`ACQUIRE_TIMEOUT`] and reporting only that it timed out. The session pins
/// are checked too ([`pin_session`]).
pub async fn check_connection(pool: &PgPool, url: &str) -> Result<(), ConnectError> {
    check_target(pool, target(url)).await
}

/// [`check_connection`] with the target taken from the pool's own options: for the daemon, whose
/// URL may have been re-read since (SIGHUP).
pub async fn check_pool(pool: &PgPool) -> Result<(), ConnectError> {
    check_target(pool, describe_target(&pool.connect_options())).await
}

async fn check_target(pool: &PgPool, target: String) -> Result<(), ConnectError> {
    let err = match tokio::time::timeout(CONNECT_TIMEOUT, pool.connect_options().connect()).await {
        Ok(Ok(mut conn)) => {
            let pinned = pin_session(&mut conn).await;
            let _ = sqlx::Connection::close(conn).await;
            match pinned {
                Ok(()) => return Ok(()),
                Err(e) => e,
            }
        }
        Ok(Err(e)) => e,
        Err(_) => sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        )),
    };
    Err(ConnectError { target, source: err })
}

/// Query parameters that carry a secret (libpq's `password`, and the client key's `sslpassword`).
fn is_secret_param(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword")
}

/// The URL with every password removed (userinfo and `password`/`sslpassword` query parameters),
/// for logs, error contexts and status output. Anything that does not parse as a URL (a libpq
/// keyword/value string, say) is not echoed at all.
pub fn redact_url(url: &str) -> String {
    const OPAQUE: &str = "<database url>";
    // Exactly what the driver will connect to, or nothing: a URL whose password has an unescaped
    // `@`, `/` or `#` would otherwise show part of it as host, port or database.
    let Ok(opts) = parse_target(url) else {
        return OPAQUE.to_string();
    };
    let Ok(mut parsed) = url::Url::parse(url) else {
        // A libpq key=value string: show what it points at.
        return describe_target(&opts);
    };
    if parsed.password().is_some() && parsed.set_password(None).is_err() {
        return OPAQUE.to_string();
    }
    if let Some(query) = parsed.query() {
        // Filter the raw `&`-separated pairs (comparing decoded keys) rather than re-serializing,
        // so the parameters that stay are shown exactly as given (`host=/sock`, not `host=%2Fsock`).
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let key = pair.split('=').next().unwrap_or("");
                let key = url::form_urlencoded::parse(key.as_bytes()).next().map(|(k, _)| k).unwrap_or_default();
                !is_secret_param(&key)
            })
            .collect();
        let kept = kept.join("&");
        parsed.set_query(if kept.is_empty() { None } else { Some(&kept) });
    }
    let redacted = parsed.to_string();
    // Belt and braces: never hand back something that still carries a password.
    if parsed.password().is_some() || parsed.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        return OPAQUE.to_string();
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_passwords() {
        assert_eq!(redact_url("postgres://app:s3cr%40t@db:5432/x"), "postgres://app@db:5432/x");
        assert_eq!(redact_url("postgresql://app:pw@db/x"), "postgresql://app@db/x");
        // Percent-encoded ':' and '@' inside the password do not confuse the split.
        assert_eq!(redact_url("postgres://app:a%3Ab%40c@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
    }

    #[test]
    fn redacts_query_passwords() {
        assert_eq!(redact_url("postgres://app@db/x?password=s3cret"), "postgres://app@db/x");
        assert_eq!(redact_url("postgres:///x?host=/sock&password=s3cret"), "postgres:///x?host=/sock");
        assert_eq!(
            redact_url("postgresql://u:p@h/d?sslmode=require&PassWord=x&sslpassword=y&application_name=a"),
            "postgresql://u@h/d?sslmode=require&application_name=a"
        );
        // An encoded key is still recognized.
        assert_eq!(redact_url("postgres://h/d?pass%77ord=x&port=5433"), "postgres://h/d?port=5433");
        assert_eq!(redact_url("postgres://h/d?password=a%26b"), "postgres://h/d");
        // Parameters that merely contain the word stay.
        assert_eq!(redact_url("postgres://h/d?passfile=/p"), "postgres://h/d?passfile=/p");
    }

    #[test]
    fn key_value_strings_mean_what_libpq_means() {
        let o = parse_target("host=db.internal port=5433 dbname=app user=backfill password='a b\\'c@/'").unwrap();
        assert_eq!(describe_target(&o), "db.internal:5433/app as backfill");
        assert_eq!(redact_url("host=db port=5433 dbname=app user=u password=s3cret"), "db:5433/app as u");
        let o = parse_target("host=/var/run/postgresql dbname=app user=u").unwrap();
        assert_eq!(describe_target(&o), "/var/run/postgresql:5432/app as u");
        let e = parse_target("host=db passwd=x").unwrap_err().to_string();
        assert!(e.contains("unsupported keyword `passwd`") && !e.contains("=x"), "{e}");
        let e = parse_target("host=db password='unterminated").unwrap_err().to_string();
        assert!(e.contains("no closing quote") && !e.contains("unterminated"), "{e}");
        let e = parse_target("db.internal").unwrap_err().to_string();
        assert!(e.contains("postgres://") && e.contains("key=value"), "{e}");
    }

    #[test]
    fn unescaped_password_characters_never_leak() {
        // `/` ends the authority: "12" would be the port and "ss@db/x" the database.
        for url in ["postgres://app:12/zq9@db/x", "postgres://app:pa#zq9@db/x", "postgres://app:pa/zq9@db:5432/x"] {
            assert_eq!(redact_url(url), "<database url>", "{url}");
            let e = parse_target(url).unwrap_err().to_string();
            assert!(e.contains("%40") && e.contains("%2F"), "says how to percent-encode: {e}");
            assert!(!e.contains("zq9"), "{e}");
            assert_eq!(target(url), "<database url>");
        }
        // An unescaped `@` is read like the driver reads it: everything before the last `@`.
        assert_eq!(redact_url("postgres://app:p@ss@db/x"), "postgres://app@db/x");
        assert_eq!(target("postgres://app:p@ss@db/x"), "db:5432/x as app");
    }

    #[test]
    fn a_bad_sslmode_is_named_with_its_values() {
        for conn in ["postgres://app@db/x?sslmode=requir", "host=db user=app sslmode=requir"] {
            let e = parse_target(conn).unwrap_err().to_string();
            assert!(e.contains("verify-full") && !e.contains("percent-encode"), "{conn}: {e}");
        }
    }

    #[test]
    fn unparsable_is_opaque() {
        // A libpq key=value string shows its target, never its password.
        let shown = redact_url("host=db password=zq9");
        assert!(shown.starts_with("db:5432/") && !shown.contains("zq9"), "{shown}");
        assert_eq!(redact_url(""), "<database url>");
    }

    #[test]
    fn session_options() {
        let opts = connect_options("postgres://app@db/x", "t").unwrap();
        let sent = opts.get_options().unwrap();
        for want in [
            "standard_conforming_strings=on",
            "tcp_keepalives_idle=30",
            "tcp_keepalives_interval=10",
            "tcp_keepalives_count=3",
            "IntervalStyle=iso_8601",
        ] {
            assert!(sent.contains(want), "{want} missing from {sent}");
        }
        assert!(!sent.contains("idle_in_transaction_session_timeout"), "{sent}");
        assert_eq!(opts.get_application_name(), Some("t"));
    }

    #[tokio::test]
    async fn pool_is_lazy_and_connection_errors_are_clear() {
        // Nothing listens on port 1 of loopback: an eager pool would fail here.
        let url = "postgres://app:s3cret@127.0.0.1:1/x";
        let lazy = pool(url, "t", 2).await.expect("a lazy pool does not connect");
        assert_eq!(lazy.size(), 0);
        // A refused connection is reported at once, not after the pool's ACQUIRE_TIMEOUT.
        let started = std::time::Instant::now();
        // As the CLI prints it: the message, then its cause, each once.
        let err = crate::error::report(&anyhow::Error::from(check_connection(&lazy, url).await.unwrap_err()));
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(err, "cannot connect to 127.0.0.1:1/x as app: Connection refused");
        assert!(!err.contains("s3cret"), "{err}");
        assert!(!err.contains("pool timed out"), "the cause, not the pool's timeout: {err}");
        // A malformed URL still fails at once.
        assert!(super::pool("postgres://h:notaport/x", "t", 2).await.is_err());
    }
}
