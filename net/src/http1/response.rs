//! The answers the node (and the gateway) build themselves: the body type of every response,
//! JSON answers and errors (`{"error": code, "message": …}`), and the Prometheus exposition.
//!
//! How an answer is written on a connection without hyper is `head.rs`'s business; hyper
//! writes the rest.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// The body of every response the node (and the gateway) writes itself.
pub type Body = Full<Bytes>;

/// A JSON response.
pub fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `{"error": code, "message": message}` with `status`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "error": code, "message": message }),
    )
}

/// A Prometheus text exposition.
pub fn metrics_text(text: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
