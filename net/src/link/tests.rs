use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;
use crate::testing::link::{open_stream, pair, sockets, within};

/// Waits (at most 5 s) until `cond` holds.
async fn until(mut cond: impl FnMut() -> bool) {
    within(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn bytes_cross_both_ways_and_a_half_close_reads_as_eof() {
    let (opener, _acceptor, mut opened) = pair().await;
    let mut a = opener.open().unwrap();
    a.write_all(b"GET /ws HTTP/1.1\r\n\r\n").await.unwrap();
    let mut b = within(opened.recv()).await.unwrap();
    let mut got = [0u8; 20];
    within(b.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"GET /ws HTTP/1.1\r\n\r\n");

    b.write_all(b"HTTP/1.1 101\r\n\r\n").await.unwrap();
    b.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(a.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"HTTP/1.1 101\r\n\r\n");
    // Half-closed: the other direction still works.
    a.write_all(b"more").await.unwrap();
    let mut more = [0u8; 4];
    within(b.read_exact(&mut more)).await.unwrap();
    assert_eq!(&more, b"more");
}

#[tokio::test]
async fn a_dropped_stream_ends_at_the_peer_and_its_writes_are_let_go() {
    let (opener, acceptor, mut opened) = pair().await;
    let mut a = opener.open().unwrap();
    a.write_all(b"x").await.unwrap();
    let b = within(opened.recv()).await.unwrap();
    drop(b);
    let mut rest = Vec::new();
    within(a.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    // Nobody reads them any more: taken and let go, as the peer's close already happened.
    within(a.write_all(b"after")).await.unwrap();
    drop(a);
    until(|| acceptor.streams() == 0 && opener.streams() == 0).await;
}

#[tokio::test]
async fn a_stream_nobody_reads_stalls_only_its_own_writer() {
    let (opener, _acceptor, mut opened) = pair().await;
    let mut slow = opener.open().unwrap();
    let mut fast = opener.open().unwrap();
    let _slow_peer = within(opened.recv()).await.unwrap();
    let mut fast_peer = within(opened.recv()).await.unwrap();

    // The slow stream takes exactly its window, then its writer waits.
    let chunk = vec![7u8; 4096];
    let mut sent = 0;
    while let Ok(Ok(())) =
        tokio::time::timeout(Duration::from_millis(200), slow.write_all(&chunk)).await
    {
        sent += chunk.len();
        assert!(sent <= WINDOW, "wrote past the window");
    }
    assert_eq!(sent, WINDOW);

    // Meanwhile the other stream moves many windows' worth.
    let total = 4 * WINDOW;
    let writer = tokio::spawn(async move {
        let data = vec![1u8; total];
        fast.write_all(&data).await.unwrap();
        fast
    });
    let mut got = vec![0u8; total];
    within(fast_peer.read_exact(&mut got)).await.unwrap();
    assert!(got.iter().all(|&b| b == 1));
    within(writer).await.unwrap();
}

#[tokio::test]
async fn reading_grants_the_window_back() {
    let (opener, _acceptor, mut opened) = pair().await;
    let mut a = opener.open().unwrap();
    a.write_all(b"hi").await.unwrap();
    let mut b = within(opened.recv()).await.unwrap();
    let total = 10 * WINDOW;
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; 2 + total];
        b.read_exact(&mut got).await.unwrap();
        got
    });
    within(a.write_all(&vec![3u8; total])).await.unwrap();
    let got = within(reader).await.unwrap();
    assert_eq!(&got[..2], b"hi");
    assert!(got[2..].iter().all(|&b| b == 3));
}

#[tokio::test]
async fn read_into_hands_over_buffers_up_to_a_limit_grants_credit_and_ends_at_eof() {
    let (opener, _acceptor, mut opened) = pair().await;
    let mut a = opener.open().unwrap();
    a.write_all(b"hi").await.unwrap();
    let b = within(opened.recv()).await.unwrap();
    let total = 10 * WINDOW;
    let writer = tokio::spawn(async move {
        a.write_all(&vec![3u8; total]).await.unwrap();
        a.shutdown().await.unwrap();
        a
    });
    let mut got = Vec::new();
    loop {
        let mut buf = BytesMut::new();
        let n = within(std::future::poll_fn(|cx| {
            b.poll_read_into(cx, &mut buf, 5_000)
        }))
        .await
        .unwrap();
        assert_eq!(n, buf.len());
        assert!(n <= 5_000, "took {n} bytes, more than asked for");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf);
    }
    // Ten windows only arrive if reading granted them back.
    assert_eq!(got.len(), 2 + total);
    assert_eq!(&got[..2], b"hi");
    assert!(got[2..].iter().all(|&b| b == 3));
    within(writer).await.unwrap();
}

#[tokio::test]
async fn a_stream_opened_past_the_links_own_cap_gets_the_full_reply_before_its_close() {
    let (opener_sock, accepted) = sockets().await;
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
    let (acceptor, driver) = Link::new(accepted, Bytes::new(), Role::Acceptor, 1, move |s| {
        let _ = opened_tx.send(s);
    });
    acceptor.set_full_reply(b"HTTP/1.1 503 Service Unavailable\r\n\r\nfull");
    tokio::spawn(driver);
    let (opener, driver) = Link::new(opener_sock, Bytes::new(), Role::Opener, MAX_STREAMS, |_| {});
    tokio::spawn(driver);
    let mut kept = opener.open().unwrap();
    kept.write_all(b"x").await.unwrap();
    let _held = within(opened_rx.recv()).await.unwrap();
    // The acceptor's table is full: the next stream is refused with the reply, then closed.
    let mut refused = opener.open().unwrap();
    let mut got = Vec::new();
    within(refused.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"HTTP/1.1 503 Service Unavailable\r\n\r\nfull");
}

#[tokio::test]
async fn a_dead_socket_fails_every_stream() {
    let (sock, accepted) = sockets().await;
    let (opener, driver) = Link::new(sock, Bytes::new(), Role::Opener, MAX_STREAMS, |_| {});
    let driver = tokio::spawn(driver);
    let mut a = opener.open().unwrap();
    let mut b = opener.open().unwrap();
    drop(accepted);
    let mut buf = [0u8; 8];
    let err = within(a.read(&mut buf)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert!(within(b.write_all(b"x")).await.is_err());
    within(driver).await.unwrap().ok();
    assert!(!opener.is_usable());
    assert!(opener.open().is_err());
}

#[tokio::test]
async fn garbage_on_the_socket_ends_the_link() {
    let (sock, accepted) = sockets().await;
    let (acceptor, driver) = Link::new(accepted, Bytes::new(), Role::Acceptor, MAX_STREAMS, |_| {});
    let driver = tokio::spawn(driver);
    let mut sock = sock;
    sock.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let err = within(driver).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(!acceptor.is_usable());
    // The peer sees the link close.
    let mut rest = Vec::new();
    within(sock.read_to_end(&mut rest)).await.ok();
}

#[tokio::test]
async fn data_beyond_the_window_ends_the_link() {
    let (sock, accepted) = sockets().await;
    // The accepted stream is kept, unread, so its window fills.
    let (kept_tx, _kept_rx) = mpsc::unbounded_channel();
    let (_acceptor, driver) = Link::new(
        accepted,
        Bytes::new(),
        Role::Acceptor,
        MAX_STREAMS,
        move |s| {
            let _ = kept_tx.send(s);
        },
    );
    let driver = tokio::spawn(driver);
    let mut sock = sock;
    let mut frames = Vec::new();
    push_frame(&mut frames, &mut None, OPEN, 1, 0, &[]);
    let chunk = vec![0u8; MAX_PAYLOAD];
    for _ in 0..=WINDOW / MAX_PAYLOAD {
        push_frame(&mut frames, &mut None, DATA, 1, MAX_PAYLOAD as u32, &chunk);
    }
    sock.write_all(&frames).await.unwrap();
    let err = within(driver).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_dead_after_three_keepalives() {
    let (sock, accepted) = sockets().await;
    // The peer reads nothing and answers nothing, but keeps its socket open.
    let _silent = accepted;
    let (opener, driver) = Link::new(sock, Bytes::new(), Role::Opener, MAX_STREAMS, |_| {});
    let started = Instant::now();
    let err = driver.await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() >= 3 * KEEPALIVE);
    assert!(!opener.is_usable());
}

#[tokio::test(start_paused = true)]
async fn an_idle_link_with_a_live_peer_stays_up() {
    // Paused time jumps to the next timer whenever the runtime is idle, even while a ping or
    // pong is still on its way through the kernel; a task that never sleeps keeps the runtime
    // busy, so time moves only by the steps below, with real time for the sockets between.
    let spin = tokio::spawn(async {
        loop {
            tokio::task::yield_now().await;
        }
    });
    let (opener, acceptor, mut opened) = pair().await;
    let mut a = opener.open().unwrap();
    a.write_all(b"x").await.unwrap();
    let mut b = opened.recv().await.unwrap();
    // Nothing moves for ten keepalive periods, apart from the links' own pings.
    for _ in 0..100 {
        tokio::time::advance(KEEPALIVE / 10).await;
        for _ in 0..5 {
            std::thread::sleep(Duration::from_micros(200));
            tokio::task::yield_now().await;
        }
    }
    spin.abort();
    assert!(opener.is_alive() && acceptor.is_alive());
    b.write_all(b"y").await.unwrap();
    let mut got = [0u8; 2];
    b.read_exact(&mut got[..1]).await.unwrap();
    a.read_exact(&mut got[1..]).await.unwrap();
    assert_eq!(&got, b"xy");
}

#[tokio::test]
async fn split_halves_read_and_write_and_the_stream_closes_when_both_are_gone() {
    let (opener, _acceptor, mut opened) = pair().await;
    let mut a = opener.open().unwrap();
    a.write_all(b"hi").await.unwrap();
    let (mut rd, mut wr) = within(opened.recv()).await.unwrap().split();
    let mut got = [0u8; 2];
    within(rd.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"hi");

    drop(rd);
    // The writing half still carries the stream...
    wr.write_all(b"back").await.unwrap();
    let mut back = [0u8; 4];
    within(a.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"back");
    // ...until it goes too: then the peer reads the end of the stream.
    drop(wr);
    let mut rest = Vec::new();
    within(a.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn emptied_receive_buffers_are_reused_idle_streams_hold_none_and_spares_are_bounded() {
    let (opener, _acceptor, mut opened) = pair().await;
    let count = SPARE_MAX + 100;
    let mut near = Vec::new();
    let mut far = Vec::new();
    for _ in 0..count {
        let mut a = opener.open().unwrap();
        a.write_all(b"open").await.unwrap();
        far.push(within(opened.recv()).await.unwrap());
        near.push(a);
    }
    // (streams holding unread bytes, streams holding a buffer, spare buffers) at the near end.
    let state = || {
        let inner = opener.shared.lock();
        let unread = inner.streams.values().filter(|s| !s.rx.is_empty()).count();
        let held = inner
            .streams
            .values()
            .filter(|s| s.rx.capacity() > 0)
            .count();
        (unread, held, inner.spare.len())
    };
    for round in 0..2u8 {
        for b in &mut far {
            b.write_all(&[round; 100]).await.unwrap();
        }
        until(|| state().0 >= count).await;
        // More streams received bytes than there are spares: every spare went to one.
        assert_eq!(state().2, 0, "round {round}: spare buffers left unused");
        for a in &mut near {
            let mut got = [0u8; 100];
            within(a.read_exact(&mut got)).await.unwrap();
            assert_eq!(got, [round; 100]);
        }
        // Read out, no stream holds a buffer, and the link keeps only SPARE_MAX of them.
        assert_eq!(state(), (0, 0, SPARE_MAX), "round {round}");
    }
}

#[tokio::test]
async fn finish_waits_for_the_streams_and_what_they_wrote_and_close_drops_it() {
    for graceful in [true, false] {
        let (opener, acceptor, mut opened) = pair().await;
        let (mut a, mut b) = open_stream(&opener, &mut opened).await;
        // Queued on the acceptor's link, and the link told to end before its writer has run.
        b.write_all(b"last words").await.unwrap();
        if !graceful {
            acceptor.close();
            let mut got = Vec::new();
            let _ = within(a.read_to_end(&mut got)).await;
            assert!(got.is_empty(), "close drops what waits: {got:?}");
            continue;
        }
        acceptor.finish();
        let mut got = [0u8; 10];
        within(a.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"last words");
        // The stream is still open, so the link stays up and carries it...
        b.write_all(b" and more").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(acceptor.is_alive() && opener.is_alive());
        // ...until it is gone: then the link ends, after the stream's last bytes and its end.
        drop(b);
        let mut rest = Vec::new();
        within(a.read_to_end(&mut rest)).await.unwrap();
        assert_eq!(rest, b" and more");
        until(|| !acceptor.is_alive() && !opener.is_alive()).await;
    }
}

#[tokio::test]
async fn spares_are_whole_buffers_of_bounded_size_when_reads_take_part_of_a_burst() {
    let (opener, _acceptor, mut opened) = pair().await;
    let (first, mut b) = open_stream(&opener, &mut opened).await;
    // A burst of 100 frames grows the near end's receive buffer well past a spare's size...
    for _ in 0..100 {
        b.write_all(&[7u8; 100]).await.unwrap();
    }
    until(|| {
        let inner = opener.shared.lock();
        inner.streams.values().map(|s| s.rx.len()).sum::<usize>() == 10_000
    })
    .await;
    // ...and a reader that takes at most 4 KiB at a time and writes it on, as a gateway tunnel
    // does, drains it, then finds nothing more.
    let mut buf = BytesMut::new();
    let mut total = 0;
    while total < 10_000 {
        let n = within(std::future::poll_fn(|cx| {
            first.poll_read_into(cx, &mut buf, 4096)
        }))
        .await
        .unwrap();
        assert!(n <= 4096);
        total += n;
        buf.advance(n);
    }
    let idle = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(first.poll_read_into(cx, &mut buf, 4096).is_pending())
    })
    .await;
    assert!(idle);
    // Whatever came back is kept only if the whole of it is a spare's size.
    let sizes: Vec<usize> = opener
        .shared
        .lock()
        .spare
        .drain(..)
        .map(|b| Vec::from(b).capacity())
        .collect();
    assert!(!sizes.is_empty(), "nothing was kept for reuse");
    assert!(
        sizes.iter().all(|&c| (RX_BUF..=SPARE_CAP_MAX).contains(&c)),
        "spare sizes {sizes:?}"
    );
}

mod fuzz {
    use proptest::prelude::*;

    use super::super::frame::{decode, encode, HEADER_LEN};
    use super::super::*;

    fn arb_frame() -> impl Strategy<Value = (u8, u32, u32, Vec<u8>)> {
        // Kinds past the known ones too, few stream ids so frames meet the same streams.
        (
            0u8..=8,
            0u32..6,
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..2048),
        )
            .prop_map(|(kind, stream, len, payload)| match kind {
                OPEN | DATA => (kind, stream, payload.len() as u32, payload),
                _ => (kind, stream, len, Vec::new()),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a peer sends, applying it never panics, holds no more streams than allowed
        /// and no stream more unread bytes than its window; a frame that breaks the protocol is
        /// an error (the link closes with it), never a crash.
        #[test]
        fn any_frames_leave_the_acceptor_within_its_bounds(
            frames in prop::collection::vec(arb_frame(), 0..64),
            garbage in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut wire = Vec::new();
            for (kind, stream, len, payload) in &frames {
                encode(&mut wire, *kind, *stream, *len, payload);
            }
            wire.extend_from_slice(&garbage);
            let mut inner = Inner { max_streams: 3, next_id: 1, ..Inner::default() };
            inner.full_reply = vec![b'x'; 200];
            // The most one frame may make this end reply: a refusal's DATA and its CLOSE. With
            // the reader, which stops once OUT_CAP bytes wait, that bounds `out`.
            let most = 2 * HEADER_LEN + inner.full_reply.len();
            let mut wake = Vec::new();
            let mut at = 0;
            while let Ok(Some((f, n))) = decode(&wire[at..]) {
                at += n;
                let before = inner.out.len();
                if inner
                    .receive(Role::Acceptor, f.kind, f.stream, f.len, f.payload, &mut wake)
                    .is_err()
                {
                    break;
                }
                prop_assert!(inner.out.len() - before <= most, "one frame queued {} bytes", inner.out.len() - before);
                prop_assert!(inner.streams.len() <= 3);
                for slot in inner.streams.values() {
                    prop_assert!(slot.rx.len() <= WINDOW);
                    prop_assert!(slot.credit <= WINDOW);
                }
            }
        }
    }
}
