//! Active health checks: GET every member's `/healthz` on an interval and feed the results to
//! membership, which counts them and moves nodes out of and back into the ring past the
//! configured thresholds.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use ringcast_net::drain::Drain;
use ringcast_net::health::{parse_room_options, ROOM_OPTIONS_HEADER};
use ringcast_net::http1::client::push_request_head;
use ringcast_net::http1_io;
use tokio::task::JoinSet;
use tracing::debug;

use crate::membership::Membership;
use crate::node_io::Connector;

/// Checks every member every `interval` until the gateway's drain is over (`drain` stops). Each check carries the
/// gateway's `via` entry, so a "node" that is really a gateway answers 508 and is taken out of
/// the ring like any node that fails its checks.
pub async fn run(
    membership: Arc<Membership>,
    interval: Duration,
    timeout: Duration,
    via: HeaderValue,
    connector: Connector,
    drain: Drain,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = drain.stopped() => return,
        }
        let mut checks = JoinSet::new();
        for (id, addr) in membership.targets() {
            let via = via.clone();
            let connector = connector.clone();
            checks.spawn(async move {
                let checked = check(&addr, timeout, &via, &connector).await;
                (id, addr, checked)
            });
        }
        while let Some(done) = checks.join_next().await {
            let Ok((id, addr, checked)) = done else {
                continue;
            };
            if !checked.healthy {
                debug!(node = %id, %addr, "health check failed");
            }
            membership.report_check(&id, &addr, checked.healthy);
            if checked.healthy {
                membership.report_room_options(&id, &addr, checked.room_options);
            }
        }
    }
}

/// What one health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The node answered 200 in time.
    pub healthy: bool,
    /// The hash of its room options, when it sent one.
    pub room_options: Option<String>,
}

/// One `GET /healthz` from the gateway whose `Via` entry is `via`: healthy when the node
/// answers 200 within `timeout`.
pub async fn check(
    addr: &str,
    timeout: Duration,
    via: &HeaderValue,
    connector: &Connector,
) -> Checked {
    let deadline = tokio::time::Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, get_status(addr, via, connector, deadline)).await {
        Ok(Some((200, room_options))) => Checked {
            healthy: true,
            room_options,
        },
        _ => Checked {
            healthy: false,
            room_options: None,
        },
    }
}

async fn get_status(
    addr: &str,
    via: &HeaderValue,
    connector: &Connector,
    deadline: tokio::time::Instant,
) -> Option<(u16, Option<String>)> {
    let mut request = Vec::with_capacity(256);
    let headers = [
        ("Host", addr.as_bytes()),
        ("Connection", b"close"),
        ("User-Agent", b"ringcast-gateway"),
        ("Via", via.as_bytes()),
    ];
    push_request_head(&mut request, "GET", "/healthz", None, headers).ok()?;
    let mut stream = connector.connect(addr, deadline).await.ok()?;
    // The head is all we need: the body is left unread.
    let mut buf = Vec::with_capacity(512);
    let (answer, _) = http1_io::exchange(&mut stream, &request, &mut buf, |head| {
        let options = head
            .header(ROOM_OPTIONS_HEADER)
            .and_then(parse_room_options);
        (head.status, options)
    })
    .await
    .ok()?;
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A node stand-in that answers one request with `answer` and returns what it was sent.
    async fn answering(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                assert!(s.read_buf(&mut got).await.unwrap() > 0, "request cut short");
            }
            s.write_all(answer).await.unwrap();
            got
        });
        (addr, node)
    }

    #[tokio::test]
    async fn a_200_is_healthy_and_the_check_carries_the_gateways_via() {
        let via = HeaderValue::from_static("1.1 ringcast-gateway-1");
        let (addr, node) = answering(
            b"HTTP/1.1 200 OK\r\nringcast-room-options: 00112233aabbccdd\r\n\
              content-length: 2\r\n\r\nok",
        )
        .await;
        assert_eq!(
            check(&addr, Duration::from_secs(5), &via, &Connector::plain()).await,
            Checked {
                healthy: true,
                room_options: Some("00112233aabbccdd".into())
            }
        );
        let sent = String::from_utf8(node.await.unwrap()).unwrap();
        assert_eq!(
            sent,
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 User-Agent: ringcast-gateway\r\nVia: 1.1 ringcast-gateway-1\r\n\r\n"
            )
        );
    }

    #[tokio::test]
    async fn anything_but_a_200_head_is_unhealthy() {
        let via = HeaderValue::from_static("1.1 ringcast-gateway-1");
        for answer in [
            &b"HTTP/1.1 508 Loop Detected\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            let (addr, _node) = answering(answer).await;
            assert!(
                !check(&addr, Duration::from_secs(5), &via, &Connector::plain())
                    .await
                    .healthy,
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }
}
