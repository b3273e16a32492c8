//! The server API's key check, the same on gateways and nodes: `Authorization: apikey KEY`
//! against every configured key (rotation), in time that depends on the lengths only, and the
//! error body both answer with.

use bytes::Bytes;
use clap::Args;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The server API's flags, shared by `ringcast-node` and `ringcast-gateway`.
#[derive(Debug, Clone, Default, Args)]
pub struct ApiArgs {
    /// A key the server API accepts (`Authorization: apikey KEY`); repeat it to rotate keys.
    /// Without any, `/api/*` answers 404: the API is off, never open. Gateways forward calls
    /// with the caller's key, so give nodes and gateways the same keys (the embedded node gets
    /// the gateway's).
    #[arg(
        long = "api-key",
        env = "RINGCAST_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Largest server API request body, in bytes (413 past it).
    #[arg(long, env = "RINGCAST_API_MAX_BODY_BYTES", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u64).range(1024..=(64 << 20)))]
    pub api_max_body_bytes: u64,
}

/// Compares two keys in time that depends on their lengths only.
pub fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `auth` (an `Authorization` header) carries one of `keys`; every key is compared.
pub fn authorized(keys: &[String], auth: Option<&HeaderValue>) -> bool {
    let Some(given) = auth.and_then(|v| v.as_bytes().strip_prefix(b"apikey ")) else {
        return false;
    };
    keys.iter()
        .fold(false, |ok, key| same_key(key.as_bytes(), given) | ok)
}

/// A JSON answer of the API.
pub fn answer(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `{"error":{"code":CODE,"message":TEXT}}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    answer(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

/// The answers every API front gives before a method runs: off (no key), unauthorized, not
/// POST. `None`: go on.
pub fn refuse(
    keys: &[String],
    method: &http::Method,
    auth: Option<&HeaderValue>,
) -> Option<Response<Full<Bytes>>> {
    if keys.is_empty() {
        return Some(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the server API is off (no --api-key configured)",
        ));
    }
    if !authorized(keys, auth) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: apikey KEY with a configured key",
        ));
    }
    if method != http::Method::POST {
        return Some(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the server API takes POST",
        ));
    }
    None
}

/// The answer to a body over `limit` bytes.
pub fn too_large(limit: usize) -> Response<Full<Bytes>> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &format!("the body is over {limit} bytes (--api-max-body-bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_whole_with_the_scheme() {
        let keys = vec!["old-key".to_owned(), "new-key".to_owned()];
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(authorized(&keys, Some(&h("apikey new-key"))));
        assert!(authorized(&keys, Some(&h("apikey old-key"))));
        for bad in [
            "apikey new-ke",
            "apikey new-key2",
            "Bearer new-key",
            "new-key",
            "apikey ",
        ] {
            assert!(!authorized(&keys, Some(&h(bad))), "{bad}");
        }
        assert!(!authorized(&keys, None));
        assert!(!authorized(&[], Some(&h("apikey x"))));
    }
}
