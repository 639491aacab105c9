//! Bystanders: well-behaved server/client pairs that keep talking while a test attacks the relay,
//! and must not notice. Each round checks every message arrives, in order.

use super::{PATIENCE, Socket, TestPeer, connect_wss, surface};
use futures_util::StreamExt;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::connect_async_with_config;
use tokio_util::sync::CancellationToken;

/// Longest any one attack may take, all its connections included: a backstop, far above what
/// each needs (the memory test's, the longest, takes about 10 s).
pub const ATTACK_PATIENCE: Duration = Duration::from_secs(40);

/// Where well-behaved peers connect: plain `ws://`, or `wss://` trusting one CA.
#[derive(Clone)]
pub enum Endpoint {
    Plain(SocketAddr),
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

impl Endpoint {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Endpoint::Plain(addr) | Endpoint::Tls(addr, _) => *addr,
        }
    }

    pub async fn open(&self, path: &str) -> Socket {
        match self {
            // Nagle off, as the relay has it: with it on, a client's second message in a row
            // waits for the relay's delayed ACK (40 ms), which would swamp every latency here.
            Endpoint::Plain(addr) => {
                let url = format!("ws://{addr}{path}");
                let connect = connect_async_with_config(url, None, true);
                timeout(PATIENCE, connect)
                    .await
                    .expect("connect in time")
                    .expect("upgrade accepted")
                    .0
            }
            Endpoint::Tls(addr, trust) => connect_wss(*addr, "localhost", path, trust.clone())
                .await
                .expect("wss upgrade accepted"),
        }
    }

    /// Connects and reads HELLO, keeping the id it carries.
    pub async fn join(&self, path: &str) -> TestPeer {
        TestPeer::greeted(self.open(path).await).await
    }

    /// A server and one client of it, PEER_JOINED consumed.
    pub async fn pair(&self) -> (TestPeer, TestPeer) {
        let mut server = self.join("/server").await;
        let client = self.join(&format!("/client/{}", server.id)).await;
        server
            .expect_relay("PEER_JOINED", json!({"id": client.id}))
            .await;
        (server, client)
    }
}

/// Messages per round: enough that a reordering would show.
pub const BURST: u64 = 3;

/// One round: the client sends `BURST` numbered messages, the server checks each arrives in order
/// and echoes it, the client checks the echoes arrive in order.
pub async fn exchange(server: &mut TestPeer, client: &mut TestPeer, first: u64) {
    for n in first..first + BURST {
        client.send_to(&server.id, "SEQ", json!(n)).await;
    }
    for n in first..first + BURST {
        assert_eq!(
            server.recv().await,
            json!({"from": client.id, "type": "SEQ", "message": n})
        );
        server.send_to(&client.id, "ACK", json!(n)).await;
    }
    for n in first..first + BURST {
        assert_eq!(
            client.recv().await,
            json!({"from": server.id, "type": "ACK", "message": n})
        );
    }
}

/// The client leaves cleanly, its server hears PEER_GONE, then the server leaves.
pub async fn leave(mut server: TestPeer, mut client: TestPeer) {
    client.ws.close(None).await.expect("the client closes");
    let _ = timeout(PATIENCE, async {
        while let Some(Ok(_)) = client.ws.next().await {}
    })
    .await;
    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
    server.ws.close(None).await.expect("the server closes");
    let _ = timeout(PATIENCE, async {
        while let Some(Ok(_)) = server.ws.next().await {}
    })
    .await;
}

/// A bystander pair's pause between rounds: 3 messages each way per round stay well under the
/// default `--rate-limit` of 50 messages per second, and well inside a 500 ms idle timeout.
pub const BYSTANDER_PAUSE: Duration = Duration::from_millis(100);

/// Pairs that keep exchanging numbered messages (see [`exchange`]) until [`Bystanders::finish`].
pub struct Bystanders {
    rounds: Arc<Vec<AtomicU64>>,
    /// Longest round so far, in microseconds.
    worst_round_us: Arc<AtomicU64>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Bystanders {
    pub async fn start(endpoint: &Endpoint, pairs: usize) -> Bystanders {
        let rounds: Arc<Vec<AtomicU64>> = Arc::new((0..pairs).map(|_| AtomicU64::new(0)).collect());
        let worst_round_us = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for index in 0..pairs {
            let (mut server, mut client) = endpoint.pair().await;
            let (rounds, worst, stop) = (rounds.clone(), worst_round_us.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut next = 0;
                while !stop.is_cancelled() {
                    let started = Instant::now();
                    exchange(&mut server, &mut client, next).await;
                    worst.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    next += BURST;
                    rounds[index].fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = sleep(BYSTANDER_PAUSE) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                leave(server, client).await;
            }));
        }
        Bystanders {
            rounds,
            worst_round_us,
            stop,
            tasks,
        }
    }

    /// Waits until every pair has completed a few more rounds: they are being served right now.
    pub async fn keep_talking(&mut self, when: &str) {
        const MORE: u64 = 3;
        let from: Vec<u64> = self
            .rounds
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let done = self
                .rounds
                .iter()
                .zip(&from)
                .all(|(r, from)| r.load(Ordering::Relaxed) >= from + MORE);
            if done {
                return;
            }
            if let Some(failed) = self.tasks.iter().position(JoinHandle::is_finished) {
                surface(self.tasks.swap_remove(failed).await);
                panic!("a bystander pair stopped {when}");
            }
            assert!(
                Instant::now() < deadline,
                "bystander pairs stalled {when}: rounds {:?} → {:?}",
                from,
                self.rounds
                    .iter()
                    .map(|r| r.load(Ordering::Relaxed))
                    .collect::<Vec<_>>()
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Keeps checking the pairs until `attack` is over; returns what it returned.
    pub async fn alongside<T>(&mut self, attack: JoinHandle<T>) -> T {
        let deadline = Instant::now() + ATTACK_PATIENCE;
        while !attack.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the attack outlived {ATTACK_PATIENCE:?}"
            );
            self.keep_talking("during the attack").await;
        }
        surface(attack.await)
    }

    /// Stops the pairs, lets each leave cleanly, and returns (rounds, longest round).
    pub async fn finish(self) -> (u64, Duration) {
        self.stop.cancel();
        for task in self.tasks {
            surface(
                timeout(PATIENCE * 2, task)
                    .await
                    .expect("bystander pairs leave in time"),
            );
        }
        let rounds = self.rounds.iter().map(|r| r.load(Ordering::Relaxed)).sum();
        let worst = Duration::from_micros(self.worst_round_us.load(Ordering::Relaxed));
        (rounds, worst)
    }
}
