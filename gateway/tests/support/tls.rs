//! TLS test helpers: a CA and server certificates made in the test (rcgen), a `ringcast-gateway`
//! process serving them, and a TLS client that reports the certificate it was served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A scratch directory for one test's files, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory named after `name` and this process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringcast-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// A path inside it.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, in PEM.
pub struct ServerPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// Its serial number in lowercase hex without leading zeros.
    pub serial: String,
    /// Its SubjectPublicKeyInfo (DER), what a browser's `--ignore-certificate-errors-spki-list`
    /// names by hash.
    pub spki: Vec<u8>,
}

impl ServerPair {
    /// Writes the certificate and the key to `cert` and `key` (each replaced whole by a
    /// rename, as a Secret update or certbot would).
    pub fn write(&self, cert: &Path, key: &Path) {
        write_whole(cert, &self.cert_pem);
        write_whole(key, &self.key_pem);
    }
}

/// Replaces `path` with `text` by a rename, so a reader never sees half of it.
pub fn write_whole(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write pem");
    std::fs::rename(&tmp, path).expect("rename pem");
}

impl TestCa {
    /// A new CA, "ringcast test CA".
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ringcast test CA");
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// The CA certificate in PEM (what clients trust).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate in DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `127.0.0.1` and `localhost`, common name `cn`, serial
    /// `serial`, valid until 2045 (or, `expired`, during 2020 only).
    pub fn issue(&self, cn: &str, serial: u32, expired: bool) -> ServerPair {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, cn);
        let bytes = serial.to_be_bytes();
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(3);
        let mut serial_bytes = bytes[first..].to_vec();
        if serial_bytes[0] & 0x80 != 0 {
            serial_bytes.insert(0, 0);
        }
        params.serial_number = Some(SerialNumber::from(serial_bytes));
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2020, 12, 31);
        } else {
            params.not_before = date_time_ymd(2024, 1, 1);
            params.not_after = date_time_ymd(2045, 1, 1);
        }
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        ServerPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: format!("{serial:x}"),
            spki: key.subject_public_key_info(),
        }
    }
}

/// A TLS client trusting only `ca`, offering ALPN `http/1.1`; it never resumes a session, so
/// every connection sees the certificate served at that moment.
pub fn connector(ca: &CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("add CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects with TLS to `addr` (verified as 127.0.0.1).
pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The serial (hex, no leading zeros) of the certificate `stream`'s server presented.
pub fn served_serial(stream: &TlsStream<TcpStream>) -> String {
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate");
    let leaf = ringcast_net::x509::leaf(&certs[0]).expect("readable certificate");
    leaf.serial_hex()
}

/// `GET path` over TLS; the status and body.
pub async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    path: &str,
) -> (u16, String) {
    let mut tls = tls_connect(connector, addr).await.expect("TLS connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write request");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = ringcast_testkit::answer_status(&got).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the one sample `series` (name and labels, as exposed) in `exposition`.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// A `ringcast-gateway` process with TLS (embedded node), its log in a file; SIGTERMed and
/// reaped on drop.
pub struct TlsGateway {
    /// The TLS listener.
    pub addr: SocketAddr,
    /// The plain listener (`--plain-listen`).
    pub plain: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
    child: Option<Child>,
}

impl TlsGateway {
    /// Starts the gateway with `--tls-cert cert --tls-key key` and `args`.
    pub fn start(cert: &Path, key: &Path, log: PathBuf, args: &[&str]) -> Self {
        let plain_port = ringcast_testkit::free_port();
        let out = std::fs::File::create(&log).expect("log file");
        let (child, port) = ringcast_testkit::spawn_listening(
            "ringcast-gateway",
            Duration::from_secs(10),
            |port| {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast-gateway"));
                for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RINGCAST_")) {
                    cmd.env_remove(k);
                }
                cmd.args(["--listen", &format!("127.0.0.1:{port}")])
                    .args(["--plain-listen", &format!("127.0.0.1:{plain_port}")])
                    .arg("--tls-cert")
                    .arg(cert)
                    .arg("--tls-key")
                    .arg(key)
                    .args(["--shutdown-grace-secs", "1"])
                    .args(args)
                    .env("RUST_LOG", "info")
                    .stdout(out.try_clone().expect("log file"))
                    .stderr(out.try_clone().expect("log file"));
                cmd
            },
        );
        TlsGateway {
            addr: ([127, 0, 0, 1], port).into(),
            plain: ([127, 0, 0, 1], plain_port).into(),
            log,
            child: Some(child),
        }
    }

    /// Sends `signal` (`HUP`, `TERM`) by PID.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{signal} failed");
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics` from the plain listener.
    pub async fn metrics(&self) -> String {
        let (status, body) = ringcast_testkit::http_get(self.plain, "/metrics").await;
        assert_eq!(status, 200, "/metrics on the plain listener: {body}");
        body
    }

    /// The value of `series` in `/metrics` (0 when absent).
    pub async fn sample(&self, series: &str) -> f64 {
        sample(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// Waits (up to 10 s) until `series` reaches `value`.
    pub async fn wait_sample(&self, series: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.sample(series).await;
            if got >= value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed at {got}, expected {value}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits (up to 10 s) for the exit; SIGKILL past that.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gateway did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `ringcast-gateway` with `args` to completion (bounded: 20 s); exit code and stderr.
pub fn run_gateway(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast-gateway"))
        .args(args)
        .env_remove("RINGCAST_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringcast-gateway");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringcast-gateway {args:?} did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `tls_client.py` (python `websockets`) against `addr` trusting `ca`; its JSON report.
pub fn python_client(addr: SocketAddr, ca: &Path, client_id: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls_client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(addr.to_string())
        .arg(ca)
        .arg(client_id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (the README's test command installs websockets)");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tls_client.py did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "tls_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tls_client.py prints JSON")
}
