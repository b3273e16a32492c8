//! `rediss://` with a username and password: a node talks to a TLS-only Redis port through
//! rustls, trusting a CA made for the test (given via `SSL_CERT_FILE`, read by the native
//! certificate loader; this test binary has no other tests, so the variable affects nothing else).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ringcast_testkit::{free_port, Client, RedisServer, TestNode};
use serde_json::json;
use support::{config, join, wait_healthy};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1, in a fresh directory.
fn make_certs() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringcast-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("cert dir");
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write ext");
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=ringcast test CA",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    dir
}

#[tokio::test]
async fn rediss_with_username_and_password_carries_traffic_and_bad_credentials_stay_unhealthy() {
    let certs = make_certs();
    let path = |f: &str| certs.join(f).to_string_lossy().into_owned();
    let tls_port = free_port();
    let (port, cert, key, ca) = (
        tls_port.to_string(),
        path("server.crt"),
        path("server.key"),
        path("ca.crt"),
    );
    let redis = RedisServer::start_with_args(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--user",
        "ringcast",
        "on",
        ">s3cret",
        "~*",
        "&*",
        "+@all",
    ]);
    std::env::set_var("SSL_CERT_FILE", &ca);

    let url = format!("rediss://ringcast:s3cret@127.0.0.1:{tls_port}");
    let n1 = TestNode::start(config("t1", &url)).await;
    let n2 = TestNode::start(config("t2", &url)).await;
    wait_healthy(&n1, Duration::from_secs(5)).await;
    wait_healthy(&n2, Duration::from_secs(5)).await;
    let (mut a, _) = Client::connect_welcomed(&n1.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&n2.ws_url("b")).await;
    join(&mut a, "a", "r").await;
    join(&mut b, "b", "r").await;
    a.send_json(json!({"type":"room_message","room":"r","content":"over tls"}))
        .await;
    loop {
        let v = b.recv_event("chat").await;
        if v["content"] == "over tls" {
            break;
        }
    }
    let users = redis.cli(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    assert!(
        users
            .lines()
            .filter(|l| l.contains("user=ringcast"))
            .count()
            >= 4,
        "two connections per node, authenticated as ringcast: {users}"
    );

    // Wrong password: the node runs but never becomes healthy.
    let bad = TestNode::start(config(
        "bad",
        &format!("rediss://ringcast:wrong@127.0.0.1:{tls_port}"),
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(bad.get("/healthz").await.0, 503);
    // Plain redis:// against the TLS port does not pass for healthy either.
    let plain = TestNode::start(config(
        "plain",
        &format!("redis://ringcast:s3cret@127.0.0.1:{tls_port}"),
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(plain.get("/healthz").await.0, 503);
    drop((bad, plain, n1, n2, redis));
    let _ = std::fs::remove_dir_all(&certs);
}
