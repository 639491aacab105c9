//! Strangers at the TLS layer: clients that stall the handshake at every stage.

use crate::common::*;
use crate::{Alone, deadline_config, dropped_at_the_deadline};
use intercessor::Config;
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stalls_mid_handshake_is_dropped_at_the_deadline_while_wss_pairs_talk_on()
{
    let turn = Alone::begin().await;
    let tls = DevTls::new();
    let relay = TestRelay::start(Config {
        tls: Some(tls.source()),
        ..deadline_config()
    })
    .await;
    let (addr, trust) = (relay.addr, tls.trust());
    let endpoint = Endpoint::Tls(addr, trust.clone());
    let stalled = turn
        .amid_bystanders(endpoint, async move {
            let mut stallers = JoinSet::new();
            for round in 0..10 {
                for stage in Stall::ALL {
                    let trust = trust.clone();
                    stallers.spawn(async move {
                        let (answer, lived) = stall_tls(addr, stage, trust, round).await;
                        (stage, answer, lived)
                    });
                }
            }
            surface_all(stallers).await
        })
        .await;

    for (stage, answer, lived) in &stalled {
        dropped_at_the_deadline(*lived, stage);
        match stage {
            // The relay answered the ClientHello with its own flight, then waited for ours.
            Stall::AfterServerFlight => assert_eq!(answer.first(), Some(&0x16), "{answer:x?}"),
            // No alert, no HTTP: the socket is just closed.
            _ => assert!(answer.is_empty(), "{stage:?}: {answer:x?}"),
        }
    }
}
