//! The web dashboard (docs/operations.md, Dashboard): a page and its scripts embedded in the
//! binary, and a small versioned JSON API under `/api/v1/` that answers from the admin service
//! itself, so the page shows what `weir admin` shows. Every API call carries the admin token when
//! the driver has one (reads included); the page and its scripts hold no data and need none.

mod api;
mod assets;

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_common::job::JobSpec;

use crate::admin::AdminService;

/// What the dashboard shows of the job that the admin API does not: where its tables are and
/// how its checkpoint is kept.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobFacts {
    pub name: String,
    pub source: String,
    pub checkpoint_location: String,
    /// Epochs of plans, decisions and state snapshots the checkpoint keeps.
    pub checkpoint_retention: u32,
    pub key_groups: u32,
    pub tables: Vec<TableLink>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableLink {
    /// `output` (of the query named), `dead letter` or `late rows`.
    pub role: String,
    pub url: String,
}

impl JobFacts {
    pub fn of(job: &JobSpec) -> Self {
        let mut tables: Vec<TableLink> = job
            .queries
            .iter()
            .map(|q| TableLink {
                role: match job.queries.len() {
                    1 => "output".into(),
                    _ => format!("output of {}", q.name),
                },
                url: q.output.url.clone(),
            })
            .collect();
        let mut add = |role: &str, url: Option<&String>| {
            if let Some(url) = url {
                tables.push(TableLink {
                    role: role.into(),
                    url: url.clone(),
                });
            }
        };
        add("dead letter", job.dead_letter.as_ref().map(|d| &d.url));
        add("late rows", job.late_rows.as_ref().map(|l| &l.url));
        Self {
            name: job.name.clone(),
            source: job.source.name().to_string(),
            checkpoint_location: job.checkpoint_url.clone(),
            checkpoint_retention: job.checkpoint_retention,
            key_groups: job.key_groups,
            tables,
        }
    }
}

struct Shared {
    admin: Arc<AdminService>,
    facts: JobFacts,
}

/// The running dashboard; dropping it stops the server.
pub struct Dashboard {
    task: JoinHandle<()>,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dashboard {
    /// Serves on `listener` until `closing` turns true or this is dropped.
    pub fn serve(
        listener: TcpListener,
        admin: Arc<AdminService>,
        facts: JobFacts,
        mut closing: watch::Receiver<bool>,
    ) -> Self {
        let app = router(Arc::new(Shared { admin, facts }));
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = closing.wait_for(|c| *c).await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!("the dashboard stopped serving: {e}");
            }
        });
        Self { task }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{name}", get(assets::file))
        .route("/api/v1/access", get(api::access))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/progress", get(api::progress))
        .route("/api/v1/progress/recent", get(api::recent_progress))
        .route("/api/v1/executors", get(api::executors))
        .route("/api/v1/timeline", get(api::timeline))
        .route("/api/v1/job", get(api::job))
        .fallback(api::not_found)
        .layer(axum::middleware::map_response(protect))
        .with_state(shared)
}

/// Headers every answer carries: the page runs only its own scripts, is never framed, and
/// nothing it shows is cached or leaks through a referrer.
async fn protect(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; object-src 'none'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests;
