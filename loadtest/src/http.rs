//! A minimal HTTP/1.1 GET, enough to read a server's `/stats` JSON after a run, on hyper's
//! client connection (which takes any body framing apart: a length, chunks, or the close); and
//! the `http://` URLs it and the server API's callers (`api_client.rs`) accept.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{CONNECTION, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest response body read.
const MAX_RESPONSE: usize = 1 << 20;

/// How long the whole GET may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where an `http://` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// The host to connect to.
    pub host: String,
    /// The port (80 when the URL names none).
    pub port: u16,
    /// host[:port] for the Host header.
    pub authority: String,
    /// Path and query (`/` when the URL has none).
    pub path: String,
}

impl HttpUrl {
    /// Parses `url`; only http:// is supported.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("bad URL {url:?}: only http:// is supported"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("bad URL {url:?}: no host"))?;
        Ok(HttpUrl {
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(80),
            authority: uri.authority().map_or(host, |a| a.as_str()).to_owned(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        })
    }
}

/// GETs `url` (http:// only); returns the status and the body.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    let HttpUrl {
        host,
        port,
        authority,
        path,
    } = HttpUrl::parse(url)?;
    let request = Request::get(path)
        .header(HOST, authority)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let fetch = async {
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let answer = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            // No second request: the connection ends once this answer has been read.
            drop(sender);
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        // The connection is driven beside the answer, and ends with it.
        let (answer, _) = tokio::join!(answer, connection);
        answer
    };
    tokio::time::timeout(TIMEOUT, fetch)
        .await
        .map_err(|_| format!("GET {url}: no answer within 5 s"))?
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// GETs `/stats` from a server that answers `answer` and closes.
    async fn get_answered(answer: &'static [u8]) -> Result<(u16, String), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                if s.read_buf(&mut got).await.unwrap() == 0 {
                    return;
                }
            }
            s.write_all(answer).await.unwrap();
        });
        get(&format!("http://{addr}/stats")).await
    }

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.authority.as_str(),
                u.path.as_str()
            ),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/")
        );
        let u = HttpUrl::parse("http://gw/base/stats?x=1").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/base/stats?x=1"));
        assert!(HttpUrl::parse("https://gw").is_err());
        assert!(HttpUrl::parse("http://").is_err());
    }

    #[tokio::test]
    async fn plain_and_chunked() {
        let r = get_answered(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
        assert_eq!(r, Ok((200, "{}".into())));
        let r = get_answered(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n").await;
        assert_eq!(r, Ok((200, "{\"a\":1}".into())));
        let r = get_answered(b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: Chunked\r\n\r\n2;x=y\r\nno\r\n0\r\n\r\n").await;
        assert_eq!(r, Ok((503, "no".into())));
    }

    #[tokio::test]
    async fn cut_or_broken_answers_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        ] {
            let r = get_answered(bad).await;
            assert!(r.is_err(), "{:?}: {r:?}", String::from_utf8_lossy(bad));
        }
    }
}
