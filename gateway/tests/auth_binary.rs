//! The real binaries with authentication: `ringcast-gateway token` mints tokens the stack
//! accepts, and a gateway process and a node process logging at debug level never write a
//! token, the secret or a message body while clients fail (and succeed) to authenticate.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringcast_protocol::auth::{mint_hs256, AuthArgs, Authenticator};
use ringcast_testkit::{free_port, http_get, spawn_listening, wait_until, Client};
use serde_json::json;
use support::auth::{claims, refused, still_served, token, AUDIENCE, SECRET};
use support::{healthz_ok, NodeProcess};

/// A child process killed (SIGKILL, by PID) and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `ringcast-gateway` command with no inherited `RINGCAST_*` variables.
fn gateway_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast-gateway"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RINGCAST_")) {
        cmd.env_remove(k);
    }
    cmd
}

/// Runs `ringcast-gateway ARGS` with `envs` to completion (at most 10 s); returns the exit
/// code, stdout and stderr.
async fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = gateway_command();
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Killed(cmd.spawn().expect("spawn ringcast-gateway"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`ringcast-gateway {}` did not exit within 10 s",
            args.join(" ")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut s) = child.0.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.0.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status.code(), out, err)
}

fn authenticator() -> Authenticator {
    Authenticator::from_args(&AuthArgs {
        jwt_secret: Some(SECRET.into()),
        jwt_audience: Some(AUDIENCE.into()),
        ..AuthArgs::default()
    })
    .expect("auth args")
    .expect("auth on")
}

#[tokio::test]
async fn the_token_command_prints_a_token_the_configuration_accepts() {
    let env = [
        ("RINGCAST_JWT_SECRET", SECRET),
        ("RINGCAST_JWT_AUDIENCE", AUDIENCE),
    ];
    let (code, out, err) = run_cli(
        &[
            "token",
            "--sub",
            "alice",
            "--rooms",
            "support-*",
            "--ttl",
            "1h",
        ],
        &env,
    )
    .await;
    assert_eq!(code, Some(0), "stderr: {err}");
    let token = out.trim_end_matches('\n');
    assert!(
        !token.contains(char::is_whitespace),
        "only the token: {out:?}"
    );
    assert_eq!(token.split('.').count(), 3, "a JWT: {out:?}");
    let id = authenticator().validate(token).expect("a valid token");
    assert_eq!(id.sub, "alice");
    assert!(id.may_use_room("support-3") && !id.may_use_room("billing"));
    let now = ringcast_protocol::auth::now_secs();
    assert!((now + 3590..=now + 3610).contains(&id.expires_at));

    // The secret may also come as a flag before the subcommand; --chat sets the claim.
    let (code, out, err) = run_cli(
        &[
            "--jwt-secret",
            SECRET,
            "token",
            "--sub",
            "bob",
            "--aud",
            AUDIENCE,
            "--chat",
            "false",
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(!authenticator()
        .validate(out.trim())
        .expect("valid")
        .may_chat());

    // Without a secret: a clear error, nothing on stdout.
    let (code, out, err) = run_cli(&["token", "--sub", "carol"], &[]).await;
    assert_eq!(code, Some(2));
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("RINGCAST_JWT_SECRET"), "{err}");
}

/// Starts a gateway process in front of `node` with authentication from the environment, at
/// debug level, stdout and stderr into `log`.
async fn start_gateway(node: &NodeProcess, log: &Path) -> (Killed, SocketAddr) {
    let (child, port) = spawn_listening("ringcast-gateway", Duration::from_secs(10), |port| {
        let out = std::fs::File::create(log).expect("gateway log file");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = gateway_command();
        cmd.env("RINGCAST_LISTEN", format!("127.0.0.1:{port}"))
            .env("RINGCAST_NODES", node.spec())
            .env("RINGCAST_JWT_SECRET", SECRET)
            .env("RINGCAST_JWT_AUDIENCE", AUDIENCE)
            .env("RINGCAST_JWT_LEEWAY_SECS", "0")
            .env("RINGCAST_HEALTH_INTERVAL_MS", "100")
            .env("RINGCAST_SHUTDOWN_GRACE_SECS", "1")
            .env("RUST_LOG", "debug")
            .stdout(out)
            .stderr(err);
        cmd
    });
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Killed(child);
    wait_until(Duration::from_secs(10), "gateway /healthz", || {
        healthz_ok(addr)
    })
    .await;
    (child, addr)
}

/// The segments of a JWT long enough to be recognisable in a log.
fn fragments(token: &str) -> Vec<&str> {
    token.split('.').filter(|s| s.len() >= 16).collect()
}

#[tokio::test]
async fn debug_logs_and_metrics_never_contain_tokens_secrets_or_bodies() {
    let dir = std::env::temp_dir().join(format!("ringcast-auth-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let (node_log, gateway_log) = (dir.join("node.log"), dir.join("gateway.log"));
    let node = NodeProcess::start_with(
        "logged",
        &[
            "--jwt-secret",
            SECRET,
            "--jwt-audience",
            AUDIENCE,
            "--jwt-leeway-secs",
            "0",
        ],
        Some(&node_log),
    )
    .await;
    let (_gateway, gw) = start_gateway(&node, &gateway_log).await;

    // A legitimate client with a token from the token command, in a room, posting a body.
    let (_, legit_token, _) = run_cli(
        &["token", "--sub", "legit", "--ttl", "10m"],
        &[
            ("RINGCAST_JWT_SECRET", SECRET),
            ("RINGCAST_JWT_AUDIENCE", AUDIENCE),
        ],
    )
    .await;
    let legit_token = legit_token.trim().to_owned();
    let body = "BODY-7f3a9c-must-not-be-logged";
    let (mut ok, _) = Client::connect_welcomed(&format!("ws://{gw}/ws?token={legit_token}")).await;
    ok.send_json(json!({"type":"join_room","room":"logs"}))
        .await;
    ok.recv_event("user_joined").await;
    ok.send_json(json!({"type":"room_message","room":"logs","content":body}))
        .await;
    assert_eq!(ok.recv_event("chat").await["content"], body);

    // Failures at the gateway, in every placement.
    let forged = mint_hs256("a-different-secret-0123456789", &claims("alice", 600)).expect("mint");
    let expired = token(&claims("alice", -60));
    let mut wrong = claims("alice", 600);
    wrong.aud = Some("elsewhere".into());
    let wrong_aud = token(&wrong);
    let payload = token(&claims("alice", 600));
    let alg_none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        payload.split('.').nth(1).unwrap_or_default()
    );
    let spoof = token(&claims("mallory", 600));
    let base = format!("ws://{gw}/ws");
    let bearer = format!("Bearer {alg_none}");
    let protocols = format!("ringcast.v1, bearer.{expired}");
    assert_eq!(refused(&format!("{base}?token={forged}"), &[]).await.0, 401);
    assert_eq!(refused(&base, &[("authorization", &bearer)]).await.0, 401);
    assert_eq!(
        refused(&base, &[("sec-websocket-protocol", &protocols)])
            .await
            .0,
        401
    );
    assert_eq!(
        refused(&format!("{base}?token={wrong_aud}"), &[]).await.0,
        401
    );
    assert_eq!(
        refused(&format!("{base}?client_id=legit&token={spoof}"), &[])
            .await
            .0,
        403
    );
    // Failures at the node: directly, and in-band refreshes through the gateway.
    let direct = format!("ws://{}/ws?token={forged}", node.addr);
    assert_eq!(refused(&direct, &[]).await.0, 401);
    ok.send_json(json!({"type":"refresh","token": forged}))
        .await;
    assert_eq!(ok.recv_error_code().await, "invalid_token");
    ok.send_json(json!({"type":"refresh","token": spoof})).await;
    assert_eq!(ok.recv_error_code().await, "forbidden");
    still_served(&mut ok).await;

    let (_, gw_metrics) = http_get(gw, "/metrics").await;
    let (_, node_metrics) = http_get(node.addr, "/metrics").await;
    // Let the last log lines land before reading the files.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gateway_text = std::fs::read_to_string(&gateway_log).expect("gateway log");
    let node_text = std::fs::read_to_string(&node_log).expect("node log");
    let _ = std::fs::remove_dir_all(&dir);

    // The capture works: both processes logged the refusals (by reason only).
    assert!(
        gateway_text.contains("upgrade refused at the edge"),
        "gateway log:\n{gateway_text}"
    );
    assert!(
        node_text.contains("upgrade refused by authentication"),
        "node log:\n{node_text}"
    );
    let mut secrets: Vec<&str> = vec![SECRET, body];
    for t in [
        &legit_token,
        &forged,
        &expired,
        &wrong_aud,
        &alg_none,
        &spoof,
    ] {
        secrets.push(t);
        secrets.extend(fragments(t));
    }
    for (what, text) in [
        ("gateway log", &gateway_text),
        ("node log", &node_text),
        ("gateway metrics", &gw_metrics),
        ("node metrics", &node_metrics),
    ] {
        for s in &secrets {
            assert!(!text.contains(s), "{what} contains {s:?}:\n{text}");
        }
    }
}

#[tokio::test]
async fn an_unusable_key_stops_the_gateway_with_a_clear_error() {
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, out, err) = run_cli(
        &[],
        &[
            ("RINGCAST_LISTEN", listen.as_str()),
            ("RINGCAST_JWT_SECRET", "tiny-secret"),
        ],
    )
    .await;
    assert_eq!(code, Some(1));
    let said = format!("{out}{err}");
    assert!(said.contains("at least 16 bytes"), "{said}");
    assert!(
        !said.contains("short\""),
        "the secret itself is not logged: {said}"
    );
}
