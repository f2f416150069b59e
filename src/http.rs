//! The HTTP endpoint Prometheus scrapes, plus liveness for Kubernetes probes.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

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

/// Serve `/metrics` and `/healthz` until cancelled.
pub async fn serve(addr: SocketAddr, handle: PrometheusHandle, cancel: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    let upkeep = handle.clone();
    let upkeep_cancel = cancel.clone();
    tokio::spawn(async move {
        // The exporter does not drain histograms on its own when we serve the endpoint ourselves.
        while !crate::worker::sleep_or_cancel(Duration::from_secs(5), &upkeep_cancel).await {
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await?;
    Ok(())
}
