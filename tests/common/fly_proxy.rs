//! A stand-in for Fly.io's proxy in front of several relay instances: it sends each connection's
//! request to the instance chosen for it, and when the answer carries `fly-replay`, replays the
//! request once to the instance named there (adding `fly-replay-src`), or back to the first one
//! with `fly-replay-failed` when that one cannot be reached and the answer asked for
//! `fallback=force_self`. Then it splices the two sockets, upgraded WebSockets included.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request or response head it reads.
const MAX_HEAD: usize = 16 * 1024;

struct Routes {
    instances: HashMap<String, SocketAddr>,
    /// Where new connections go first.
    first_hop: Mutex<String>,
    replays: AtomicUsize,
    failed_replays: AtomicUsize,
}

/// The proxy; dropping it stops it.
pub struct FlyProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    routes: Arc<Routes>,
    stop: CancellationToken,
}

impl FlyProxy {
    /// A proxy in front of `instances` (id, address), sending connections to `first_hop` first.
    pub async fn start(instances: &[(&str, SocketAddr)], first_hop: &str) -> FlyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let routes = Arc::new(Routes {
            instances: instances
                .iter()
                .map(|(id, addr)| ((*id).to_owned(), *addr))
                .collect(),
            first_hop: Mutex::new(first_hop.to_owned()),
            replays: AtomicUsize::new(0),
            failed_replays: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let proxy = FlyProxy {
            addr: listener.local_addr().expect("bound"),
            routes: routes.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                let routes = routes.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = serve(client, &routes) => {}
                    }
                });
            }
        });
        proxy
    }

    /// `ws://` URL of `path` through the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends new connections to instance `id` first.
    pub fn route_to(&self, id: &str) {
        *self.routes.first_hop.lock().expect("not poisoned") = id.to_owned();
    }

    /// Requests replayed to the instance a `fly-replay` named.
    pub fn replays(&self) -> usize {
        self.routes.replays.load(Ordering::SeqCst)
    }

    /// Replays that could not reach their instance and went back to the first one.
    pub fn failed_replays(&self) -> usize {
        self.routes.failed_replays.load(Ordering::SeqCst)
    }
}

impl Drop for FlyProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads up to the end of an HTTP head; returns the head and whatever came after it.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Some((String::from_utf8(buffer).ok()?, rest));
        }
        if buffer.len() > MAX_HEAD {
            return None;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// The value of header `name` in a head, if present.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A field of a `fly-replay` value (`instance=ID;timeout=2s;…`).
fn field<'a>(replay: &'a str, key: &str) -> Option<&'a str> {
    replay.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == key).then_some(v)
    })
}

/// `head` with one more header before its blank line.
fn with_header(head: &str, line: &str) -> String {
    format!("{}\r\n{line}\r\n\r\n", head.trim_end_matches("\r\n"))
}

/// Sends `head` to `addr`; returns the connection and the response head with what followed it.
async fn forward(addr: SocketAddr, head: &str) -> Option<(TcpStream, String, Vec<u8>)> {
    let mut upstream = TcpStream::connect(addr).await.ok()?;
    upstream.write_all(head.as_bytes()).await.ok()?;
    let (response, rest) = read_head(&mut upstream).await?;
    Some((upstream, response, rest))
}

async fn serve(mut client: TcpStream, routes: &Routes) {
    let Some((request, early)) = read_head(&mut client).await else {
        return;
    };
    let first = routes.first_hop.lock().expect("not poisoned").clone();
    let Some(&first_addr) = routes.instances.get(&first) else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let Some(mut answer) = forward(first_addr, &request).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if let Some(replay) = header(&answer.1, "fly-replay").map(str::to_owned) {
        let target = match (field(&replay, "instance"), field(&replay, "elsewhere")) {
            (Some(id), _) => routes.instances.get(id).copied(),
            (None, Some("true")) => routes
                .instances
                .iter()
                .find(|(id, _)| **id != first)
                .map(|(_, addr)| *addr),
            _ => None,
        };
        let source = format!("fly-replay-src: instance={first};region=local;t=0");
        let replayed = match target {
            Some(addr) => forward(addr, &with_header(&request, &source)).await,
            None => None,
        };
        answer = match replayed {
            Some(replayed) => {
                routes.replays.fetch_add(1, Ordering::SeqCst);
                replayed
            }
            None if field(&replay, "fallback") == Some("force_self") => {
                routes.failed_replays.fetch_add(1, Ordering::SeqCst);
                let failed = with_header(&request, "fly-replay-failed: unreachable");
                match forward(first_addr, &failed).await {
                    Some(answer) => answer,
                    None => return,
                }
            }
            None => {
                let _ = client
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                    .await;
                return;
            }
        };
    }
    let (mut upstream, response, rest) = answer;
    if client.write_all(response.as_bytes()).await.is_err()
        || client.write_all(&rest).await.is_err()
        || upstream.write_all(&early).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
