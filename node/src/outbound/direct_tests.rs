//! The direct path over a real link: frames handed to the link by the fan-out itself, and the
//! queue taking over (in order) whenever they cannot go that way.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::{Outbound, OutboundRx, Push, SERVICE_RESTART};
use crate::wire;
use crate::writer::write_loop;
use ringcast_net::link::{LinkStream, WINDOW};
use ringcast_net::split::SplitIo;
use ringcast_net::testing::link::{open_stream, pair, within};

/// A link over loopback: the gateway's end of one stream, and the node's end of it.
async fn stream_pair() -> (LinkStream, LinkStream) {
    let (opener, _acceptor, mut opened) = pair().await;
    open_stream(&opener, &mut opened).await
}

/// A connection's queue that hands frames to `node_end` directly.
fn direct_queue(node_end: &LinkStream) -> (std::sync::Arc<Outbound>, OutboundRx) {
    let (out, rx) = Outbound::new(1, "a".into(), 10_000, 8 << 20);
    out.send_directly(node_end.link_sender().unwrap());
    (out, rx)
}

/// Reads exactly `len` bytes from the gateway's end.
async fn read_len(gateway_end: &mut LinkStream, len: usize) -> Vec<u8> {
    let mut got = vec![0u8; len];
    within(gateway_end.read_exact(&mut got)).await.unwrap();
    got
}

#[tokio::test]
async fn an_idle_connection_gets_frames_without_its_writer() {
    let (mut gateway_end, node_end) = stream_pair().await;
    let (out, _rx) = direct_queue(&node_end);
    // No writer runs: only the direct path can deliver.
    let frames: Vec<Bytes> = (0..3).map(|i| wire::text(&format!("m{i}"))).collect();
    for f in &frames {
        assert_eq!(out.push(f), Push::Queued);
    }
    let want = frames.concat();
    assert_eq!(read_len(&mut gateway_end, want.len()).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_the_link_cannot_take_at_once_queue_and_everything_arrives_in_order() {
    let (mut gateway_end, node_end) = stream_pair().await;
    let (out, rx) = direct_queue(&node_end);
    let (_rd, wr) = node_end.split_io();
    tokio::spawn(write_loop(wr, rx, Duration::from_secs(60)));

    // Ten windows' worth, pushed while the gateway's end reads: the stream runs out of credit
    // again and again, frames queue behind the writer, and credit comes back while they wait.
    let frames: Vec<Bytes> = (0..10 * WINDOW / 100)
        .map(|i| wire::text(&format!("{i:0>96}")))
        .collect();
    let len = frames.iter().map(Bytes::len).sum();
    let reader = tokio::spawn(async move { read_len(&mut gateway_end, len).await });
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(out.push(f), Push::Queued);
        if i % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut want = BytesMut::new();
    frames.iter().for_each(|f| want.extend_from_slice(f));
    let got = within(reader).await.unwrap();
    let first_wrong = got.iter().zip(&want[..]).position(|(a, b)| a != b);
    assert_eq!(first_wrong, None, "bytes out of order");
}

#[tokio::test]
async fn a_close_goes_after_the_frames_handed_over_before_it() {
    let (mut gateway_end, node_end) = stream_pair().await;
    let (out, rx) = direct_queue(&node_end);
    let (_rd, wr) = node_end.split_io();
    let writer = tokio::spawn(write_loop(wr, rx, Duration::from_secs(60)));
    let frames: Vec<Bytes> = (0..3).map(|i| wire::text(&format!("m{i}"))).collect();
    for f in &frames {
        out.push(f);
    }
    out.close(SERVICE_RESTART);
    assert_eq!(out.push(&wire::text("late")), Push::Closed);
    within(writer).await.unwrap();
    let mut got = Vec::new();
    within(gateway_end.read_to_end(&mut got)).await.unwrap();
    let mut want = frames.concat();
    want.extend_from_slice(&wire::close(Some(1012), "node shutting down"));
    assert_eq!(got, want);
}

#[tokio::test]
async fn nothing_is_handed_over_past_a_queued_frame_or_one_the_writer_holds() {
    let (mut gateway_end, node_end) = stream_pair().await;
    let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
    let (a, b, c) = (wire::text("a"), wire::text("b"), wire::text("c"));
    // Queued before the direct path opens: `b` must wait behind it.
    out.push(&a);
    out.send_directly(node_end.link_sender().unwrap());
    out.push(&b);
    assert_eq!(rx.try_recv().ok(), Some(a.clone()));
    // The writer now holds `a` (not yet written), and `b`; `c` must wait behind them too.
    assert_eq!(rx.try_recv().ok(), Some(b.clone()));
    out.push(&c);
    assert_eq!(
        rx.try_recv().ok(),
        Some(c.clone()),
        "c overtook what the writer holds"
    );

    // Once the writer finds the queue empty, the next frame goes straight to the link.
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(rx.poll_next(&mut cx).is_pending());
    let d = wire::text("d");
    out.push(&d);
    assert!(rx.try_recv().is_err(), "d was queued, not handed over");
    assert_eq!(read_len(&mut gateway_end, d.len()).await, &d[..]);

    // A writer about to write a ping of its own holds the path too.
    assert!(rx.poll_next(&mut cx).is_pending());
    rx.hold();
    let e = wire::text("e");
    out.push(&e);
    assert_eq!(rx.try_recv().ok(), Some(e), "e went past the writer's ping");
}
