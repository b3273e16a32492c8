//! The demo chat at `/demo/`: not served without `--demo` (a public edge serves no pages it
//! does not need), served with it — the page, its script and style, and the JS client — each
//! with its content type.

mod support;

use ringcast_testkit::http_get;
use support::TestGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GET `path` and return the status line and headers, lower-cased, and the body.
async fn get_with_head(gw: &TestGateway, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("answer within 5 s")
        .expect("read");
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    (head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn the_demo_is_404_without_the_flag() {
    let gw = TestGateway::start(&[]).await;
    for path in [
        "/demo/",
        "/demo",
        "/demo/chat.js",
        "/demo/ringcast/index.js",
    ] {
        let (status, body) = http_get(gw.addr, path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn with_the_flag_the_demo_is_served_with_content_types() {
    let gw = TestGateway::start(&["--demo"]).await;
    let (head, body) = get_with_head(&gw, "/demo/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        body.contains("<script type=\"module\" src=\"chat.js\">"),
        "{body}"
    );
    for (path, ty) in [
        ("/demo/chat.js", "text/javascript"),
        ("/demo/chat.css", "text/css"),
        ("/demo/ringcast/index.js", "text/javascript"),
        ("/demo/ringcast/client.js", "text/javascript"),
        ("/demo/ringcast/backoff.js", "text/javascript"),
        ("/demo/ringcast/emitter.js", "text/javascript"),
    ] {
        let (head, body) = get_with_head(&gw, path).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            head.contains(&format!("content-type: {ty}")),
            "{path}: {head}"
        );
        assert!(!body.is_empty(), "{path}");
    }
    let (head, _) = get_with_head(&gw, "/demo").await;
    assert!(head.starts_with("http/1.1 308"), "{head}");
    assert!(head.contains("location: /demo/"), "{head}");
    for path in ["/demo/nope.html", "/demo/../Cargo.toml", "/demos"] {
        assert_eq!(http_get(gw.addr, path).await.0, 404, "{path}");
    }
    gw.stop().await;
}
