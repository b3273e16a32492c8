//! Runs that cannot be done end with a clear message and exit status 1.

mod support;

use support::{loadtest, node_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn refused_connection() {
    let dead = ringcast_testkit::DeadPort::new();
    let url = format!("ws://{}/ws", dead.addr());
    let run = loadtest(&["--url", &url, "fanout", "--quick"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("connection refused"), "{}", run.stderr);
}

#[tokio::test]
async fn bad_url() {
    for url in ["http://127.0.0.1:9/ws", "nonsense"] {
        let run = loadtest(&["--url", url, "fanout", "--quick"]).await;
        assert_eq!(run.code, 1, "{url}: {}", run.stderr);
        assert!(run.stderr.contains("bad URL"), "{url}: {}", run.stderr);
    }
    // wss:// needs the CA to trust.
    let run = loadtest(&["--url", "wss://127.0.0.1:9/ws", "fanout", "--quick"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("needs --tls-ca"), "{}", run.stderr);
}

#[tokio::test]
async fn plain_http_server_is_not_websocket() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                )
                .await;
        }
    });
    let url = format!("ws://{addr}/ws");
    let run = loadtest(&["--url", &url, "fanout", "--quick"]).await;
    server.abort();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("HTTP 200 instead of switching to WebSocket"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn websocket_server_without_welcome() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(s).await {
                held.push(ws); // upgrades, then says nothing
            }
        }
    });
    let url = format!("ws://{addr}/ws");
    let run = loadtest(&[
        "--url",
        &url,
        "--welcome-timeout-secs",
        "1",
        "fanout",
        "--quick",
    ])
    .await;
    server.abort();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("no `welcome` event"), "{}", run.stderr);
}

#[tokio::test]
async fn without_require_welcome_a_silent_server_fails_at_the_join() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(s).await {
                held.push(ws);
            }
        }
    });
    let url = format!("ws://{addr}/ws");
    let run = loadtest(&[
        "--url",
        &url,
        "--welcome-timeout-secs",
        "1",
        "--require-welcome=false",
        "fanout",
        "--quick",
    ])
    .await;
    server.abort();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("no `user_joined`"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_connections_than_file_descriptors() {
    let (_node, url) = node_with(|_| {}).await;
    let run = loadtest(&["--url", &url, "fanout", "--subscribers", "2000000000"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("loadtest processes"), "{}", run.stderr);
}
