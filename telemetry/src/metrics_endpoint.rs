//! Serves a Prometheus registry over HTTP: `GET /metrics` in the text exposition format, and
//! the probes' paths: `GET /livez` (and its older name `/healthz`) and `GET /readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::task::JoinHandle;

use crate::health::Readiness;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("binding the metrics endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs just before each scrape, to bring gauges that follow the clock up to date.
pub type BeforeScrape = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct Scrape {
    registry: Registry,
    before: Option<BeforeScrape>,
    readiness: Readiness,
}

/// A running endpoint; dropping it stops the server.
pub struct MetricsEndpoint {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Binds `listen` (port 0 picks one) and serves `registry` and `readiness` until dropped.
    pub async fn serve(
        listen: SocketAddr,
        registry: Registry,
        before: Option<BeforeScrape>,
        readiness: Readiness,
    ) -> Result<Self, EndpointError> {
        let bind_error = |source| EndpointError::Bind {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/livez", get(|| async { "ok\n" }))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state(Scrape {
                registry,
                before,
                readiness,
            });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("metrics endpoint stopped: {e}");
            }
        });
        Ok(Self { addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ready(State(scrape): State<Scrape>) -> (StatusCode, String) {
    match scrape.readiness.state() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics(State(scrape): State<Scrape>) -> impl IntoResponse {
    if let Some(before) = &scrape.before {
        before();
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&scrape.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            format!("encoding metrics: {e}\n").into_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_registry_in_the_text_format() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("things_total", "Things seen.").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        let gauge = prometheus::IntGauge::new("clock_gauge", "Set before each scrape.").unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        counter.inc_by(3);
        let before: BeforeScrape = Arc::new(move || gauge.set(42));
        let endpoint = MetricsEndpoint::serve(
            "127.0.0.1:0".parse().unwrap(),
            registry,
            Some(before),
            Readiness::new("starting"),
        )
        .await
        .unwrap();
        let url = format!("http://{}/metrics", endpoint.addr());
        let response = reqwest::get(&url).await.unwrap();
        assert!(response.status().is_success());
        let text = response.text().await.unwrap();
        assert!(text.contains("# TYPE things_total counter"), "{text}");
        assert!(text.contains("things_total 3"), "{text}");
        assert!(text.contains("clock_gauge 42"), "{text}");
        drop(endpoint);
    }

    /// The probes' paths: live while serving, ready or not as the process says.
    #[tokio::test]
    async fn probes_answer_liveness_and_readiness() {
        let readiness = Readiness::new("registering with the driver");
        let endpoint = MetricsEndpoint::serve(
            "127.0.0.1:0".parse().unwrap(),
            Registry::new(),
            None,
            readiness.clone(),
        )
        .await
        .unwrap();
        let get = |path: &str| {
            let url = format!("http://{}{path}", endpoint.addr());
            async move {
                let r = reqwest::get(&url).await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        assert_eq!(get("/livez").await, (200, "ok\n".into()));
        assert_eq!(get("/healthz").await, (200, "ok\n".into()));
        assert_eq!(
            get("/readyz").await,
            (503, "not ready: registering with the driver\n".into())
        );
        readiness.set_ready();
        assert_eq!(get("/readyz").await, (200, "ready\n".into()));
        readiness.set_not_ready("restoring state");
        assert_eq!(
            get("/readyz").await,
            (503, "not ready: restoring state\n".into())
        );
    }
}
