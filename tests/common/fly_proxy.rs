//! A stand-in for Fly.io's proxy in front of several relay instances: it sends each connection's
//! request to the instance chosen for it, and when the answer carries `fly-replay`, replays the
//! request once to the instance named there (adding `fly-replay-src`), or back to the first one
//! with `fly-replay-failed` when that one cannot be reached and the answer asked for
//! `fallback=force_self`. Then it splices the two sockets, upgraded WebSockets included.
//!
//! Only a connection's first request is routed: the rest of the connection follows it. The bench
//! crate's `intercessor-fly-proxy` binary runs this same file for people and scripts.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request or response head it reads.
const MAX_HEAD: usize = 16 * 1024;

const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n";

/// Where a new connection goes first.
enum FirstHop {
    /// Always the instance with this id.
    Instance(String),
    /// Each new connection to the next instance, in the order given.
    RoundRobin,
}

struct Routes {
    /// In the order given, which is round-robin's order and the one `elsewhere=true` searches.
    instances: Vec<(String, SocketAddr)>,
    first_hop: Mutex<FirstHop>,
    /// Connections routed round-robin so far.
    turns: AtomicUsize,
    replays: AtomicUsize,
    failed_replays: AtomicUsize,
    /// Print one line per connection to stdout (the binary does; tests keep quiet).
    log: bool,
}

impl Routes {
    fn address(&self, id: &str) -> Option<SocketAddr> {
        self.instances
            .iter()
            .find_map(|(known, addr)| (known == id).then_some(*addr))
    }

    /// The instance this new connection goes to first.
    fn first_hop(&self) -> Option<(String, SocketAddr)> {
        let id = match &*self.first_hop.lock().expect("not poisoned") {
            FirstHop::Instance(id) => id.clone(),
            FirstHop::RoundRobin => {
                let turn = self.turns.fetch_add(1, Ordering::SeqCst);
                let index = turn.checked_rem(self.instances.len())?;
                self.instances[index].0.clone()
            }
        };
        let addr = self.address(&id)?;
        Some((id, addr))
    }

    fn note(&self, line: &str) {
        if self.log {
            println!("{line}");
        }
    }
}

/// The proxy; dropping it stops it.
pub struct FlyProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    routes: Arc<Routes>,
    stop: CancellationToken,
}

impl FlyProxy {
    /// A quiet proxy on a free loopback port in front of `instances` (id, address), sending
    /// connections to `first_hop` first.
    pub async fn start(instances: &[(&str, SocketAddr)], first_hop: &str) -> FlyProxy {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let proxy = FlyProxy::bind(listen, instances, false)
            .await
            .expect("binds");
        proxy.route_to(first_hop);
        proxy
    }

    /// A proxy listening on `listen` that sends each new connection to the next of `instances`
    /// in turn, until [`FlyProxy::route_to`]; with `log`, it prints one line per connection to
    /// stdout.
    pub async fn bind(
        listen: SocketAddr,
        instances: &[(&str, SocketAddr)],
        log: bool,
    ) -> io::Result<FlyProxy> {
        let listener = TcpListener::bind(listen).await?;
        let routes = Arc::new(Routes {
            instances: instances
                .iter()
                .map(|(id, addr)| ((*id).to_owned(), *addr))
                .collect(),
            first_hop: Mutex::new(FirstHop::RoundRobin),
            turns: AtomicUsize::new(0),
            replays: AtomicUsize::new(0),
            failed_replays: AtomicUsize::new(0),
            log,
        });
        let stop = CancellationToken::new();
        let proxy = FlyProxy {
            addr: listener.local_addr()?,
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
        Ok(proxy)
    }

    /// `ws://` URL of `path` through the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends new connections to instance `id` first.
    pub fn route_to(&self, id: &str) {
        *self.routes.first_hop.lock().expect("not poisoned") = FirstHop::Instance(id.to_owned());
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

/// `METHOD PATH` of a request head, without the query string (it may carry a passphrase).
fn request_line(head: &str) -> String {
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("?");
    let target = words.next().unwrap_or("?");
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    format!("{method} {path}")
}

/// The status code of a response head.
fn status(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("?")
}

async fn serve(mut client: TcpStream, routes: &Routes) {
    let Some((request, early)) = read_head(&mut client).await else {
        return;
    };
    let mut trail = request_line(&request);
    let answer = answer(&request, routes, &mut trail).await;
    routes.note(&trail);
    let Some((mut upstream, response, rest)) = answer else {
        let _ = client.write_all(BAD_GATEWAY).await;
        return;
    };
    if client.write_all(response.as_bytes()).await.is_err()
        || client.write_all(&rest).await.is_err()
        || upstream.write_all(&early).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Sends `request` to its first hop and, when the answer asks for it, replays it; returns the
/// answer to pass on, and writes each step to `trail` (`GET /p -> b 307, replayed -> a 101`).
async fn answer(
    request: &str,
    routes: &Routes,
    trail: &mut String,
) -> Option<(TcpStream, String, Vec<u8>)> {
    let Some((first, first_addr)) = routes.first_hop() else {
        trail.push_str(" -> no such instance, 502");
        return None;
    };
    trail.push_str(&format!(" -> {first}"));
    let Some(answer) = forward(first_addr, request).await else {
        trail.push_str(" unreachable, 502");
        return None;
    };
    trail.push_str(&format!(" {}", status(&answer.1)));
    let Some(replay) = header(&answer.1, "fly-replay").map(str::to_owned) else {
        return Some(answer);
    };
    let target = match (field(&replay, "instance"), field(&replay, "elsewhere")) {
        (Some(id), _) => routes.address(id).map(|addr| (id.to_owned(), addr)),
        (None, Some("true")) => routes
            .instances
            .iter()
            .find(|(id, _)| *id != first)
            .cloned(),
        _ => None,
    };
    let source = format!("fly-replay-src: instance={first};region=local;t=0");
    let replayed = match &target {
        Some((_, addr)) => forward(*addr, &with_header(request, &source)).await,
        None => None,
    };
    match (replayed, target) {
        (Some(replayed), Some((id, _))) => {
            routes.replays.fetch_add(1, Ordering::SeqCst);
            trail.push_str(&format!(", replayed -> {id} {}", status(&replayed.1)));
            Some(replayed)
        }
        _ if field(&replay, "fallback") == Some("force_self") => {
            routes.failed_replays.fetch_add(1, Ordering::SeqCst);
            let failed = with_header(request, "fly-replay-failed: unreachable");
            let answer = forward(first_addr, &failed).await;
            let status = answer.as_ref().map_or("unreachable, 502", |a| status(&a.1));
            trail.push_str(&format!(", replay failed, back -> {first} {status}"));
            answer
        }
        _ => {
            trail.push_str(", replay failed, 502");
            None
        }
    }
}
