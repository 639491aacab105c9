//! Hostile peers and strangers: none of them can crash the relay, starve the peers around it, or
//! grow its memory without bound.
//!
//! Most tests keep ordinary server/client pairs talking before, during and after their attack
//! ([`Alone::amid_bystanders`]), and end on the close code or HTTP answer the README documents.
//! WebSocket frames a library would refuse to send are written byte by byte over plain TCP
//! (`common::raw`). The themes:
//!
//! - `http`: slow loris, garbage instead of HTTP, broken handshakes, idle keep-alive;
//! - `tls`: clients that stall the TLS handshake;
//! - `websocket`: protocol violations, oversized frames, unanswered pings, the 1009 linger;
//! - `abuse`: passphrase guessing, the bearer scheme, binary frames against the rate, floods;
//! - `shutdown`: half-sent request heads do not hold the drain;
//! - `resources`: memory under every attack at once, quiet pairs beside a flooder (timing and
//!   RSS bounds: `#[ignore]`d, run by `.ci/run` with `--ignored --test-threads=1`).

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod http;
mod resources;
mod shutdown;
mod tls;
mod websocket;

use common::{Bystanders, Endpoint, HANDSHAKE_TIMEOUT, SLACK, config, exchange, leave};
use intercessor::Config;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// These tests load a 2-core machine on purpose and two of them measure time or memory, so they
/// run one at a time rather than on top of each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Panics anywhere in this process. tokio catches a panic in the in-process relay's tasks, and
/// the connection would then look merely dropped, so each test also checks this count.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Held for a whole test: no other test runs meanwhile, so any panic counted is this test's.
struct Alone {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    panics_before: usize,
}

impl Alone {
    async fn begin() -> Alone {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICS.fetch_add(1, Ordering::SeqCst);
                previous(info);
            }));
        });
        let turn = ONE_AT_A_TIME.lock().await;
        Alone {
            _turn: turn,
            panics_before: PANICS.load(Ordering::SeqCst),
        }
    }

    /// Asserts that nothing panicked during the test: no relay task and no helper task.
    fn no_task_panicked(&self) {
        let panics = PANICS.load(Ordering::SeqCst) - self.panics_before;
        assert_eq!(panics, 0, "{panics} task(s) panicked; see the output above");
    }

    /// Runs `attack` while four bystander pairs talk on `endpoint`'s relay, checking that they
    /// keep talking before, during and after it; then that a newcomer is served as usual and that
    /// nothing panicked. Returns what the attack returned, for the test's own expectations.
    async fn amid_bystanders<T: Send + 'static>(
        self,
        endpoint: Endpoint,
        attack: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let mut bystanders = Bystanders::start(&endpoint, 4).await;
        bystanders.keep_talking("before the attack").await;
        let outcome = bystanders.alongside(tokio::spawn(attack)).await;
        bystanders.keep_talking("after the attack").await;
        let (rounds, worst) = bystanders.finish().await;
        eprintln!("bystanders: {rounds} rounds, worst {worst:?}");
        let (mut server, mut client) = endpoint.pair().await;
        exchange(&mut server, &mut client, 0).await;
        leave(server, client).await;
        self.no_task_panicked();
        outcome
    }
}

/// A relay whose handshake deadline is [`HANDSHAKE_TIMEOUT`], the one strangers are measured by.
fn deadline_config() -> Config {
    Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        ..config()
    }
}

/// Asserts that a stranger the relay let live for `lived` was dropped at the handshake deadline:
/// not before it, and not much after.
fn dropped_at_the_deadline(lived: Duration, what: impl std::fmt::Debug) {
    assert!(
        lived >= HANDSHAKE_TIMEOUT - Duration::from_millis(50),
        "{what:?}: dropped before the deadline, after {lived:?}"
    );
    assert!(
        lived < HANDSHAKE_TIMEOUT + SLACK,
        "{what:?}: held past the deadline: {lived:?}"
    );
}
