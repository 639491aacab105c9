//! Hostile WebSocket peers: protocol violations, oversized frames, pings never answered, and a
//! peer cut off mid-message.

use crate::Alone;
use crate::common::*;
use intercessor::Config;
use intercessor::edge::CLOSE_GRACE;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Declares a frame far over the limit and then really streams its payload, as fast as the relay
/// takes it, while reading: the relay must close with 1009 without taking it all.
async fn streaming_oversized_frame(addr: SocketAddr, declared: u64) -> (Ending, u64) {
    let (stream, pending) = raw_websocket(addr, "/server").await;
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let mut sent = 0u64;
        if writer
            .write_all(&frame_header(0x81, declared, true))
            .await
            .is_err()
        {
            return sent;
        }
        let chunk = masked(&[b'x'; 4096]);
        while sent < declared {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let ending = read_close(&mut reader, pending).await;
    let sent = timeout(PATIENCE, writing)
        .await
        .expect("the writer stops once the relay drops")
        .expect("no panic");
    (ending, sent)
}

/// Every WebSocket-level attack, by name, with the close code the README documents for it, for
/// a relay whose `--max-message-bytes` is `max_message_bytes`.
fn websocket_attacks(max_message_bytes: u64) -> Vec<(&'static str, Vec<u8>, u16)> {
    let over = max_message_bytes + 1;
    let mut header_only = frame_header(0x81, 1 << 30, true);
    header_only.extend(masked(b"{\"to\""));
    let mut just_over = frame_header(0x81, over, true);
    just_over.extend(masked(b"{\"to\""));
    let mut max_length = frame_header(0x82, u64::MAX, true);
    max_length.extend(masked(b"xx"));
    let half = (max_message_bytes / 2 + 10) as usize;
    let mut fragmented = client_frame(0x01, &vec![b'a'; half]);
    fragmented.extend(client_frame(0x00, &vec![b'a'; half]));
    fragmented.extend(client_frame(0x80, b"a"));
    let mut many_fragments = client_frame(0x01, &[b'a'; 100]);
    for _ in 0..max_message_bytes / 100 + 5 {
        many_fragments.extend(client_frame(0x00, &[b'a'; 100]));
    }
    let mut split_utf8 = client_frame(0x01, b"{\"to\":\"\xc3");
    split_utf8.extend(client_frame(0x80, b"\x28\"}"));
    let mut unmasked = frame_header(0x81, 5, false);
    unmasked.extend_from_slice(b"hello");
    let mut interleaved = client_frame(0x01, b"{\"to\":");
    interleaved.extend(client_frame(0x81, b"{}"));
    vec![
        (
            "invalid UTF-8 in a text frame",
            client_frame(0x81, b"{\"to\":\"\xff\xfe\",\"type\":\"X\"}"),
            1007,
        ),
        ("invalid UTF-8 across two fragments", split_utf8, 1007),
        ("a header declaring 1 GiB, then 5 bytes", header_only, 1009),
        ("a header declaring one byte too many", just_over, 1009),
        ("a header declaring 2^64-1 bytes", max_length, 1009),
        ("two fragments over the limit together", fragmented, 1009),
        ("many small fragments over the limit", many_fragments, 1009),
        (
            "a ping with a 126-byte payload",
            client_frame(0x89, &[7; 126]),
            1002,
        ),
        ("a fragmented ping", client_frame(0x09, b"x"), 1002),
        ("an unmasked text frame", unmasked, 1002),
        ("reserved data opcode 0x3", client_frame(0x83, b"{}"), 1002),
        (
            "reserved control opcode 0xB",
            client_frame(0x8b, b"x"),
            1002,
        ),
        ("RSV1 set", client_frame(0xc1, b"{}"), 1002),
        ("RSV2 and RSV3 set", client_frame(0xb1, b"{}"), 1002),
        (
            "a continuation with nothing to continue",
            client_frame(0x80, b"x"),
            1002,
        ),
        ("a new message inside a fragmented one", interleaved, 1002),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_violations_get_their_documented_close_and_lose_the_connection() {
    let turn = Alone::begin().await;
    const LIMIT: usize = 1024;
    let relay = TestRelay::start(Config {
        max_message_bytes: LIMIT,
        ..config()
    })
    .await;
    let addr = relay.addr;
    let (endings, (streamed, streamed_bytes)) = turn
        .amid_bystanders(Endpoint::Plain(addr), async move {
            let mut attackers = JoinSet::new();
            for (what, bytes, code) in websocket_attacks(LIMIT as u64) {
                attackers.spawn(async move { (what, code, attack_websocket(addr, &bytes).await) });
            }
            let streamed = tokio::spawn(streaming_oversized_frame(addr, 64 << 20));
            (surface_all(attackers).await, surface(streamed.await))
        })
        .await;

    for (what, code, ending) in &endings {
        eprintln!("{what}: {ending:?}");
        assert_eq!(ending.code, *code, "{what}: {ending:?}");
        assert!(!ending.reason.is_empty(), "{what}: {ending:?}");
        assert_eq!(ending.before, [0x81], "{what}: HELLO, then the close");
        assert!(
            ending.close_to_drop < CLOSE_GRACE + SLACK,
            "{what}: the TCP connection outlived the close by {:?}",
            ending.close_to_drop
        );
    }
    eprintln!("streamed 64 MiB frame: {streamed:?}, {streamed_bytes} bytes written");
    assert_eq!(streamed.code, 1009, "{streamed:?}");
    assert!(
        streamed_bytes < 64 << 20,
        "the relay took the whole oversized frame"
    );
    assert!(streamed.close_to_drop < CLOSE_GRACE + SLACK, "{streamed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_pings_is_closed_4408_and_dropped_within_a_second() {
    let turn = Alone::begin().await;
    let idle_timeout = Duration::from_millis(500);
    let relay = TestRelay::start(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout,
        ..config()
    })
    .await;
    let addr = relay.addr;
    // Bystanders read (and so answer pings) and send every 100 ms or so: they are never idle.
    let endings = turn
        .amid_bystanders(Endpoint::Plain(addr), async move {
            let mut silent = JoinSet::new();
            for _ in 0..20 {
                silent.spawn(async move {
                    // Before the upgrade: the relay's idle clock starts at it.
                    let opened = Instant::now();
                    let (mut stream, pending) = raw_websocket(addr, "/server").await;
                    let ending = read_close(&mut stream, pending).await;
                    (opened.elapsed(), ending)
                });
            }
            surface_all(silent).await
        })
        .await;

    for (lived, ending) in &endings {
        assert_eq!(
            (ending.code, ending.reason.as_str()),
            (4408, "idle timeout")
        );
        assert_eq!(ending.before.first(), Some(&0x81), "HELLO first");
        assert!(
            ending.before[1..].iter().all(|&first| first == 0x89),
            "only pings between HELLO and the close: {:x?}",
            ending.before
        );
        assert!(ending.before.len() >= 4, "pinged every 100 ms: {ending:?}");
        assert!(*lived >= idle_timeout, "closed before the idle timeout");
        // README: "the TCP connection is dropped within a second of the close frame even if the
        // peer never answers"; the slack is for a loaded machine.
        assert!(
            ending.close_to_drop < CLOSE_GRACE + Duration::from_millis(500),
            "dropped {:?} after the close",
            ending.close_to_drop
        );
    }
    let slowest = endings.iter().map(|(_, e)| e.close_to_drop).max();
    eprintln!("4408: slowest drop after close {slowest:?}");
}

#[tokio::test]
async fn a_peer_cut_off_mid_message_reads_its_1009_and_a_clean_end_not_a_reset() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        max_message_bytes: 4096,
        ..config()
    })
    .await;
    let (stream, pending) = raw_websocket(relay.addr, "/server").await;
    let (mut reader, mut writer) = stream.into_split();
    // A 10 KB message in 1 KB fragments, in one write: most of it is still unread when the
    // relay refuses the message.
    let mut message = Vec::new();
    for n in 0..10u8 {
        let first = match n {
            0 => 0x01,
            9 => 0x80,
            _ => 0x00,
        };
        message.extend(client_frame(first, &[b'a'; 1024]));
    }
    writer.write_all(&message).await.expect("write the message");
    let mut buffer = pending;
    let mut chunk = [0u8; 4096];
    let close = timeout(PATIENCE, async {
        loop {
            if let Some((frame, used)) = parse_server_frame(&buffer) {
                buffer.drain(..used);
                if frame.first == 0x88 {
                    return frame.payload;
                }
                continue;
            }
            let n = reader
                .read(&mut chunk)
                .await
                .expect("read before the close");
            assert!(n > 0, "ended before the close frame");
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the close arrives");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009);
    assert_eq!(&close[2..], b"message too big");
    // The relay half-closes and reads on: its end arrives as EOF, not as a reset.
    let end = timeout(PATIENCE, reader.read(&mut chunk))
        .await
        .expect("the end arrives");
    assert!(
        matches!(end, Ok(0)),
        "expected EOF after the close, got {end:?}"
    );
    drop(writer);
    turn.no_task_panicked();
}
