//! `intercessor-fly-proxy`: a stand-in for Fly.io's replaying proxy in front of local relay
//! instances, to try cluster mode (`--cluster-routing fly-replay`) on one machine. It runs the
//! integration tests' own proxy (`tests/common/fly_proxy.rs`), so what people try is what the
//! tests check.

#[path = "../../../tests/common/fly_proxy.rs"]
#[expect(
    dead_code,
    reason = "FlyProxy::start is the tests' constructor, bind is the binary's"
)]
mod fly_proxy;

use clap::Parser;
use fly_proxy::FlyProxy;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};

/// The `--first-hop` value that sends each new connection to the next instance.
const ROUND_ROBIN: &str = "round-robin";

/// Replaying proxy like Fly.io's, for relay instances on this machine: prints one line per
/// connection, and replays requests answered with `fly-replay` to the instance named there.
#[derive(Parser)]
#[command(name = "intercessor-fly-proxy", version)]
struct Cli {
    /// Loopback address to listen on; the port actually bound is printed as
    /// `fly proxy listening on ADDR`
    #[arg(long, default_value = "127.0.0.1:0", value_parser = loopback)]
    listen: SocketAddr,
    /// An instance behind the proxy, as ID=HOST:PORT (its `--instance-id` and listen address);
    /// repeat for each
    #[arg(long = "instance", value_name = "ID=HOST:PORT", required = true, value_parser = instance)]
    instances: Vec<(String, SocketAddr)>,
    /// Where each new connection goes first: an instance ID, or `round-robin` over the instances
    /// in the order given
    #[arg(long, value_name = "ID|round-robin", default_value = ROUND_ROBIN)]
    first_hop: String,
}

/// A `--listen` address, refused unless it is on loopback: this proxy is for trying things out.
fn loopback(value: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| format!("`{value}` is not an IP:PORT address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address (try 127.0.0.1)"));
    }
    Ok(addr)
}

/// An `--instance ID=HOST:PORT`, its host resolved once here.
fn instance(value: &str) -> Result<(String, SocketAddr), String> {
    let (id, host) = value
        .split_once('=')
        .ok_or_else(|| format!("`{value}` is not ID=HOST:PORT"))?;
    if id.is_empty() || id == ROUND_ROBIN {
        return Err(format!("`{id}` cannot be an instance id"));
    }
    let addr = host
        .to_socket_addrs()
        .map_err(|error| format!("`{host}`: {error}"))?
        .next()
        .ok_or_else(|| format!("`{host}` resolves to no address"))?;
    Ok((id.to_owned(), addr))
}

/// The instance `--first-hop` names, `None` for round-robin; checked against the instances.
fn first_hop(cli: &Cli) -> Result<Option<&str>, String> {
    if cli.first_hop == ROUND_ROBIN {
        return Ok(None);
    }
    if cli.instances.iter().any(|(id, _)| *id == cli.first_hop) {
        return Ok(Some(&cli.first_hop));
    }
    Err(format!(
        "--first-hop {} is neither `{ROUND_ROBIN}` nor an --instance id",
        cli.first_hop
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut ids: Vec<&str> = cli.instances.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    if let Some(twice) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        eprintln!("error: --instance {} is given twice", twice[0]);
        return ExitCode::FAILURE;
    }
    let first_hop = match first_hop(&cli) {
        Ok(first_hop) => first_hop,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    // One thread is plenty: the proxy only splices sockets once a request is routed.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli, first_hop)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGINT or SIGTERM, then prints how many requests it replayed.
async fn run(cli: &Cli, first_hop: Option<&str>) -> Result<(), String> {
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|error| format!("SIGTERM handler: {error}"))?;
    let instances: Vec<(&str, SocketAddr)> = cli
        .instances
        .iter()
        .map(|(id, addr)| (id.as_str(), *addr))
        .collect();
    let proxy = FlyProxy::bind(cli.listen, &instances, true)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", cli.listen))?;
    if let Some(id) = first_hop {
        proxy.route_to(id);
    }
    let behind: Vec<String> = instances
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    println!(
        "fly proxy listening on {addr}: the demo at http://{addr}/, peers at {server}; \
         first hop {}, instances {}",
        cli.first_hop,
        behind.join(" "),
        addr = proxy.addr,
        server = proxy.url("/server"),
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    println!(
        "fly proxy stopping: {} replayed, {} replays failed",
        proxy.replays(),
        proxy.failed_replays()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fly_proxy::FlyProxy;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A stand-in instance on loopback that answers every request with `200` and its `id`.
    async fn instance(id: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head).await;
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{id}");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    /// The body of one request on a new connection through `proxy`.
    async fn answered_by(proxy: &FlyProxy) -> String {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connects");
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("writes");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("reads");
        answer.rsplit("\r\n").next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn round_robin_sends_each_new_connection_to_the_next_instance_until_route_to() {
        let instances = [("a", instance("a").await), ("b", instance("b").await)];
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let proxy = FlyProxy::bind(listen, &instances, false)
            .await
            .expect("binds");

        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(answered_by(&proxy).await);
        }
        proxy.route_to("b");
        seen.push(answered_by(&proxy).await);
        seen.push(answered_by(&proxy).await);

        assert_eq!(seen, ["a", "b", "a", "b", "b", "b"]);
    }
}
