//! Opening seed-protocol connections: bind a source address, TCP connect, WebSocket upgrade
//! ([`crate::handshake`]), wait for `welcome`; and joining a room until the client's own
//! `user_joined` arrives.
//!
//! Every failure is classified ([`ConnectError`]) so the user learns whether the server is down,
//! answers plain HTTP, or speaks another protocol.
//!
//! The setup steps work on any [`Conn`]: tungstenite's [`Ws`](crate::conn::Ws) for connections
//! that go on sending, [`RawWs`](crate::raw::RawWs) for those that only listen once joined.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::conn::{Conn, Incoming};
use crate::error::ConnectError;
use crate::handshake::client_handshake;
use crate::stream::{Stream, TlsClient};
use crate::target::Target;
use rustls::pki_types::ServerName;

/// Opens connections to the targets, spread over the source addresses.
#[derive(Debug)]
pub struct Connector {
    targets: Vec<Target>,
    sources: Vec<IpAddr>,
    config: WebSocketConfig,
    timeout: Duration,
    id_prefix: String,
    require_welcome: bool,
    tls: Option<TlsClient>,
}

impl Connector {
    /// A connector; `timeout` bounds connect + upgrade, the wait for `welcome` (when
    /// `require_welcome`), and each wait for an event.
    pub fn new(
        targets: Vec<Target>,
        sources: Vec<IpAddr>,
        read_buffer_bytes: usize,
        timeout: Duration,
        id_prefix: String,
        require_welcome: bool,
    ) -> Self {
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer_bytes.max(1024))
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        Connector {
            targets,
            sources,
            config,
            timeout,
            id_prefix,
            require_welcome,
            tls: None,
        }
    }

    /// The TLS client for `wss://` targets (a connector without one refuses them).
    pub fn with_tls(mut self, tls: Option<TlsClient>) -> Self {
        self.tls = tls;
        self
    }

    /// The target used by connection number `index`.
    pub fn target(&self, index: usize) -> &Target {
        &self.targets[index % self.targets.len()]
    }

    /// All targets.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// How long to wait for an expected event.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The client id of connection `index` in role `role` (e.g. "s", "p").
    pub fn client_id(&self, role: &str, index: usize) -> String {
        format!("{}-{role}{index}", self.id_prefix)
    }

    /// Connects connection number `index` as `client_id` and waits for `welcome`; returns the
    /// connection (a [`Ws`](crate::conn::Ws) or a [`RawWs`](crate::raw::RawWs)) and the client
    /// id the server confirmed.
    pub async fn connect<C: Conn>(
        &self,
        index: usize,
        client_id: &str,
    ) -> Result<(C, String), ConnectError> {
        self.connect_on(index, client_id)
            .await
            .map(|(ws, id, _)| (ws, id))
    }

    /// Like [`Connector::connect`], and also returns the `node` the `welcome` named (ringcast
    /// says which node serves the client; behind a gateway that is how a run learns it).
    pub async fn connect_on<C: Conn>(
        &self,
        index: usize,
        client_id: &str,
    ) -> Result<(C, String, Option<String>), ConnectError> {
        let target = self.target(index);
        let addr = target.addr;
        let secs = self.timeout.as_secs_f64();
        let mut ws = tokio::time::timeout(self.timeout, self.upgrade(index, target, client_id))
            .await
            .map_err(|_| ConnectError::Timeout { addr, secs })??;
        if !self.require_welcome {
            return Ok((ws, client_id.to_owned(), None));
        }
        let welcome = tokio::time::timeout(self.timeout, next_json(&mut ws, addr, "the `welcome` event"))
            .await
            .map_err(|_| ConnectError::Protocol {
                addr,
                detail: format!(
                    "upgraded to WebSocket but no `welcome` event within {secs:.1} s: not a ringcast server? (for the tutorial server, which sends none, pass --require-welcome=false)"
                ),
            })??;
        if welcome["event"] != "welcome" {
            return Err(ConnectError::Protocol {
                addr,
                detail: format!(
                    "expected a `welcome` event first, got {}: not a seed-protocol server?",
                    abbreviate(&welcome.to_string())
                ),
            });
        }
        let id = welcome["client_id"]
            .as_str()
            .unwrap_or(client_id)
            .to_owned();
        let node = welcome["node"].as_str().map(str::to_owned);
        Ok((ws, id, node))
    }

    async fn upgrade<C: Conn>(
        &self,
        index: usize,
        target: &Target,
        client_id: &str,
    ) -> Result<C, ConnectError> {
        let addr = target.addr;
        let source = if self.sources.is_empty() {
            None
        } else {
            let spread = index / self.targets.len();
            Some(self.sources[spread % self.sources.len()])
        };
        let tcp = tcp_connect(addr, source).await?;
        let stream = if target.tls {
            let Some(TlsClient(tls)) = &self.tls else {
                return Err(ConnectError::Handshake {
                    addr,
                    detail:
                        "a wss:// URL needs --tls-ca (the CA that signed the server's certificate)"
                            .into(),
                });
            };
            let name =
                ServerName::try_from(target.host.clone()).map_err(|e| ConnectError::Handshake {
                    addr,
                    detail: format!("{}: not a TLS server name: {e}", target.host),
                })?;
            let tls = tls
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectError::Handshake {
                    addr,
                    detail: format!("TLS handshake: {e}"),
                })?;
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        let path = target.client_path(client_id);
        let (stream, read) =
            client_handshake(stream, addr, &target.authority, &path, self.config).await?;
        Ok(C::upgraded(stream, read, self.config).await)
    }

    /// Connects connection number `index` as `client_id` and joins `room` with it; returns the
    /// connection and the client id the server confirmed.
    pub async fn connect_joined<C: Conn>(
        &self,
        index: usize,
        client_id: &str,
        room: &str,
    ) -> Result<(C, String), ConnectError> {
        let (mut ws, my_id) = self.connect(index, client_id).await?;
        self.join(&mut ws, self.target(index).addr, room, &my_id)
            .await?;
        Ok((ws, my_id))
    }

    /// Sends `join_room` and waits (skipping unrelated events) for this client's own
    /// `user_joined`; an `error` event or a close fails the join.
    pub async fn join<C: Conn>(
        &self,
        ws: &mut C,
        addr: SocketAddr,
        room: &str,
        my_id: &str,
    ) -> Result<(), ConnectError> {
        self.room_request(ws, addr, "join_room", "user_joined", room, my_id)
            .await
    }

    /// Sends `leave_room` and waits for this client's own `user_left`.
    pub async fn leave<C: Conn>(
        &self,
        ws: &mut C,
        addr: SocketAddr,
        room: &str,
        my_id: &str,
    ) -> Result<(), ConnectError> {
        self.room_request(ws, addr, "leave_room", "user_left", room, my_id)
            .await
    }

    async fn room_request<C: Conn>(
        &self,
        ws: &mut C,
        addr: SocketAddr,
        request: &str,
        answer: &str,
        room: &str,
        my_id: &str,
    ) -> Result<(), ConnectError> {
        let frame = serde_json::json!({"type": request, "room": room}).to_string();
        ws.send_text(frame)
            .await
            .map_err(|e| ConnectError::Protocol {
                addr,
                detail: format!("sending {request} failed: {e}"),
            })?;
        let what = format!("`{answer}`");
        let wait = async {
            loop {
                let v = next_json(ws, addr, &what).await?;
                match v["event"].as_str() {
                    Some(event)
                        if event == answer && v["user_id"] == my_id && v["room"] == room =>
                    {
                        return Ok(());
                    }
                    Some("error") => {
                        return Err(ConnectError::Protocol {
                            addr,
                            detail: format!(
                            "{request} {room} answered error {} ({}); raise the server's limits?",
                            v["code"], v["message"]
                        ),
                        })
                    }
                    _ => {}
                }
            }
        };
        let secs = self.timeout.as_secs_f64();
        tokio::time::timeout(self.timeout, wait)
            .await
            .map_err(|_| ConnectError::Protocol {
                addr,
                detail: format!("no `{answer}` for {my_id} in room {room} within {secs:.1} s"),
            })?
    }
}

/// TCP connect, optionally from `source` (bound before connecting), with TCP_NODELAY.
async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, ConnectError> {
    let map_io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::ConnectionRefused => ConnectError::Refused { addr },
        _ if source.raw_os_error() == Some(24) => ConnectError::NoFds { addr },
        _ => ConnectError::Io { addr, source },
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(map_io)?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|source| ConnectError::Bind { ip, source })?;
    }
    let stream = socket.connect(addr).await.map_err(map_io)?;
    stream.set_nodelay(true).map_err(map_io)?;
    Ok(stream)
}

/// The next text message as JSON (pings are answered on the way; pongs are skipped).
async fn next_json<C: Conn>(
    ws: &mut C,
    addr: SocketAddr,
    what: &str,
) -> Result<Value, ConnectError> {
    let protocol = |detail: String| ConnectError::Protocol { addr, detail };
    match ws.next_incoming().await {
        Incoming::Text(t) => serde_json::from_str(&t).map_err(|_| {
            protocol(format!(
                "waiting for {what}, got a non-JSON text frame {}: not a seed-protocol server?",
                abbreviate(&t)
            ))
        }),
        Incoming::Close(frame) => Err(protocol(format!(
            "server closed the connection while we waited for {what}: {}",
            frame
                .map(|(code, reason)| format!("{code} {reason}"))
                .unwrap_or_else(|| "no close frame".into())
        ))),
        Incoming::Binary => Err(protocol(format!(
            "waiting for {what}, got a binary frame: not a seed-protocol server?"
        ))),
        Incoming::Failed(e) => Err(protocol(format!("waiting for {what}: {e}"))),
        Incoming::Ended => Err(protocol(format!(
            "connection ended while we waited for {what}"
        ))),
    }
}

fn abbreviate(s: &str) -> String {
    let cut: String = s.chars().take(120).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}
