//! A typed WebSocket peer whose every expectation times out instead of hanging.

use super::{PATIENCE, TestRelay};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket peer with expectations that time out instead of hanging.
pub struct TestPeer {
    pub ws: Socket,
    pub id: String,
}

impl TestPeer {
    /// Connects without reading HELLO.
    pub async fn connect_raw(url: &str) -> Socket {
        let (ws, _) = tokio::time::timeout(PATIENCE, connect_async_with_config(url, None, true))
            .await
            .expect("connect in time")
            .expect("upgrade accepted");
        ws
    }

    /// Connects with extra request headers.
    pub async fn connect_with(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Socket, WsError> {
        let mut request = url.into_client_request().expect("valid url");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("valid header"));
        }
        let (ws, _) =
            tokio::time::timeout(PATIENCE, connect_async_with_config(request, None, true))
                .await
                .expect("connect in time")?;
        Ok(ws)
    }

    /// Connects from a chosen loopback address (all of 127.0.0.0/8 is local), with extra headers.
    pub async fn connect_from(source: &str, url: &str, headers: &[(&'static str, &str)]) -> Socket {
        let mut request = url.into_client_request().expect("valid url");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("valid header"));
        }
        let host = request
            .uri()
            .authority()
            .expect("url has a host")
            .as_str()
            .to_owned();
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("valid source"))
            .expect("bind source address");
        let stream = socket
            .connect(host.parse().expect("ip:port"))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (ws, _) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("connect in time")
        .expect("upgrade accepted");
        ws
    }

    /// Connects and reads HELLO, keeping the id it carries.
    pub async fn join(url: &str) -> TestPeer {
        TestPeer::greeted(TestPeer::connect_raw(url).await).await
    }

    /// Connects and reads HELLO; returns the peer and HELLO's message (token, window, rules...).
    pub async fn hello(url: &str) -> (TestPeer, Value) {
        let mut peer = TestPeer::unread(url).await;
        let hello = peer.read_hello().await;
        (peer, hello)
    }

    /// Connects without reading anything: the test looks at the first frame itself.
    pub async fn unread(url: &str) -> TestPeer {
        TestPeer {
            ws: TestPeer::connect_raw(url).await,
            id: String::new(),
        }
    }

    /// Reads HELLO on an open socket, keeping the id it carries.
    pub async fn greeted(ws: Socket) -> TestPeer {
        let mut peer = TestPeer {
            ws,
            id: String::new(),
        };
        peer.read_hello().await;
        peer
    }

    /// Reads HELLO, keeps the id it carries, and returns its message.
    async fn read_hello(&mut self) -> Value {
        let hello = self.recv().await;
        assert_eq!(hello["from"], "0", "{hello}");
        assert_eq!(hello["type"], "HELLO", "{hello}");
        self.id = hello["message"]["id"]
            .as_str()
            .expect("HELLO carries an id")
            .to_owned();
        hello["message"].clone()
    }

    /// Registers a server on `relay`.
    pub async fn server(relay: &TestRelay) -> TestPeer {
        TestPeer::join(&relay.url("/server")).await
    }

    /// Joins `server` as a client and consumes the server's PEER_JOINED.
    pub async fn client_of(relay: &TestRelay, server: &mut TestPeer) -> TestPeer {
        let client = TestPeer::join(&relay.url(&format!("/client/{}", server.id))).await;
        server
            .expect_relay("PEER_JOINED", json!({"id": client.id}))
            .await;
        client
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send succeeds");
    }

    pub async fn send_to(&mut self, to: &str, kind: &str, message: Value) {
        self.send_json(json!({"to": to, "type": kind, "message": message}))
            .await;
    }

    /// Sends the client `to` more than loopback's socket buffers hold (160 messages of 60 KiB), so
    /// the relay's write to it blocks if it never reads. The relay needs [`overfill_config`]'s
    /// message and queue sizes.
    pub async fn overfill(&mut self, to: &str) {
        let chunk = "x".repeat(60 * 1024);
        for _ in 0..160 {
            self.send_to(to, "BULK", json!(chunk)).await;
        }
    }

    /// Reads for `duration`, counting the relay's pings (tungstenite answers each with a pong,
    /// which keeps the peer alive); any other frame, or the end of the connection, fails the test.
    pub async fn count_pings(&mut self, duration: Duration) -> usize {
        let mut pings = 0;
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(100), self.ws.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {}
            }
        }
        pings
    }

    /// The next text frame, parsed; pings and pongs are skipped.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame arrives in time")
                .expect("connection still open")
                .expect("frame is valid");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("frames are JSON");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Expects a frame from the relay itself.
    pub async fn expect_relay(&mut self, kind: &str, message: Value) {
        self.expect_from("0", kind, message).await;
    }

    /// Expects the next frame to be `kind` with `message` from the peer `from`.
    pub async fn expect_from(&mut self, from: &str, kind: &str, message: Value) {
        let frame = self.recv().await;
        assert_eq!(
            frame,
            json!({"from": from, "type": kind, "message": message})
        );
    }

    /// Expects an ERROR with `code`, returning its whole `message`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["from"], "0", "{frame}");
        assert_eq!(frame["type"], "ERROR", "{frame}");
        assert_eq!(frame["message"]["code"], code, "{frame}");
        assert!(
            frame["message"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{frame}"
        );
        frame["message"].clone()
    }

    /// Expects the relay to close with `code`, skipping other frames, and then the connection to end.
    pub async fn expect_close(&mut self, code: u16) -> String {
        expect_close(&mut self.ws, code).await
    }
}

/// Reads until a close frame, asserts its code, and returns its reason.
pub async fn expect_close(ws: &mut Socket, code: u16) -> String {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the close arrives in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(
                    frame.code,
                    CloseCode::from(code),
                    "close reason: {}",
                    frame.reason
                );
                return frame.reason.to_string();
            }
            Some(Ok(Message::Close(None))) => panic!("closed without a code, expected {code}"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("connection failed before close {code}: {error}"),
            None => panic!("connection ended without a close frame, expected {code}"),
        }
    }
}

/// The resume token a HELLO's message carries.
pub fn resume_token(hello: &Value) -> String {
    hello["resumeToken"]
        .as_str()
        .expect("a resume token")
        .to_owned()
}
