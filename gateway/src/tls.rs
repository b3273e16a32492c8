//! TLS on the gateway's public listener: the handshake, bounded and counted, and the metrics of
//! the certificate pair. Loading, checking and reloading the pair are `ringcast_net::tls`'s,
//! which a node's listener shares.

use std::sync::Arc;

use ringcast_net::drain::Drain;
use ringcast_net::tls::{self, http_date};
pub use ringcast_net::tls::{load, Pair, PairFiles, TlsArgs, TlsError};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use crate::metrics::Metrics;

/// The TLS side of the public listener.
pub struct Tls {
    acceptor: TlsAcceptor,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads the pair in `args` (an error if it cannot be served), registers the TLS metrics,
    /// and starts watching for reloads as a task of `drain`. `None` when TLS is not configured.
    pub fn start(
        args: &TlsArgs,
        metrics: &Arc<Metrics>,
        drain: &Drain,
    ) -> Result<Option<Arc<Tls>>, TlsError> {
        let Some(files) = args.files() else {
            return Ok(None);
        };
        let pair = load(&files)?;
        metrics.enable_tls();
        metrics.tls_cert_expiry.set(pair.leaf.not_after);
        info!(
            cert = %files.cert.display(),
            serial = %pair.leaf.serial_hex(),
            not_after = %http_date(pair.leaf.not_after),
            "TLS on: the listener serves wss:// and https://"
        );
        let (current_tx, current_rx) = watch::channel(pair.key);
        let config = tls::server_config(current_rx).map_err(|error| TlsError::Key {
            path: files.key.clone(),
            error,
        })?;
        let poll = tls::reload_poll(args.tls_reload_secs);
        let counted = metrics.clone();
        let reloaded = move |not_after: Option<i64>| match not_after {
            Some(not_after) => {
                counted.tls_reloads.with_label_values(&["ok"]).inc();
                counted.tls_cert_expiry.set(not_after);
            }
            None => {
                counted.tls_reloads.with_label_values(&["error"]).inc();
            }
        };
        drain.spawn(tls::reload(
            files,
            current_tx,
            reloaded,
            poll,
            drain.clone(),
        ));
        Ok(Some(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            metrics: metrics.clone(),
        })))
    }

    /// Runs the handshake on `stream`, which must be done by `deadline`; counts its result.
    /// `None`: the client failed it, closed, or stayed silent (the connection is dropped).
    pub async fn accept(
        &self,
        stream: TcpStream,
        deadline: tokio::time::Instant,
    ) -> Option<TlsStream<TcpStream>> {
        let result = match tokio::time::timeout_at(deadline, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Err(_) => Err("timeout"),
            Ok(Err(e)) if tls::is_closed(&e) => Err("closed"),
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                Err("failed")
            }
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(label) => label,
        };
        self.metrics
            .tls_handshakes
            .with_label_values(&[label])
            .inc();
        result.ok()
    }
}
