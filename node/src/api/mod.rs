//! The server API on the node: `POST /api/<method>` with a JSON body, for the application's
//! backend (usually through a gateway, which forwards calls here with the caller's key).
//!
//! Answers are `200 {"result":{...}}` or an error status with `{"error":{"code","message"}}`.
//! `batch` runs its commands in order; publishes are queued one after another and their
//! outcomes awaited after, so a batch of publishes costs one bus round trip per publisher batch,
//! not per command, and keeps their order.

pub(crate) mod methods;

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::state::Shared;
use methods::Pending;
use ringcast_net::api_auth::{self, answer};
use ringcast_net::http1::response::Body;

/// Most commands in one `batch`.
pub const MAX_BATCH: usize = 10_000;

/// Why an API call failed: the status, a stable code and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status (inside a batch, only the code and message are given).
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// A 400 `bad_request` naming what was wrong.
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    fn json(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

/// Whether `path` is the API's.
pub fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

fn error(e: &ApiError) -> Response<Body> {
    answer(e.status, &e.json())
}

/// Serves one API request.
pub async fn serve(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let refused = api_auth::refuse(
        &shared.config.api.api_keys,
        req.method(),
        req.headers().get(header::AUTHORIZATION),
    );
    if let Some(refused) = refused {
        return refused;
    }
    let method = req
        .uri()
        .path()
        .trim_start_matches("/api")
        .trim_start_matches('/');
    let method = method.to_owned();
    let limit = shared.config.api.api_max_body_bytes as usize;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return api_auth::too_large(limit),
        Err(_) => return error(&ApiError::bad("the body could not be read")),
    };
    let started = Instant::now();
    let (status, reply, label) = if method == "batch" {
        match batch(&shared, &body).await {
            Ok(replies) => (StatusCode::OK, json!({ "replies": replies }), "ok"),
            Err(e) => (e.status, e.json(), e.code),
        }
    } else {
        match one(&shared, &method, &body).await {
            Ok(result) => (StatusCode::OK, json!({ "result": result }), "ok"),
            Err(e) => (e.status, e.json(), e.code),
        }
    };
    let name = if methods::known(&method) || method == "batch" {
        method.as_str()
    } else {
        "unknown"
    };
    let metrics = &shared.metrics;
    metrics.api_calls.with_label_values(&[name, label]).inc();
    metrics
        .api_latency
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    answer(status, &reply)
}

/// One call: `body` is its params object.
async fn one(shared: &Shared, method: &str, body: &[u8]) -> Result<Value, ApiError> {
    // No body at all is no params (`info`, `rooms`), as `{}`.
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let params: &RawValue = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the body must be a JSON object: {e}")))?;
    methods::start(shared, method, params).await?.finish().await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow)]
    commands: Vec<Command<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command<'a> {
    method: String,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

/// `batch`: every command in order, each failing alone.
async fn batch(shared: &Shared, body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let batch: Batch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("batch must be {{\"commands\":[...]}}: {e}")))?;
    if batch.commands.len() > MAX_BATCH {
        return Err(ApiError::bad(format!(
            "commands: at most {MAX_BATCH} per batch"
        )));
    }
    let empty = RawValue::from_string("{}".into()).expect("{} is JSON");
    let mut pending: Vec<Result<Pending, ApiError>> = Vec::with_capacity(batch.commands.len());
    for c in &batch.commands {
        pending.push(if c.method == "batch" {
            Err(ApiError::bad("a batch cannot contain a batch"))
        } else {
            methods::start(shared, &c.method, c.params.unwrap_or(&empty)).await
        });
    }
    let mut replies = Vec::with_capacity(pending.len());
    for p in pending {
        let outcome = match p {
            Ok(p) => p.finish().await,
            Err(e) => Err(e),
        };
        replies.push(match outcome {
            Ok(result) => json!({ "result": result }),
            Err(e) => e.json(),
        });
    }
    Ok(replies)
}
