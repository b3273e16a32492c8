//! A TCP proxy in front of a server that can freeze chosen connections: they stay open but
//! nothing passes any more, as with a half-open connection behind a stuck NAT or firewall. It can
//! also hold back every SUBSCRIBE for a while, so a Redis client's (re)subscription stays pending
//! as long as a test needs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Conn {
    /// Set once the client sent a SUBSCRIBE command (a Redis subscriber connection).
    subscriber: Arc<AtomicBool>,
    frozen_tx: watch::Sender<bool>,
}

/// A loopback TCP proxy to `target`; dropped, it closes every connection it carries.
pub struct FreezableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    accept: JoinHandle<()>,
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
    hold_tx: watch::Sender<bool>,
}

impl FreezableProxy {
    /// Starts proxying 127.0.0.1:(free port) → `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let pumps: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, p) = (conns.clone(), pumps.clone());
        let (hold_tx, hold_rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let subscriber = Arc::new(AtomicBool::new(false));
                let (frozen_tx, frozen_rx) = watch::channel(false);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = tokio::spawn(pump(
                    cr,
                    sw,
                    frozen_rx.clone(),
                    Some((subscriber.clone(), hold_rx.clone())),
                ));
                let down = tokio::spawn(pump(sr, cw, frozen_rx, None));
                c.lock().unwrap().push(Conn {
                    subscriber,
                    frozen_tx,
                });
                p.lock().unwrap().extend([up, down]);
            }
        });
        FreezableProxy {
            addr,
            conns,
            accept,
            pumps,
            hold_tx,
        }
    }

    /// From now on, holds back every chunk that carries a SUBSCRIBE (on any connection, current
    /// or new) until [`FreezableProxy::release_subscribes`]: the client's subscription stays
    /// pending, everything else it sent before passes.
    pub fn hold_subscribes(&self) {
        self.hold_tx.send_replace(true);
    }

    /// Lets the held SUBSCRIBEs (and any later ones) through.
    pub fn release_subscribes(&self) {
        self.hold_tx.send_replace(false);
    }

    /// `redis://ADDR` for a Redis behind this proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Freezes every current connection that has sent SUBSCRIBE; returns how many. New
    /// connections are not affected.
    pub fn freeze_subscribers(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        let mut n = 0;
        for c in conns.iter().filter(|c| c.subscriber.load(Ordering::SeqCst)) {
            let _ = c.frozen_tx.send(true);
            n += 1;
        }
        n
    }
}

/// Copies bytes until EOF, or stops moving them (holding both ends open) once frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen_rx: watch::Receiver<bool>,
    mut subscriber: Option<(Arc<AtomicBool>, watch::Receiver<bool>)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = frozen_rx.wait_for(|f| *f) => break,
        };
        if *frozen_rx.borrow() {
            break;
        }
        if let Some((flag, hold_rx)) = &mut subscriber {
            if buf[..n]
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
            {
                flag.store(true, Ordering::SeqCst);
                let _ = hold_rx.wait_for(|held| !*held).await;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if *frozen_rx.borrow() {
        // Frozen: keep both halves open and silent until the proxy is dropped.
        std::future::pending::<()>().await;
    }
    let _ = to.shutdown().await;
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for p in self.pumps.lock().unwrap().drain(..) {
            p.abort();
        }
    }
}
