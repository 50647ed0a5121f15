//! `/api/v1/`: JSON answers of the dashboard. Status, progress and executors are the admin
//! service's own answers (the same handlers `weir admin` calls, as JSON with the same field
//! names as `weir admin ... --json`); the timeline is the status board's last hour.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tonic::{Code, Request};
use weir_proto::admin::admin_server::Admin;
use weir_proto::admin::{ListExecutorsRequest, ListQueriesRequest, ProgressRequest};

use super::Shared;
use crate::ops::timeline::{Event, Sample};

type Answer = Result<Response, ApiError>;

/// An error as the API answers it: an HTTP status and `{"error": "..."}`.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let status = match s.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: s.message().to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut response = json_response(self.status, body.to_string());
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"weir\""),
            );
        }
        response
    }
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: rejection.body_text(),
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

fn json<T: Serialize>(value: &T) -> Answer {
    let body = serde_json::to_string(value).map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("encoding the answer: {e}"),
    })?;
    Ok(json_response(StatusCode::OK, body))
}

/// A caller let in: it carried the token when the driver has one (the dashboard's reads
/// always need it), or named the driver by address when it has none.
struct Caller<'a> {
    authorization: Option<&'a str>,
}

fn allow<'a>(shared: &Shared, headers: &'a HeaderMap) -> Result<Caller<'a>, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    shared.admin.token.check_header(authorization)?;
    if !shared.admin.token.is_set() {
        check_host(headers)?;
    }
    Ok(Caller { authorization })
}

impl Caller<'_> {
    /// The admin call for this request, carrying the token on to the service's own checks.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = self.authorization.and_then(|v| v.parse().ok()) {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

/// Without a token, a call must name the driver by an address or `localhost`: a web page
/// whose own name an attacker points at 127.0.0.1 (DNS rebinding) sends its own name, and gets
/// nothing.
fn check_host(headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = match host.rsplit_once(':') {
        // `[::1]:7420`, `127.0.0.1:7420`, `localhost:7420`; a bare IPv6 address has colons too.
        Some((name, port)) if port.parse::<u16>().is_ok() && !name.ends_with(':') => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name == "localhost" || name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::FORBIDDEN,
        message: format!(
            "this driver has no admin token, so its dashboard answers only to an address or \
             localhost, not to `{host}`; give the driver an admin token to serve it by name"
        ),
    })
}

/// Whether the other calls need the admin token: the page asks for it before calling them,
/// rather than after a refusal. Open: it tells only that a token is set.
pub async fn access(State(shared): State<Arc<Shared>>) -> Answer {
    json(&serde_json::json!({ "tokenRequired": shared.admin.token.is_set() }))
}

/// The query's state (`weir admin status --json`, one query).
pub async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    let request = allow(&shared, &headers)?.request(ListQueriesRequest {});
    let mut answer = shared.admin.list_queries(request).await?.into_inner();
    match answer.queries.pop() {
        Some(query) => json(&query),
        None => Err(tonic::Status::not_found("this driver runs no query").into()),
    }
}

/// The last committed epoch (`weir admin progress --json`); 404 before the first.
pub async fn progress(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    let request = allow(&shared, &headers)?.request(ProgressRequest::default());
    json(&shared.admin.get_progress(request).await?.into_inner())
}

#[derive(Deserialize)]
pub struct Limit {
    /// The newest N epochs (0 or none: every epoch the driver keeps, at most 100).
    limit: Option<u32>,
}

/// The last epochs, oldest first (`weir admin recent-progress --json`).
pub async fn recent_progress(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    limit: Result<Query<Limit>, QueryRejection>,
) -> Answer {
    let caller = allow(&shared, &headers)?;
    let Query(limit) = limit.map_err(bad_query)?;
    let request = caller.request(ProgressRequest {
        limit: limit.limit.unwrap_or(0),
        ..Default::default()
    });
    json(&shared.admin.recent_progress(request).await?.into_inner())
}

/// The executors (`weir admin executors --json`).
pub async fn executors(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    let request = allow(&shared, &headers)?.request(ListExecutorsRequest {});
    json(&shared.admin.list_executors(request).await?.into_inner())
}

#[derive(Deserialize)]
pub struct After {
    /// Only the samples of epochs after this one (the page asks for what is new).
    after: Option<u64>,
}

#[derive(Serialize)]
struct Timeline<'a> {
    samples: Vec<&'a Sample>,
    events: Vec<Event>,
}

/// The last hour: a sample per committed epoch, and the events to mark on the charts.
pub async fn timeline(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    after: Result<Query<After>, QueryRejection>,
) -> Answer {
    allow(&shared, &headers)?;
    let Query(after) = after.map_err(bad_query)?;
    let timeline = &shared.admin.status.timeline;
    let samples = timeline.samples_after(after.after);
    json(&Timeline {
        samples: samples.iter().map(|s| s.as_ref()).collect(),
        events: timeline.events(),
    })
}

/// The job's tables and checkpoint.
pub async fn job(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    allow(&shared, &headers)?;
    json(&shared.facts)
}

pub async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such page or API call (the API is under /api/v1/)".into(),
    }
}
