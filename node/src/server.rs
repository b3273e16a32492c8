//! The node's accept loop: takes connections, within a bound, until the node has drained.

use std::sync::Arc;
use std::time::Duration;

use ringcast_net::drain::Drain;
use ringcast_net::tls::{self, TlsArgs};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::http::serve_connection;
use crate::state::Shared;

/// Slack above `max_connections` for plain HTTP (health checks, scrapes) while sessions are full.
const HTTP_HEADROOM: usize = 256;

/// Accepts connections, each served on a task of the node's drain, until the node has drained
/// (HTTP keeps being answered while it drains: `/healthz` says 503); then the listener closes.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let permits = Arc::new(Semaphore::new(
        shared.config.max_connections + HTTP_HEADROOM,
    ));
    info!(addr = ?listener.local_addr().ok(), node = %shared.node_id, "node listening");
    if shared.config.link_secret.is_none() {
        info!("no --link-secret set: links (/link) are taken from loopback peers only");
    }
    tokio::select! {
        _ = accept_loop(&listener, &shared, &permits, tls) => {}
        _ = shared.drain.stopped() => {}
    }
}

/// The TLS side of the listener when `args` name a certificate pair: its acceptor, serving the
/// pair current at each handshake, with the pair reloaded on SIGHUP and when its files change
/// (a task of `drain`). An error when the pair cannot be served.
pub fn tls(args: &TlsArgs, drain: &Drain) -> Result<Option<TlsAcceptor>, String> {
    let Some(files) = args.files() else {
        return Ok(None);
    };
    let pair = tls::load(&files).map_err(|e| format!("TLS: {e}"))?;
    info!(
        cert = %files.cert.display(),
        serial = %pair.leaf.serial_hex(),
        not_after = %tls::http_date(pair.leaf.not_after),
        "TLS on: the listener serves TLS only (gateways need --node-tls)"
    );
    let (current_tx, current_rx) = watch::channel(pair.key);
    let config = tls::server_config(current_rx).map_err(|e| format!("TLS: {e}"))?;
    let poll = tls::reload_poll(args.tls_reload_secs);
    drain.spawn(tls::reload(files, current_tx, |_| {}, poll, drain.clone()));
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let Some(acceptor) = tls.clone() else {
                    let serve = serve_connection(shared.clone(), stream, peer);
                    shared.drain.spawn(async move {
                        serve.await;
                        drop(permit);
                    });
                    continue;
                };
                // The handshake runs on the connection's task, under the handshake timeout.
                let shared = shared.clone();
                let timeout = shared.config.handshake_timeout();
                shared.drain.clone().spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(shared, stream, peer).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
