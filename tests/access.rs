//! Who may connect: the passphrase for servers, the origin allow-list, and the handshake rules.

mod common;

use common::{TestPeer, TestRelay, config, raw_http, status_of};
use intercessor::Config;
use rstest::rstest;
use tokio_tungstenite::tungstenite::Error as WsError;

fn guarded() -> Config {
    Config {
        passphrase: Some("open sesame".into()),
        ..config()
    }
}

#[tokio::test]
async fn passphrase_by_bearer_header_registers() {
    let relay = TestRelay::start(guarded()).await;
    let ws = TestPeer::connect_with(
        &relay.url("/server"),
        &[("authorization", "Bearer open sesame")],
    )
    .await
    .expect("upgrade");
    let mut server = TestPeer {
        ws,
        id: String::new(),
    };
    assert_eq!(server.recv().await["type"], "HELLO");
}

#[tokio::test]
async fn passphrase_by_query_registers_and_clients_need_none() {
    let relay = TestRelay::start(guarded()).await;
    let mut server = TestPeer::join(&relay.url("/server?passphrase=open%20sesame")).await;
    TestPeer::client_of(&relay, &mut server).await;
}

#[rstest]
#[case("/server", None)]
#[case("/server?passphrase=wrong", None)]
#[case("/server?passphrase=open%20sesam", None)]
#[case("/server", Some("Bearer wrong"))]
#[case("/server", Some("Basic open sesame"))]
#[case("/server", Some("bearer"))]
#[tokio::test]
async fn wrong_or_missing_passphrase_is_unauthorized(
    #[case] path: &str,
    #[case] authorization: Option<&str>,
) {
    let relay = TestRelay::start(guarded()).await;
    let headers: Vec<_> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let ws = TestPeer::connect_with(&relay.url(path), &headers)
        .await
        .expect("upgrade");
    let mut peer = TestPeer {
        ws,
        id: String::new(),
    };
    peer.expect_error("UNAUTHORIZED").await;
    assert_eq!(peer.expect_close(4401).await, "unauthorized");
}

#[rstest]
#[case(Some("https://app.example"), true)]
#[case(Some("https://evil.example"), false)]
#[case(Some("null"), false)]
#[case(None, true)]
#[tokio::test]
async fn origin_allow_list(#[case] origin: Option<&str>, #[case] allowed: bool) {
    let relay = TestRelay::start(Config {
        allowed_origins: vec!["https://app.example".into(), "http://localhost:8080".into()],
        ..config()
    })
    .await;
    let headers: Vec<_> = origin.map(|o| ("origin", o)).into_iter().collect();
    match TestPeer::connect_with(&relay.url("/server"), &headers).await {
        Ok(_) => assert!(allowed, "{origin:?} should be refused"),
        Err(WsError::Http(response)) => {
            assert!(!allowed, "{origin:?} should be allowed");
            assert_eq!(response.status(), 403);
        }
        Err(other) => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn any_origin_when_no_list_is_given() {
    let relay = TestRelay::start(config()).await;
    TestPeer::connect_with(
        &relay.url("/server"),
        &[("origin", "https://anywhere.example")],
    )
    .await
    .expect("no allow-list, no check");
}

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[rstest]
#[case::plain_get("GET /server HTTP/1.1\r\nHost: x\r\n", 426)]
#[case::plain_get_client("GET /client/ABCDEF HTTP/1.1\r\nHost: x\r\n", 426)]
#[case::wrong_version(
    "GET /server HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n",
    426
)]
#[case::no_connection_upgrade(
    "GET /server HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
    400
)]
#[case::post(
    "POST /server HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n",
    400
)]
#[case::bad_key(
    "GET /server HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\n",
    400
)]
#[tokio::test]
async fn invalid_upgrades_get_a_status_and_one_line(#[case] head: &str, #[case] status: u16) {
    let relay = TestRelay::start(config()).await;
    let key = if head.contains("Sec-WebSocket-Key") {
        ""
    } else {
        KEY
    };
    let response = raw_http(relay.addr, &format!("{head}{key}Connection: close\r\n\r\n")).await;
    assert_eq!(status_of(&response), status, "{response}");
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    assert!(!body.is_empty() && !body.contains('\n'), "{body:?}");
}

#[tokio::test]
async fn a_valid_handshake_gets_101_with_the_accept_key() {
    let relay = TestRelay::start(config()).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(relay.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /server HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{KEY}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buffer = vec![0; 1024];
    let read = tokio::time::timeout(common::PATIENCE, stream.read(&mut buffer))
        .await
        .expect("in time")
        .expect("read");
    let response = String::from_utf8_lossy(&buffer[..read]).to_lowercase();
    assert!(response.starts_with("http/1.1 101"), "{response}");
    assert!(
        response.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{response}"
    );
}

/// Expects a refusal for the client's address: ERROR RATE_LIMITED, then close 4429.
async fn expect_address_refused(ws: common::Socket) -> String {
    let mut peer = TestPeer {
        ws,
        id: String::new(),
    };
    peer.expect_error("RATE_LIMITED").await;
    peer.expect_close(4429).await
}

async fn hello_from(source: &str, url: &str, headers: &[(&'static str, &str)]) {
    let ws = TestPeer::connect_from(source, url, headers).await;
    let mut peer = TestPeer {
        ws,
        id: String::new(),
    };
    assert_eq!(peer.recv().await["type"], "HELLO");
}

#[tokio::test]
async fn sessions_per_address_are_bounded_and_other_addresses_unaffected() {
    let relay = TestRelay::start(Config {
        max_connections_per_ip: 2,
        ..config()
    })
    .await;
    let url = relay.url("/server");
    let first = TestPeer::connect_from("127.0.0.1", &url, &[]).await;
    let _second = TestPeer::connect_from("127.0.0.1", &url, &[]).await;
    let third = TestPeer::connect_from("127.0.0.1", &url, &[]).await;
    assert_eq!(expect_address_refused(third).await, "too many connections");
    hello_from("127.0.0.2", &url, &[]).await;
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    hello_from("127.0.0.1", &url, &[]).await;
}

#[tokio::test]
async fn failed_joins_lock_the_address_out_for_a_minute() {
    let relay = TestRelay::start(Config {
        max_failed_attempts_per_minute: 3,
        ..config()
    })
    .await;
    let mut server = TestPeer::join(&relay.url("/server")).await;
    let good = relay.url(&format!("/client/{}", server.id));
    for guess in ["ZZZZZZ", "YYYYYY", "not-a-code"] {
        let ws =
            TestPeer::connect_from("127.0.0.1", &relay.url(&format!("/client/{guess}")), &[]).await;
        let mut peer = TestPeer {
            ws,
            id: String::new(),
        };
        peer.expect_error("UNKNOWN_SERVER").await;
        peer.expect_close(4404).await;
    }
    let locked = TestPeer::connect_from("127.0.0.1", &good, &[]).await;
    assert_eq!(
        expect_address_refused(locked).await,
        "too many failed attempts"
    );
    hello_from("127.0.0.2", &good, &[]).await;
    server.recv().await;
}

#[tokio::test]
async fn wrong_passphrases_count_as_failed_attempts() {
    let relay = TestRelay::start(Config {
        max_failed_attempts_per_minute: 2,
        ..guarded()
    })
    .await;
    for _ in 0..2 {
        let ws =
            TestPeer::connect_from("127.0.0.1", &relay.url("/server?passphrase=guess"), &[]).await;
        let mut peer = TestPeer {
            ws,
            id: String::new(),
        };
        peer.expect_error("UNAUTHORIZED").await;
    }
    let right = relay.url("/server?passphrase=open%20sesame");
    let locked = TestPeer::connect_from("127.0.0.1", &right, &[]).await;
    expect_address_refused(locked).await;
}

#[tokio::test]
async fn the_client_ip_header_is_trusted_only_when_configured() {
    let spoofed = [("x-client-ip", "203.0.113.9")];
    let relay = TestRelay::start(Config {
        max_connections_per_ip: 1,
        ..config()
    })
    .await;
    let url = relay.url("/server");
    let _held = TestPeer::connect_from("127.0.0.1", &url, &[("x-client-ip", "203.0.113.1")]).await;
    let ws = TestPeer::connect_from("127.0.0.1", &url, &spoofed).await;
    expect_address_refused(ws).await;

    let relay = TestRelay::start(Config {
        max_connections_per_ip: 1,
        client_ip_header: Some(http::HeaderName::from_static("x-client-ip")),
        ..config()
    })
    .await;
    let url = relay.url("/server");
    let _held = TestPeer::connect_from(
        "127.0.0.1",
        &url,
        &[("x-client-ip", "10.1.1.1, 203.0.113.1")],
    )
    .await;
    hello_from("127.0.0.1", &url, &spoofed).await;
    let ws = TestPeer::connect_from("127.0.0.1", &url, &[("x-client-ip", "203.0.113.1")]).await;
    expect_address_refused(ws).await;
}
