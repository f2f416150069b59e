//! The daemon's HTTP endpoint (`--metrics-addr`): what Prometheus scrapes, what Kubernetes probes,
//! and `pgbackfill status --json` for people and scripts without database credentials.
//!
//! - `/metrics`: the series of [`crate::metrics`].
//! - `/healthz` (liveness): every long-lived loop made progress recently ([`crate::health`]);
//!   503 naming the wedged loop otherwise. A database outage alone does not fail it: restarting the
//!   daemon would not bring the database back.
//! - `/readyz` (readiness): the database answers and the progress schema is at the version this
//!   build expects; 503 with the reason otherwise.
//! - `/status`: exactly the JSON of `pgbackfill status --json` (both come from
//!   [`crate::status::report`]); 503 with `{"error": …}` when the database does not answer.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Liveness;
use crate::progress::Progress;

/// How long `/readyz` waits for the database before answering "not ready" (probes time out too).
const READY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `/status` waits for the database.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter configured for the metrics contract (histogram buckets).
pub fn prometheus_builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new().set_buckets_for_metric(
        metrics_exporter_prometheus::Matcher::Full(crate::metrics::BATCH_DURATION.to_string()),
        crate::metrics::BATCH_DURATION_BUCKETS,
    )?)
}

/// Install the global metrics recorder. Call once, before any metric is recorded.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = prometheus_builder()?.install_recorder()?;
    crate::metrics::describe();
    Ok(handle)
}

/// The listening address could not be used. Fatal at startup: a daemon without `/healthz` and
/// `/metrics` would look dead to its probes and invisible to its dashboards.
#[derive(Debug, thiserror::Error)]
// The cause is in the message and deliberately not a `source`: `{:#}` would print it twice.
#[error("cannot listen on {addr} (--metrics-addr): {cause}")]
pub struct BindError {
    pub addr: String,
    pub cause: std::io::Error,
}

/// Bind `addr` (`host:port`; host names such as `localhost` are resolved, every address they
/// resolve to is tried).
pub async fn bind(addr: &str) -> Result<TcpListener, BindError> {
    let err = |cause| BindError { addr: addr.to_string(), cause };
    if addr.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "expected HOST:PORT, e.g. 0.0.0.0:8590 or localhost:8590",
        )));
    }
    TcpListener::bind(addr).await.map_err(err)
}

/// What the handlers need.
#[derive(Clone)]
pub struct AppState {
    pub metrics: PrometheusHandle,
    pub liveness: Liveness,
    pub pool: PgPool,
    pub progress: Progress,
}

/// Serve until cancelled.
pub async fn serve(listener: TcpListener, state: AppState, cancel: CancellationToken) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /status");
    }
    let upkeep = state.metrics.clone();
    let upkeep_cancel = cancel.clone();
    tokio::spawn(async move {
        // The exporter does not drain histograms on its own when we serve the endpoint ourselves.
        while !crate::worker::sleep_or_cancel(Duration::from_secs(5), &upkeep_cancel).await {
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}

async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.liveness.check() {
        Ok(summary) => (StatusCode::OK, format!("{summary}\n")).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}\n")).into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    let expected = crate::progress::expected_version();
    let not_ready =
        |reason: String| (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response();
    match with_cause(&s.pool, READY_TIMEOUT, s.progress.schema_version()).await {
        Err(cause) => not_ready(cause),
        Ok(None) => not_ready(format!("no progress schema yet (expected version {expected})")),
        Ok(Some(v)) if v < expected => {
            not_ready(format!("progress schema at version {v}, this build needs {expected} (migrations pending)"))
        }
        Ok(Some(v)) => {
            (StatusCode::OK, format!("ready: database answers, progress schema at version {v}\n")).into_response()
        }
    }
}

/// Run `query` within `limit`; `Err` with why the database cannot be used instead, as the CLI
/// says it (`cannot connect to host:port/db as user: Connection refused`, never the password).
/// Through the pool alone an unreachable database shows only as a timeout, after the pool's
/// acquire timeout: so when the pool has no idle connection, a direct connection attempt races
/// the query and answers at once when it fails; and a query that fails or times out gets the
/// same attempt to name its cause.
async fn with_cause<T, E, F>(pool: &PgPool, limit: Duration, query: F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let cause = || async {
        match tokio::time::timeout(READY_TIMEOUT, crate::db::check_pool(pool)).await {
            Ok(Err(e)) => Some(crate::error::chain(&e)),
            _ => None,
        }
    };
    let probe = async { if pool.num_idle() == 0 { cause().await } else { std::future::pending().await } };
    let answer = tokio::select! {
        answer = tokio::time::timeout(limit, query) => answer,
        Some(cause) = probe => return Err(cause),
    };
    match answer {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(cause().await.unwrap_or_else(|| e.to_string())),
        Err(_) => {
            Err(cause().await.unwrap_or_else(|| format!("the database did not answer within {}s", limit.as_secs())))
        }
    }
}

async fn status(State(s): State<AppState>) -> Response {
    let json = |code, body: String| (code, [(header::CONTENT_TYPE, "application/json")], body + "\n").into_response();
    let error = |message: String| {
        let body = serde_json::json!({ "error": message }).to_string();
        json(StatusCode::SERVICE_UNAVAILABLE, body)
    };
    match with_cause(&s.pool, STATUS_TIMEOUT, crate::status::report(&s.pool, &s.progress, None)).await {
        Err(cause) => error(cause),
        // Serialized from the report itself, as `status --json` does, so the keys come in the same
        // order (a `serde_json::Value` on the way would sort them).
        Ok(report) => match serde_json::to_string_pretty(&report) {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => error(format!("cannot serialize the status: {e}")),
        },
    }
}
