//! A `/metrics` endpoint for processes that have no console: `portshift worker` and
//! `portshift scheduler` with `--metrics-addr`. Plain Prometheus text rendered by the
//! caller (the same hand-written text format the console's `/metrics` uses), served by
//! axum on an address the operator chooses; nothing is served without one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use tokio::sync::watch;

/// Renders the process's metrics as Prometheus text.
pub type Render = Arc<dyn Fn() -> futures::future::BoxFuture<'static, String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error(
    "could not listen for /metrics on {addr}: {source}. Choose another address with --metrics-addr"
)]
pub struct MetricsError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Serves `GET /metrics` on `addr` until `stop` turns true; returns the bound address
/// (port 0 picks a free one) and the server's task.
pub async fn serve(
    addr: SocketAddr,
    render: Render,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError { addr, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    render().await,
                )
                    .into_response()
            }
        }),
    );
    let task = tokio::spawn(async move {
        let stopped = async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::warn!(error = %e, "the /metrics server stopped");
        }
    });
    Ok((bound, task))
}
