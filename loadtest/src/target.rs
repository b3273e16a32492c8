//! Server targets: --url parsing, resolution, the per-client URL, and source-address choice.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio_tungstenite::tungstenite::http::Uri;

use crate::error::RunError;

/// One server to connect to, resolved once at start.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given (no client_id).
    pub url: String,
    /// host[:port] for the Host header.
    pub authority: String,
    /// Path and query of the upgrade request.
    pub path_and_query: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// `wss://`: TLS first (trusting `--tls-ca`).
    pub tls: bool,
    /// The host name (or address) the TLS certificate must name.
    pub host: String,
}

impl Target {
    /// Parses and resolves a `ws://host[:port]/path` or `wss://host[:port]/path` URL.
    pub async fn resolve(url: &str) -> Result<Target, RunError> {
        let bad = |reason: &str| RunError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            Some(other) => return Err(bad(&format!("scheme {other}:// is not ws:// or wss://"))),
            None => return Err(bad("missing scheme: expected ws://host:port/path")),
        };
        let host = uri.host().ok_or_else(|| bad("missing host"))?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((host_for_lookup, port))
            .await
            .map_err(|e| bad(&format!("cannot resolve host {host}: {e}")))?
            .next()
            .ok_or_else(|| bad(&format!("host {host} resolves to no address")))?;
        // Without any user:password@, which belongs in no Host header.
        let authority = uri
            .authority()
            .map(|a| a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h))
            .unwrap_or(host)
            .to_owned();
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        Ok(Target {
            url: url.to_owned(),
            authority,
            path_and_query,
            addr,
            tls,
            host: host_for_lookup.to_owned(),
        })
    }

    /// The URL a client with `client_id` connects to.
    pub fn client_url(&self, client_id: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!(
            "{scheme}://{}{}",
            self.authority,
            self.client_path(client_id)
        )
    }

    /// Path and query of the upgrade request of a client with `client_id`.
    pub fn client_path(&self, client_id: &str) -> String {
        let sep = if self.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}client_id={client_id}", self.path_and_query)
    }

    /// `http://host:port/stats` of the same server.
    pub fn stats_url(&self) -> String {
        format!("http://{}/stats", self.authority)
    }
}

/// Resolves every --url; at least one is required.
pub async fn resolve_all(urls: &[String]) -> Result<Vec<Target>, RunError> {
    if urls.is_empty() {
        return Err(RunError::Usage("at least one --url is needed".into()));
    }
    let mut targets = Vec::with_capacity(urls.len());
    for url in urls {
        targets.push(Target::resolve(url.trim()).await?);
    }
    Ok(targets)
}

/// Source addresses per --source-addrs; empty means "let the OS choose".
pub fn source_addrs(spec: &str, targets: &[Target]) -> Result<Vec<IpAddr>, RunError> {
    match spec.trim() {
        "none" | "" => Ok(Vec::new()),
        "auto" => {
            let all_loopback_v4 = targets
                .iter()
                .all(|t| matches!(t.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()));
            if all_loopback_v4 {
                Ok((1..=8u8)
                    .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
                    .collect())
            } else {
                Ok(Vec::new())
            }
        }
        list => list
            .split(',')
            .map(|s| {
                s.trim().parse::<IpAddr>().map_err(|e| {
                    RunError::Usage(format!("--source-addrs: {s:?} is not an IP address: {e}"))
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_and_builds_client_urls() {
        let t = Target::resolve("ws://127.0.0.1:9001/ws").await.unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.client_url("a"), "ws://127.0.0.1:9001/ws?client_id=a");
        assert_eq!(t.client_path("a"), "/ws?client_id=a");
        assert_eq!(t.stats_url(), "http://127.0.0.1:9001/stats");
        let t = Target::resolve("ws://u:p@127.0.0.1:9001/").await.unwrap();
        assert_eq!(t.authority, "127.0.0.1:9001");
        let t = Target::resolve("ws://127.0.0.1:9001/ws?x=1").await.unwrap();
        assert_eq!(t.client_url("b"), "ws://127.0.0.1:9001/ws?x=1&client_id=b");
        assert_eq!(
            source_addrs("auto", std::slice::from_ref(&t))
                .unwrap()
                .len(),
            8
        );
        assert!(source_addrs("none", &[t]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn wss_urls_go_over_tls_on_443_by_default() {
        let t = Target::resolve("wss://127.0.0.1/ws").await.unwrap();
        assert!(t.tls);
        assert_eq!((t.addr.port(), t.host.as_str()), (443, "127.0.0.1"));
        assert_eq!(t.client_url("a"), "wss://127.0.0.1/ws?client_id=a");
        let t = Target::resolve("ws://127.0.0.1/ws").await.unwrap();
        assert!(!t.tls);
        assert_eq!(t.addr.port(), 80);
    }

    #[tokio::test]
    async fn rejects_bad_urls() {
        for url in ["http://127.0.0.1:1/ws", "not a url", "127.0.0.1:9001"] {
            assert!(
                matches!(Target::resolve(url).await, Err(RunError::BadUrl { .. })),
                "{url}"
            );
        }
    }
}
