//! A minimal HTTP/1.1 GET, enough to read a server's `/stats` JSON after a run; the head is read
//! by [`ringcast_net::http1::client`], a chunked body is taken apart with `httparse`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;

use ringcast_net::http1::client::parse_response_head;

/// Largest response read.
const MAX_RESPONSE: u64 = 1 << 20;

/// GETs `url` (http:// only); returns the status and the body.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("bad URL {url:?}: only http:// is supported"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("bad URL {url:?}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let fetch = async {
        let mut s = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let mut buf = Vec::new();
        s.take(MAX_RESPONSE)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| format!("GET {url}: no answer within 5 s"))??;
    parse(&buf).ok_or_else(|| format!("GET {url}: not an HTTP response"))
}

/// The status and body of a whole response (read until the server closed).
fn parse(buf: &[u8]) -> Option<(u16, String)> {
    let (head, len) = parse_response_head(buf).ok()??;
    let body = &buf[len..];
    let chunked = head
        .values("transfer-encoding")
        .any(|v| v.to_ascii_lowercase().windows(7).any(|w| w == b"chunked"));
    let body = if chunked {
        String::from_utf8_lossy(&dechunk(body)?).into_owned()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    Some((head.status, body))
}

/// The payload of a chunked body; `None` if it is cut or broken.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let httparse::Status::Complete((start, size)) = httparse::parse_chunk_size(body).ok()?
        else {
            return None;
        };
        let size = usize::try_from(size).ok()?;
        if size == 0 {
            return Some(out);
        }
        let rest = body.get(start..)?;
        out.extend_from_slice(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(r, (200, "{}".into()));
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n").unwrap();
        assert_eq!(r, (200, "{\"a\":1}".into()));
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: Chunked\r\n\r\n2;x=y\r\nno\r\n0\r\n\r\n").unwrap();
        assert_eq!(r, (503, "no".into()));
    }

    #[test]
    fn cut_or_broken_answers_are_not_responses() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
