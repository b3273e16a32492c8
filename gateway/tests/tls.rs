//! TLS at the gateway, end to end with the real binary and certificates made here: `wss://`
//! with a python `websockets` client and a Rust one, HTTP over TLS, the certificate reloaded on
//! SIGHUP and on a file change without dropping open connections, bad pairs refused at start
//! and at reload, the handshake bounded by `--handshake-timeout-secs`, and the per-address
//! limit applied before any TLS work.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::tls::{
    connector, python_client, run_gateway, served_serial, tls_connect, write_whole, Scratch,
    TestCa, TlsGateway,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const OK: &str = r#"ringcast_gateway_tls_reloads_total{result="ok"}"#;
const REFUSED: &str = r#"ringcast_gateway_tls_reloads_total{result="error"}"#;
const EXPIRY: &str = "ringcast_gateway_tls_cert_expiry_timestamp_seconds";

async fn python(addr: std::net::SocketAddr, ca: &std::path::Path, id: &str) -> serde_json::Value {
    let ca = ca.to_owned();
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || python_client(addr, &ca, &id))
        .await
        .expect("python client task")
}

/// A Rust wss:// client: the serial it was served and the open WebSocket, past its welcome.
async fn rust_client(
    tls: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    id: &str,
) -> (
    String,
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
) {
    let stream = tls_connect(tls, addr).await.expect("TLS connect");
    let serial = served_serial(&stream);
    let url = format!("wss://{addr}/ws?client_id={id}");
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket upgrade over TLS");
    assert_eq!(resp.status(), 101);
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["event"], "welcome", "{welcome}");
    (serial, ws)
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open")
            .expect("a frame");
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).expect("JSON frame");
        }
    }
}

/// The open connection still answers: ping → pong.
async fn still_up<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("send ping");
    loop {
        if next_json(ws).await["event"] == "pong" {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_a_sighup_reload_that_keeps_open_connections() {
    let dir = Scratch::new("tls-reload");
    let ca = TestCa::new();
    let ca_file = dir.path("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let first = ca.issue("gateway-one", 0x1001, false);
    first.write(&cert, &key);
    // SIGHUP only, so the counts below are exact.
    let gw = TlsGateway::start(
        &cert,
        &key,
        dir.path("gateway.log"),
        &["--tls-reload-secs", "0", "--api-key", "plain-key"],
    );
    let tls = connector(&ca.der());

    // Every label of the handshake counter is there from the start.
    let metrics = gw.metrics().await;
    for result in ["ok", "failed", "timeout", "closed"] {
        let series = format!(r#"ringcast_gateway_tls_handshakes_total{{result="{result}"}}"#);
        assert!(
            support::tls::sample(&metrics, &series).is_some(),
            "{series} missing:\n{metrics}"
        );
    }
    assert_eq!(gw.sample(EXPIRY).await, 2_366_841_600.0, "2045-01-01");
    // The plain listener serves probes and scrapes, never an upgrade.
    let upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (status, body) = ringcast_testkit::http_raw(gw.plain, upgrade).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no_upgrades_here"), "{body}");
    // Nor the server API: its key would cross the network in cleartext.
    let call = "POST /api/info HTTP/1.1\r\nHost: x\r\nAuthorization: apikey plain-key\r\n\
                Content-Length: 2\r\nConnection: close\r\n\r\n{}";
    let (status, body) = ringcast_testkit::http_raw(gw.plain, call).await;
    assert_eq!(status, 404, "the API on the plain listener: {body}");

    // python websockets over wss://, and HTTP over the same TLS listener.
    let seen = python(gw.addr, &ca_file, "py-one").await;
    assert_eq!(seen["serial"], first.serial, "{seen}");
    assert_eq!(seen["cn"], "gateway-one");
    assert_eq!(seen["alpn"], "http/1.1");
    assert_eq!(seen["healthz"], 200);
    let (status, body) = support::tls::https_get(&tls, gw.addr, "/nodes").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ring_size"), "{body}");

    // A connection that stays open across the reloads.
    let (serial, mut old) = rust_client(&tls, gw.addr, "stays").await;
    assert_eq!(serial, first.serial);

    // New pair + SIGHUP: new handshakes get it, the open connection carries on.
    let second = ca.issue("gateway-two", 0x2002, false);
    second.write(&cert, &key);
    gw.signal("HUP");
    gw.wait_sample(OK, 1.0).await;
    let seen = python(gw.addr, &ca_file, "py-two").await;
    assert_eq!(seen["serial"], second.serial, "{seen}");
    assert_eq!(seen["cn"], "gateway-two");
    still_up(&mut old).await;
    assert!(gw.log_text().contains("TLS certificate reloaded"));

    // A key that is not the certificate's: refused with a log line, the second pair stays.
    let third = ca.issue("gateway-three", 0x3003, false);
    write_whole(&cert, &third.cert_pem);
    gw.signal("HUP");
    gw.wait_sample(REFUSED, 1.0).await;
    let log = gw.log_text();
    assert!(
        log.contains("TLS certificate reload refused") && log.contains("is not the private key"),
        "{log}"
    );
    let (serial, _ws) = rust_client(&tls, gw.addr, "after-mismatch").await;
    assert_eq!(serial, second.serial, "the previous pair stays");

    // An expired certificate: refused the same way.
    let expired = ca.issue("gateway-expired", 0x4004, true);
    expired.write(&cert, &key);
    gw.signal("HUP");
    gw.wait_sample(REFUSED, 2.0).await;
    assert!(gw.log_text().contains("expired at"), "{}", gw.log_text());
    let (serial, _ws) = rust_client(&tls, gw.addr, "after-expired").await;
    assert_eq!(serial, second.serial, "the previous pair stays");
    assert_eq!(gw.sample(OK).await, 1.0);
    still_up(&mut old).await;

    let handshakes = r#"ringcast_gateway_tls_handshakes_total{result="ok"}"#;
    assert!(gw.sample(handshakes).await >= 6.0);
    let status = gw.stop();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_picked_up_and_a_silent_client_is_dropped_at_the_handshake_timeout() {
    let dir = Scratch::new("tls-poll");
    let ca = TestCa::new();
    let ca_file = dir.path("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let first = ca.issue("poll-one", 0x51, false);
    first.write(&cert, &key);
    let gw = TlsGateway::start(
        &cert,
        &key,
        dir.path("gateway.log"),
        &["--tls-reload-secs", "1", "--handshake-timeout-secs", "2"],
    );
    let tls = connector(&ca.der());

    // A client that opens TCP and never speaks TLS...
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let opened = tokio::time::Instant::now();
    // ...costs others nothing meanwhile.
    let (serial, mut ws) = rust_client(&tls, gw.addr, "busy").await;
    assert_eq!(serial, first.serial);
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the silent connection is closed by the gateway");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "not before the timeout"
    );
    gw.wait_sample(
        r#"ringcast_gateway_tls_handshakes_total{result="timeout"}"#,
        1.0,
    )
    .await;

    // No signal: the files change, and within the poll new handshakes get the new pair.
    let second = ca.issue("poll-two", 0x52, false);
    second.write(&cert, &key);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (serial, _ws) = rust_client(&tls, gw.addr, "poller").await;
        if serial == second.serial {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed files were not picked up; log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    still_up(&mut ws).await;
    let seen = python(gw.addr, &ca_file, "py-poll").await;
    assert_eq!(seen["serial"], second.serial, "{seen}");
    let status = gw.stop();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_applies_before_the_handshake() {
    let dir = Scratch::new("tls-limit");
    let ca = TestCa::new();
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    ca.issue("limit", 0x61, false).write(&cert, &key);
    let gw = TlsGateway::start(
        &cert,
        &key,
        dir.path("gateway.log"),
        &["--max-connections-per-ip", "1"],
    );
    let tls = connector(&ca.der());
    // One connection holds the address's only slot without speaking TLS.
    let _holder = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tls_connect(&tls, gw.addr).await;
    assert!(
        refused.is_err(),
        "a second connection from the address is closed"
    );
    let metrics = gw.metrics().await;
    let edge = r#"ringcast_gateway_edge_refusals_total{reason="too_many_connections_from_ip"}"#;
    assert_eq!(support::tls::sample(&metrics, edge), Some(1.0), "{metrics}");
    // It was closed before any TLS work: no handshake was counted at all.
    let total = ringcast_testkit::metric_sum(&metrics, "ringcast_gateway_tls_handshakes_total");
    assert_eq!(total, 0.0, "{metrics}");
    drop(gw);
}

#[test]
fn a_bad_pair_stops_the_start_and_fails_check_config() {
    let dir = Scratch::new("tls-start");
    let ca = TestCa::new();
    let good = ca.issue("start", 0x71, false);
    let other = ca.issue("other", 0x72, false);
    let expired = ca.issue("old", 0x73, true);
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let run = |check: bool| {
        let mut args = vec![
            os("--listen"),
            os("127.0.0.1:0"),
            os("--tls-cert"),
            cert.as_os_str(),
            os("--tls-key"),
            key.as_os_str(),
        ];
        if check {
            args.push(os("--check-config"));
        }
        run_gateway(&args)
    };

    good.write(&cert, &key);
    let (code, err) = run(true);
    assert_eq!(code, Some(0), "{err}");

    write_whole(&key, &other.key_pem);
    for check in [true, false] {
        let (code, err) = run(check);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("is not the private key of the certificate in"),
            "{err}"
        );
        assert!(err.contains("tls.key"), "names the file: {err}");
    }

    expired.write(&cert, &key);
    let (code, err) = run(false);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("expired at") && err.contains("serial 73"),
        "{err}"
    );

    std::fs::write(&cert, "not a certificate").unwrap();
    let (code, err) = run(true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no PEM CERTIFICATE"), "{err}");

    std::fs::remove_file(&key).unwrap();
    good.write(&cert, &dir.path("elsewhere.key"));
    let (code, err) = run(true);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tls.key") && err.contains("No such file"),
        "{err}"
    );

    // Half a pair is a usage error.
    let (code, err) = run_gateway(&[os("--tls-cert"), cert.as_os_str(), os("--check-config")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tls-key"), "{err}");
}

/// base64(SHA-256(`spki`)), the form Chromium's `--ignore-certificate-errors-spki-list`
/// takes (computed by python's hashlib, independent of our code).
fn spki_hash(spki: &[u8], dir: &Scratch) -> String {
    let file = dir.path("spki.der");
    std::fs::write(&file, spki).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,sys; print(base64.b64encode(hashlib.sha256(open(sys.argv[1],'rb').read()).digest()).decode())",
        ])
        .arg(&file)
        .output()
        .expect("python3");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_opens_wss_with_the_test_certificate_trusted_by_a_flag() {
    let dir = Scratch::new("tls-browser");
    let ca = TestCa::new();
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let pair = ca.issue("browser", 0x81, false);
    pair.write(&cert, &key);
    let gw = TlsGateway::start(&cert, &key, dir.path("gateway.log"), &[]);
    let tls = connector(&ca.der());
    // Someone for the browser to talk to: it gets the browser's chat.
    let (_, mut listener) = rust_client(&tls, gw.addr, "listener").await;

    let page = dir.path("page.html");
    std::fs::write(
        &page,
        format!(
            r#"<html><body><script>
const ws = new WebSocket("wss://{}/ws?client_id=chromium");
ws.onopen = () => ws.send(JSON.stringify({{type: "chat", content: "hello from chromium"}}));
</script></body></html>"#,
            gw.addr
        ),
    )
    .unwrap();
    // Trusted by the hash of the certificate's key, the one exception the flag makes. Run by
    // browser.py, which reaps every process the browser starts once its stdin closes.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser.py");
    let mut browser = std::process::Command::new("python3")
        .arg(script)
        .arg(spki_hash(&pair.spki, &dir))
        .arg(dir.path("profile"))
        .arg(format!("file://{}", page.display()))
        .arg("40")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start browser.py (scripts/test.sh installs chromium)");
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let msg = next_json(&mut listener).await;
            if msg["event"] == "chat" {
                return msg;
            }
        }
    })
    .await;
    drop(browser.stdin.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Ok(Some(status)) = browser.try_wait() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = browser.kill();
            let _ = browser.wait();
            panic!("browser.py did not end the browser within 40 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "browser.py: {status:?}");
    let got = got.expect("the browser's message within 30 s");
    assert_eq!(got["from"], "chromium", "{got}");
    assert_eq!(got["content"], "hello from chromium", "{got}");
    drop(gw);
}
