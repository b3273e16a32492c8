//! One kept-alive HTTP/1.1 connection to the server API: `POST <base>/api/<method>` with a JSON
//! body and `Authorization: apikey KEY`, one call at a time, on hyper's client connection.
//!
//! hyper takes the answer's framing apart (a length or chunks) and keeps the connection open
//! between calls, as a backend's HTTP client would; a call is answered before the next is sent.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::HttpUrl;

/// Largest answer body read: a `batch` of 10 000 publishes is answered in ~600 KB.
const MAX_ANSWER: usize = 16 << 20;

/// What the API answered.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

/// A kept-alive connection to the API; its connection task ends when this is dropped.
pub struct ApiConn {
    sender: SendRequest<Full<Bytes>>,
    authority: HeaderValue,
    auth: HeaderValue,
    /// The base URL's path without its trailing `/`; calls go to `{base}/api/{method}`.
    base: String,
    timeout: Duration,
}

impl ApiConn {
    /// Connects to `url` within `timeout`; every call then has `timeout` to be answered.
    pub async fn open(url: &HttpUrl, key: &str, timeout: Duration) -> Result<ApiConn, String> {
        let at = format!("{}:{}", url.host, url.port);
        let authority = HeaderValue::from_str(&url.authority)
            .map_err(|_| format!("{}: not usable as a Host header", url.authority))?;
        let auth = HeaderValue::from_str(&format!("apikey {key}"))
            .map_err(|_| "--api-key: not usable in an Authorization header".to_owned())?;
        let connect = async {
            let stream = TcpStream::connect(at.as_str())
                .await
                .map_err(|e| format!("connecting to the API at {at}: {e}"))?;
            stream
                .set_nodelay(true)
                .map_err(|e| format!("connecting to the API at {at}: {e}"))?;
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("connecting to the API at {at}: {e}"))
        };
        let (sender, connection) =
            tokio::time::timeout(timeout, connect).await.map_err(|_| {
                format!("connecting to the API at {at}: no connection within {timeout:?}")
            })??;
        // Ends when the sender is dropped (or the server closes the connection).
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let base = url.path.split('?').next().unwrap_or("");
        Ok(ApiConn {
            sender,
            authority,
            auth,
            base: base.trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    /// Calls `method` with `body`; an error when the connection failed or the answer did not
    /// come within the timeout (the connection is then unusable: whether the server ran the
    /// call is unknown).
    pub async fn call(&mut self, method: &str, body: Bytes) -> Result<Answer, String> {
        let request = Request::post(format!("{}/api/{method}", self.base))
            .header(HOST, self.authority.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("building the {method} request: {e}"))?;
        let answer = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("{method}: {e}"))?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| format!("{method}: {e}"))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("{method}: reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| format!("{method}: no answer within {:?}", self.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Two calls on one connection reach a server that answers each, the second in chunks.
    #[tokio::test]
    async fn calls_share_one_kept_alive_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in [
                &b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n{\"result\":1}"[..],
                b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            ] {
                let mut got = Vec::new();
                // The head, then the body `{}`.
                while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"{}")) {
                    assert!(s.read_buf(&mut got).await.unwrap() > 0);
                }
                seen.push(String::from_utf8(got).unwrap());
                s.write_all(answer).await.unwrap();
            }
            seen
        });
        let url = HttpUrl::parse(&format!("http://{addr}/base/")).unwrap();
        let mut conn = ApiConn::open(&url, "k1", Duration::from_secs(5))
            .await
            .unwrap();
        let a = conn
            .call("publish", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!((a.status, &a.body[..]), (200, &b"{\"result\":1}"[..]));
        let b = conn.call("batch", Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!((b.status, &b.body[..]), (401, &b"{}"[..]));
        let seen = served.await.unwrap();
        assert!(
            seen[0].starts_with("POST /base/api/publish HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].starts_with("POST /base/api/batch HTTP/1.1\r\n"),
            "{}",
            seen[1]
        );
        for s in &seen {
            let lower = s.to_ascii_lowercase();
            assert!(lower.contains("authorization: apikey k1\r\n"), "{s}");
            assert!(lower.contains("content-type: application/json\r\n"), "{s}");
        }
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let url = HttpUrl::parse(&format!("http://{addr}")).unwrap();
        let mut conn = ApiConn::open(&url, "k", Duration::from_millis(200))
            .await
            .unwrap();
        let e = conn.call("publish", Bytes::new()).await.unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
    }
}
