//! TLS for ringcast's listeners and for the gateway's connections to nodes: the certificate
//! pair (loaded and checked), the rustls server config that serves whichever pair is current,
//! the reload of the pair on SIGHUP or when its files change, and the client side the gateway
//! uses towards nodes (a CA file, the name a node's certificate must carry).
//!
//! One `ServerConfig` lives for the whole process; its certificate resolver reads the current
//! pair from a `watch` channel at every handshake. A reload only replaces that pair: handshakes
//! already done keep their session, so open connections never notice, and the next handshake
//! serves the new certificate. A new pair that cannot be used (unreadable, key and certificate
//! not matching, expired) is refused with a log line, and the old pair stays.
//!
//! Only rustls' `ring` provider is used (the one the workspace builds), TLS 1.3 and 1.2, ALPN
//! `http/1.1` (a WebSocket upgrade and a link request are HTTP/1.1).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::drain::Drain;
use crate::split::SplitIo;
use crate::x509::{self, Leaf, X509Error};

/// Largest certificate or key file read (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The TLS flags of a public listener (the gateway's, a node's).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file with the certificate chain, leaf first, that `--listen` serves: with it (and
    /// `--tls-key`) the listener speaks TLS only (`wss://`, `https://`). Reloaded on SIGHUP
    /// and when the file changes.
    #[arg(long, env = "RINGCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "RINGCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Seconds between checks of the certificate and key files for changes (a renewed
    /// Secret, a certbot run); 0 reloads on SIGHUP only.
    #[arg(long, env = "RINGCAST_TLS_RELOAD_SECS", default_value_t = 5)]
    pub tls_reload_secs: u64,
}

impl TlsArgs {
    /// The certificate and key files, when TLS is configured.
    pub fn files(&self) -> Option<PairFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(PairFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// Where the certificate chain and its key are.
#[derive(Debug, Clone)]
pub struct PairFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// Why a certificate pair cannot be served.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not PEM, or holds nothing of what it should.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The key is of a kind rustls cannot sign with.
    #[error("{path}: not a usable private key: {error}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// rustls' reason.
        error: rustls::Error,
    },
    /// The key is not the certificate's.
    #[error("{key} is not the private key of the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate's `notAfter` has passed.
    #[error("{path}: the certificate (serial {serial}) expired at {at}")]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Its serial number (hex).
        serial: String,
        /// When it expired (HTTP date).
        at: String,
    },
    /// The leaf certificate's DER could not be read.
    #[error("{path}: {error}")]
    Der {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        error: X509Error,
    },
}

/// A checked certificate pair, ready to serve.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The chain and its signing key.
    pub key: Arc<CertifiedKey>,
    /// The leaf's serial and validity.
    pub leaf: Leaf,
}

/// The only crypto provider the workspace builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: format!("larger than {MAX_PEM_BYTES} bytes: not a certificate or key file"),
        });
    }
    Ok(bytes)
}

/// Loads and checks the pair in `files`: a chain, a key rustls can sign with, the key being the
/// leaf's, and the leaf not expired (one not yet valid is only warned about: clocks drift).
pub fn load(files: &PairFiles) -> Result<Pair, TlsError> {
    let pem = |path: &Path, what: String| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(&read_pem(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(&files.cert, e.to_string()))?;
    let Some(leaf_der) = chain.first() else {
        return Err(pem(&files.cert, "no PEM CERTIFICATE block in it".into()));
    };
    let leaf = x509::leaf(leaf_der).map_err(|error| TlsError::Der {
        path: files.cert.clone(),
        error,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&files.key)?).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            pem(&files.key, "no PEM PRIVATE KEY block in it".into())
        }
        e => pem(&files.key, e.to_string()),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| TlsError::Key {
            path: files.key.clone(),
            error,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // `Unknown`: the provider cannot tell the key's public half; rustls accepts that too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(error) => {
            return Err(TlsError::Key {
                path: files.cert.clone(),
                error,
            })
        }
    }
    let now = unix_now();
    if leaf.not_after < now {
        return Err(TlsError::Expired {
            path: files.cert.clone(),
            serial: leaf.serial_hex(),
            at: http_date(leaf.not_after),
        });
    }
    if leaf.not_before > now {
        warn!(
            cert = %files.cert.display(),
            not_before = %http_date(leaf.not_before),
            "the TLS certificate is not valid yet; clients will refuse it until then"
        );
    }
    Ok(Pair {
        key: Arc::new(certified),
        leaf,
    })
}

fn unix_now() -> i64 {
    i64::try_from(ringcast_protocol::auth::now_secs()).unwrap_or(i64::MAX)
}

/// `secs` since the epoch as an HTTP date (the form logs and errors print).
pub fn http_date(secs: i64) -> String {
    // httpdate panics past 9999-12-31T23:59:59 (a `notAfter` of 99991231235960Z is legal DER).
    let at = UNIX_EPOCH + Duration::from_secs(secs.clamp(0, 253_402_300_799) as u64);
    httpdate::fmt_http_date(at)
}

/// The certificate resolver: every handshake gets the pair that is current at its start.
#[derive(Debug)]
struct Current(watch::Receiver<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().clone())
    }
}

/// A server config that serves the pair current in `current` at each handshake, TLS 1.3 and
/// 1.2, ALPN `http/1.1`.
pub fn server_config(
    current: watch::Receiver<Arc<CertifiedKey>>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Current(current)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// How often `--tls-reload-secs` asks to look at the files (`None`: SIGHUP only).
pub fn reload_poll(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs.min(crate::process::MAX_SECS)))
}

/// The certificate authorities in the PEM file at `path`, as the roots a client verifies its
/// peers against: at least one, all of them usable.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = |what: String| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(&read_pem(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no PEM CERTIFICATE block in it".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| pem(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A client config that trusts `roots` only (no client certificate), TLS 1.3 and 1.2, ALPN
/// `http/1.1`.
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The name a peer at `addr` (`host:port`, `[v6]:port`) must prove in its certificate: a DNS
/// name, or an IP address (matched against the certificate's IP SANs).
pub fn server_name(addr: &str) -> Option<rustls::pki_types::ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    rustls::pki_types::ServerName::try_from(host.to_owned()).ok()
}

/// Whether a handshake error is the peer going away rather than a protocol failure.
pub fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A TLS connection (a node's, accepted) comes apart through tokio's lock: rustls' state is
/// one for both ways.
impl SplitIo for tokio_rustls::server::TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;

    fn split_io(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// What identifies a file's content without reading it: modification time, size, inode
/// (following symlinks, so a Kubernetes Secret's `..data` swap counts as a change).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamps(files: &PairFiles) -> (Stamp, Stamp) {
    use std::os::unix::fs::MetadataExt;
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
    };
    (stamp(&files.cert), stamp(&files.key))
}

/// Reloads the pair on SIGHUP, and every `poll` when either file changed, until `drain` begins;
/// `reloaded` hears of each reload (the new pair's `notAfter`, or `None` when it was refused).
pub async fn reload<F>(
    files: PairFiles,
    current_tx: watch::Sender<Arc<CertifiedKey>>,
    mut reloaded: F,
    poll: Option<Duration>,
    drain: Drain,
) where
    F: FnMut(Option<i64>) + Send,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; certificates reload when their files change only");
            None
        }
    };
    let mut seen = stamps(&files);
    let mut tick = poll.map(tokio::time::interval);
    loop {
        let why = tokio::select! {
            _ = drain.draining() => return,
            Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
            _ = async { tick.as_mut()?.tick().await; Some(()) }, if tick.is_some() => {
                let now = stamps(&files);
                if now == seen {
                    continue;
                }
                "the files changed"
            }
        };
        seen = stamps(&files);
        // A few KiB from a local file: read on this task rather than a blocking thread.
        match load(&files) {
            Ok(pair) => {
                reloaded(Some(pair.leaf.not_after));
                info!(
                    why,
                    serial = %pair.leaf.serial_hex(),
                    not_after = %http_date(pair.leaf.not_after),
                    "TLS certificate reloaded: new handshakes use it"
                );
                current_tx.send_replace(pair.key);
            }
            Err(e) => {
                reloaded(None);
                warn!(why, error = %e, "TLS certificate reload refused; the previous certificate stays");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    #[test]
    fn the_name_a_node_must_prove_is_the_host_it_is_dialled_at() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().unwrap().into());
        assert_eq!(server_name("127.0.0.1:7001"), Some(ip("127.0.0.1")));
        assert_eq!(server_name("[::1]:7001"), Some(ip("::1")));
        assert_eq!(
            server_name("node-1.ringcast.svc:7001"),
            Some(ServerName::try_from("node-1.ringcast.svc").unwrap())
        );
        assert_eq!(
            server_name("node-1"),
            Some(ServerName::try_from("node-1").unwrap())
        );
        assert_eq!(server_name(":7001"), None);
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("ringcast-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "no PEM here\n").unwrap();
        let err = load_roots(&junk).unwrap_err().to_string();
        assert!(err.contains("no PEM CERTIFICATE block"), "{err}");
        let err = load_roots(&dir.join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
