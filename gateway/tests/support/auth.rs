//! Helpers for the authentication tests: tokens, a gateway with auth in front of two real nodes
//! with the same settings, a legitimate client, and the proof that a refusal reached no node.

use ringcast_node::{Config as NodeConfig, MemoryBroker};
use ringcast_protocol::auth::{mint_hs256, now_secs, Claims};
use ringcast_testkit::{Client, TestNode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Error as WsError;

use super::{NodeProcess, TestGateway};

/// The HS256 secret every component of the test stack shares.
pub const SECRET: &str = "gateway-auth-test-secret-0123456789";
/// The required audience.
pub const AUDIENCE: &str = "ringcast";

/// Claims for `sub` valid for `ttl_secs` (negative: already expired), with the right audience.
pub fn claims(sub: &str, ttl_secs: i64) -> Claims {
    Claims {
        sub: sub.into(),
        exp: (now_secs() as i64 + ttl_secs) as u64,
        nbf: None,
        aud: Some(AUDIENCE.into()),
        iss: None,
        rooms: None,
        chat: None,
    }
}

/// Signs `c` with [`SECRET`].
pub fn token(c: &Claims) -> String {
    mint_hs256(SECRET, c).expect("mint a test token")
}

/// A one-hour token for `sub`.
pub fn token_for(sub: &str) -> String {
    token(&claims(sub, 3600))
}

/// The gateway's auth flags: the same settings the nodes get (no leeway, so expiry tests are
/// quick).
pub fn gateway_auth_flags() -> Vec<String> {
    [
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        AUDIENCE,
        "--jwt-leeway-secs",
        "0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A node configuration with the same auth settings as the gateway.
pub fn node_config(id: &str) -> NodeConfig {
    let mut c = NodeConfig::for_tests();
    c.node_id = Some(id.into());
    c.auth.jwt_secret = Some(SECRET.into());
    c.auth.jwt_audience = Some(AUDIENCE.into());
    c.auth.jwt_leeway_secs = 0;
    c.announce_connections = false;
    c
}

/// Two authenticating nodes on one bus behind an authenticating gateway.
pub struct AuthStack {
    /// The nodes (ids `a1`, `a2`).
    pub nodes: Vec<TestNode>,
    /// The gateway.
    pub gw: TestGateway,
}

/// Connection counts that any request reaching a node would change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeTraffic {
    /// WebSocket connections the nodes accepted.
    pub node_connections: f64,
    /// Upgrades the nodes refused (a forwarded bad token would land here).
    pub node_refusals: f64,
    /// Tunnels the gateway opened to nodes.
    pub gateway_tunnels: f64,
}

impl AuthStack {
    /// Starts the stack with `extra` gateway flags.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with(|_| {}, extra).await
    }

    /// Starts the stack, letting `tweak` adjust each node's configuration.
    pub async fn start_with(tweak: impl Fn(&mut NodeConfig), extra: &[&str]) -> Self {
        let broker = MemoryBroker::new();
        let mut nodes = Vec::new();
        for id in ["a1", "a2"] {
            let mut c = node_config(id);
            tweak(&mut c);
            nodes.push(TestNode::start_on(c, broker.clone()).await);
        }
        let specs: Vec<String> = nodes
            .iter()
            .zip(["a1", "a2"])
            .map(|(n, id)| format!("{id}={}", n.addr))
            .collect();
        let auth = gateway_auth_flags();
        let mut args: Vec<&str> = Vec::new();
        for spec in &specs {
            args.extend(["--node", spec.as_str()]);
        }
        args.extend(auth.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let gw = TestGateway::start(&args).await;
        AuthStack { nodes, gw }
    }

    /// `ws://GATEWAY/ws?QUERY` (no `?` when `query` is empty).
    pub fn url(&self, query: &str) -> String {
        if query.is_empty() {
            format!("ws://{}/ws", self.gw.addr)
        } else {
            format!("ws://{}/ws?{query}", self.gw.addr)
        }
    }

    /// A legitimate client (subject `legit`, token in the query) that must keep being served.
    pub async fn legit(&self) -> Client {
        let url = self.url(&format!("token={}", token_for("legit")));
        let (c, id) = Client::connect_welcomed(&url).await;
        assert_eq!(id, "legit");
        c
    }

    /// Connects with a token for `sub` in the query and reads `welcome`.
    pub async fn connect_as(&self, c: &Claims) -> Client {
        let url = self.url(&format!("token={}", token(c)));
        let (client, id) = Client::connect_welcomed(&url).await;
        assert_eq!(id, c.sub);
        client
    }

    /// What the nodes and the gateway have seen of connections so far.
    pub async fn traffic(&self) -> NodeTraffic {
        let mut t = NodeTraffic {
            node_connections: 0.0,
            node_refusals: 0.0,
            gateway_tunnels: self.gw.metric("ringcast_gateway_connections_total").await,
        };
        for n in &self.nodes {
            t.node_connections += n.metric("ringcast_node_connections_total").await;
            t.node_refusals += n.metric("ringcast_node_upgrades_refused_total").await;
        }
        t
    }

    /// `ringcast_gateway_edge_refusals_total{reason="REASON"}`.
    pub async fn edge_refusals(&self, reason: &str) -> f64 {
        self.gw
            .metric(&format!(
                "ringcast_gateway_edge_refusals_total{{reason=\"{reason}\"}}"
            ))
            .await
    }

    /// Asserts that connecting to `url` with `headers` is refused by the gateway itself with
    /// `status` and error `code`, that no node saw any connection for it, that the refusal
    /// was counted by reason, and that the body does not contain `secret` (the token).
    pub async fn assert_refused_at_edge(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        status: u16,
        code: &str,
        secret: &str,
    ) {
        let before = self.traffic().await;
        let counted = self.edge_refusals(code).await;
        let (got, body) = refused(url, headers).await;
        assert_eq!(got, status, "status for {code}: {body}");
        assert_eq!(body["error"], code, "{body}");
        if !secret.is_empty() {
            assert!(
                !body.to_string().contains(secret),
                "the refusal echoes the token"
            );
        }
        assert_eq!(
            self.traffic().await,
            before,
            "a refused request reached a node"
        );
        assert_eq!(self.edge_refusals(code).await, counted + 1.0);
    }
}

/// Sends a ping and expects the pong.
pub async fn still_served(c: &mut Client) {
    c.send_json(json!({"type":"ping"})).await;
    assert_eq!(c.recv_event("pong").await["event"], "pong");
}

/// Connects expecting an HTTP refusal; returns its status and JSON body.
pub async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    match Client::try_connect_with(url, headers).await {
        Ok(_) => panic!("the connection was accepted"),
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// A `ringcast-node` process and a `ringcast-gateway` process in front of it, both with the
/// auth settings of [`gateway_auth_flags`]: the binaries of the test's build profile (release
/// ones under `cargo test --release`). Both are SIGKILLed by PID when dropped.
pub struct AuthProcesses {
    /// The node process.
    pub node: NodeProcess,
    /// Where the gateway process listens.
    pub gateway: std::net::SocketAddr,
    gateway_child: std::process::Child,
}

impl AuthProcesses {
    /// Starts the node, then the gateway routing to it, and waits until the gateway sees it
    /// healthy.
    pub async fn start() -> Self {
        let auth = gateway_auth_flags();
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let node = NodeProcess::start_with("p1", &auth, None).await;
        let spec = node.spec();
        let mut args = vec!["--node", spec.as_str(), "--health-interval-ms", "100"];
        args.extend_from_slice(&auth);
        let (gateway_child, gateway) =
            ringcast_testkit::spawn_server(env!("CARGO_BIN_EXE_ringcast-gateway"), &args);
        let procs = AuthProcesses {
            node,
            gateway,
            gateway_child,
        };
        ringcast_testkit::wait_until(
            std::time::Duration::from_secs(10),
            "the gateway process to see its node healthy",
            || async { super::healthz_ok(gateway).await },
        )
        .await;
        procs
    }

    /// `ws://GATEWAY/ws?QUERY`.
    pub fn gateway_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.gateway)
    }

    /// `ws://NODE/ws?QUERY`, around the gateway.
    pub fn node_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.node.addr)
    }
}

impl Drop for AuthProcesses {
    fn drop(&mut self) {
        let _ = self.gateway_child.kill();
        let _ = self.gateway_child.wait();
    }
}
