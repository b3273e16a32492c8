//! The demo chat page (`examples/chat/` and the JS client of `clients/js/`), served at
//! `/demo/` only when the gateway runs with `--demo`.
//!
//! The files are compiled into the binary, so `cargo run -p ringcast-gateway -- --demo` and a
//! browser are a one-minute tour with nothing else to install. Off by default: a public edge
//! should serve no pages it does not need.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use ringcast_net::http1::response::Body;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file of the demo: path under `/demo/`, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("", HTML, include_bytes!("../../examples/chat/index.html")),
    (
        "index.html",
        HTML,
        include_bytes!("../../examples/chat/index.html"),
    ),
    ("chat.js", JS, include_bytes!("../../examples/chat/chat.js")),
    (
        "chat.css",
        CSS,
        include_bytes!("../../examples/chat/chat.css"),
    ),
    (
        "ringcast/index.js",
        JS,
        include_bytes!("../../clients/js/src/index.js"),
    ),
    (
        "ringcast/client.js",
        JS,
        include_bytes!("../../clients/js/src/client.js"),
    ),
    (
        "ringcast/backoff.js",
        JS,
        include_bytes!("../../clients/js/src/backoff.js"),
    ),
    (
        "ringcast/emitter.js",
        JS,
        include_bytes!("../../clients/js/src/emitter.js"),
    ),
];

/// Whether `path` belongs to the demo (`/demo` or below).
pub fn is_demo(path: &str) -> bool {
    path == "/demo" || path.starts_with("/demo/")
}

/// The answer to `path` (one [`is_demo`] accepted): the file with its content type, a redirect
/// from `/demo` to `/demo/`, or `None` for a path the demo does not have.
pub fn serve(path: &str) -> Option<Response<Body>> {
    if path == "/demo" {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
        resp.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/demo/"));
        return Some(resp);
    }
    let name = path.strip_prefix("/demo/")?;
    let (_, content_type, bytes) = FILES.iter().find(|(n, _, _)| *n == name)?;
    let mut resp = Response::new(Full::new(Bytes::from_static(bytes)));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_its_type_and_unknown_paths_have_none() {
        let page = serve("/demo/").expect("index");
        assert_eq!(page.headers()[header::CONTENT_TYPE], HTML);
        assert_eq!(
            serve("/demo/chat.js").expect("js").headers()[header::CONTENT_TYPE],
            JS
        );
        assert_eq!(
            serve("/demo/chat.css").expect("css").headers()[header::CONTENT_TYPE],
            CSS
        );
        assert_eq!(
            serve("/demo").expect("redirect").status(),
            StatusCode::PERMANENT_REDIRECT
        );
        assert!(serve("/demo/../Cargo.toml").is_none());
        assert!(serve("/demo/nope.js").is_none());
        assert!(is_demo("/demo/x") && is_demo("/demo") && !is_demo("/demos"));
    }
}
