//! Fuzz target: what a peer sends before its TLS handshake is done, through `TlsSocket::accept`.
//!
//! Each input goes over a real loopback connection to the relay's TLS socket, with the relay's
//! development certificate, and the peer then closes its side. No input can finish a handshake
//! (that takes the peer's keys), so the oracle is that the accept ends, with an error, once the
//! peer has closed: no panic, no hang.

#![no_main]

use intercessor::edge::{devcert, tls, tls_socket::TlsSocket};
use libfuzzer_sys::fuzz_target;
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Far longer than a refused handshake takes: past it, the socket is hung.
const HANG: Duration = Duration::from_secs(5);

struct Rig {
    runtime: Runtime,
    listener: TcpListener,
    address: SocketAddr,
    config: Arc<ServerConfig>,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("intercessor-fuzz-tls-{}", std::process::id()));
        let (paths, _) = devcert::ensure(&dir, &[]).expect("development certificates");
        let config = tls::load_server_config(&paths.cert, &paths.key).expect("certificates load");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let address = listener.local_addr().expect("address");
        Rig {
            runtime,
            listener,
            address,
            config,
        }
    })
}

/// Sends `data`, closes the sending side, and reads whatever the relay answers until it hangs up.
async fn peer(address: SocketAddr, data: &[u8]) {
    let mut peer = TcpStream::connect(address).await.expect("connect");
    // A reset rather than TIME_WAIT when it closes: a run opens many thousands of connections.
    peer.set_zero_linger().expect("linger");
    // The relay may hang up before it has read everything; that is an answer too.
    let _ = peer.write_all(data).await;
    let _ = peer.shutdown().await;
    let mut sink = [0; 4096];
    while matches!(peer.read(&mut sink).await, Ok(n) if n > 0) {}
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    rig.runtime.block_on(async {
        let accept = async {
            let (tcp, _) = rig.listener.accept().await.expect("accept");
            tokio::time::timeout(HANG, TlsSocket::accept(tcp, rig.config.clone())).await
        };
        let (accepted, ()) = tokio::join!(accept, peer(rig.address, data));
        match accepted {
            Err(_) => panic!("the handshake hung after the peer closed"),
            Ok(Ok(_)) => panic!("a handshake completed without the peer's keys"),
            Ok(Err(_)) => {}
        }
    });
});
