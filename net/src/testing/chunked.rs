//! An in-memory reader that hands its bytes out in given pieces and counts what was taken, for
//! fuzzing the readers that face the network: any bytes, any split, and how much they consumed.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Yields `bytes` in pieces of the given sizes (cycled; each read takes at most one piece and
/// at most what the caller's buffer holds), then end of stream.
#[derive(Debug)]
pub struct ChunkedReader {
    bytes: Vec<u8>,
    pieces: Vec<usize>,
    next_piece: usize,
    /// Bytes handed out so far.
    pub taken: usize,
}

impl ChunkedReader {
    /// `bytes`, split into `pieces` (sizes of 0 count as 1; empty means one piece).
    pub fn new(bytes: Vec<u8>, pieces: Vec<usize>) -> Self {
        ChunkedReader {
            bytes,
            pieces,
            next_piece: 0,
            taken: 0,
        }
    }
}

impl AsyncRead for ChunkedReader {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let piece = match this.pieces.get(this.next_piece % this.pieces.len().max(1)) {
            Some(&p) => p.max(1),
            None => usize::MAX,
        };
        this.next_piece += 1;
        let left = this.bytes.len() - this.taken;
        let n = piece.min(left).min(buf.remaining());
        buf.put_slice(&this.bytes[this.taken..this.taken + n]);
        this.taken += n;
        Poll::Ready(Ok(()))
    }
}
