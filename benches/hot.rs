//! Criterion micro-benchmarks of the relay's pure per-message work, through its public API:
//! parsing an envelope, reading a join code, building the relayed frame, and (with
//! `--message-schema`) validating it.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use intercessor::relay::ids::JoinCode;
use intercessor::relay::protocol::{parse_incoming, relayed};
use std::hint::black_box;

/// A client id as the relay issues them (21 URL-safe characters).
const CLIENT_ID: &str = "Xq3V9rK_2mPz8LwN4bT1c";

/// An OFFER envelope padded with SDP lines to exactly `len` bytes, like a browser's first offer
/// cut short: escaped CRLFs, nested object, the usual field order.
fn offer(len: usize) -> String {
    let head = r#"{"to":"7KQ2MX","type":"OFFER","message":{"type":"offer","sdp":"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=ice-options:trickle\r\na=fingerprint:sha-256 "#;
    let tail = r#"\r\na=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n"}}"#;
    let fill = len.saturating_sub(head.len() + tail.len());
    let fingerprint: String = (0..fill)
        .map(|i| {
            if i % 3 == 2 {
                ':'
            } else {
                char::from(b'A' + (i % 6) as u8)
            }
        })
        .collect();
    let text = format!("{head}{fingerprint}{tail}");
    assert_eq!(text.len(), len, "the offer fits in {len} bytes");
    text
}

/// A trickled ICE candidate, as browsers send them.
const CANDIDATE: &str = r#"{"to":"Xq3V9rK_2mPz8LwN4bT1c","type":"CANDIDATE","message":{"candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 192.168.1.20 rport 46154 generation 0 ufrag EsAw network-cost 999","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"EsAw"}}"#;

fn parse(c: &mut Criterion) {
    let offer = offer(512);
    let mut group = c.benchmark_group("parse_incoming");
    for (name, text) in [("offer_512B", offer.as_str()), ("candidate", CANDIDATE)] {
        parse_incoming(text).expect("the sample envelope is valid");
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| parse_incoming(black_box(text)).map(|i| i.message.is_some()))
        });
    }
    group.finish();
}

fn join_code(c: &mut Criterion) {
    let mut group = c.benchmark_group("JoinCode::parse");
    for (name, text) in [
        ("clean", "7KQ2MX"),
        ("sloppy", " 7kq-2mx "),
        ("lookalikes", "oil-0ZZ"),
    ] {
        JoinCode::parse(text).expect("the sample code is valid");
        group.bench_function(name, |b| b.iter(|| JoinCode::parse(black_box(text))));
    }
    group.finish();
}

fn frame(c: &mut Criterion) {
    let offer = offer(512);
    let mut group = c.benchmark_group("relayed");
    for (name, text) in [("offer_512B", offer.as_str()), ("candidate", CANDIDATE)] {
        let incoming = parse_incoming(text).expect("the sample envelope is valid");
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                relayed(
                    black_box(CLIENT_ID),
                    black_box(&incoming.kind),
                    incoming.message,
                )
            })
        });
    }
    // Parse then build: the whole pure part of relaying one message.
    group.throughput(Throughput::Bytes(offer.len() as u64));
    group.bench_function("parse_and_build_offer_512B", |b| {
        b.iter(|| {
            let incoming = parse_incoming(black_box(&offer)).expect("valid");
            relayed(CLIENT_ID, &incoming.kind, incoming.message)
        })
    });
    group.finish();
}

/// What `--message-schema examples/webrtc-signaling.schema.json` adds per message: the check of a
/// typical WebRTC set (an OFFER, a CANDIDATE), on top of the parse above. Without the option the
/// relay never calls it.
#[cfg(feature = "schema")]
fn schema(c: &mut Criterion) {
    use intercessor::relay::schema::MessageSchemas;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/webrtc-signaling.schema.json"
    );
    let schemas = MessageSchemas::load(std::path::Path::new(path)).expect("the example loads");
    let offer = offer(512);
    let mut group = c.benchmark_group("schema_check");
    for (name, text) in [("offer_512B", offer.as_str()), ("candidate", CANDIDATE)] {
        let incoming = parse_incoming(text).expect("the sample envelope is valid");
        schemas
            .check(&incoming.kind, incoming.message)
            .expect("the sample conforms to the example schema");
        group.bench_function(name, |b| {
            b.iter(|| schemas.check(black_box(&incoming.kind), black_box(incoming.message)))
        });
    }
    group.finish();
}

#[cfg(not(feature = "schema"))]
fn schema(_: &mut Criterion) {}

criterion_group!(hot, parse, join_code, frame, schema);
criterion_main!(hot);
