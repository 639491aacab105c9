//! Where each side of a relay pair connects: server peers to `--url`; clients there too, or to
//! another instance of a cluster (`--client-url`), or through a replaying proxy started in this
//! process (`--fly-proxy`), so that a join crosses instances the way it does on Fly.io.

// The tests' stand-in for Fly's proxy, compiled here rather than copied so the two cannot drift.
#[path = "../../tests/common/fly_proxy.rs"]
#[allow(
    dead_code,
    reason = "route_to is tests/cluster.rs's and bind intercessor-fly-proxy's; the bench starts one \
              proxy with one first hop"
)]
mod fly_proxy;

use crate::net::Dialer;
use anyhow::{Result, anyhow, bail};
use fly_proxy::FlyProxy;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The two dialers of a run, and the proxy when clients go through one.
pub struct Route {
    /// Server peers (and the echo target's connections).
    pub servers: Arc<Dialer>,
    /// Client peers.
    pub clients: Arc<Dialer>,
    /// Dropping it stops it, so it lives as long as the route.
    proxy: Option<FlyProxy>,
}

/// What the proxy did, for the report.
#[derive(Debug, Clone, Copy)]
pub struct Replays {
    /// Requests replayed to the instance a `fly-replay` named.
    pub replayed: usize,
    /// Replays that could not reach their instance.
    pub failed: usize,
}

impl Route {
    /// Server and client peers both at `url`.
    pub fn direct(url: &str, ca: Option<&Path>) -> Result<Route> {
        let dialer = Arc::new(Dialer::new(url, ca)?);
        Ok(Route {
            servers: dialer.clone(),
            clients: dialer,
            proxy: None,
        })
    }

    /// Server peers at `url`, clients at `client_url`.
    pub fn split(url: &str, client_url: &str, ca: Option<&Path>) -> Result<Route> {
        Ok(Route {
            servers: Arc::new(Dialer::new(url, ca)?),
            clients: Arc::new(Dialer::new(client_url, ca)?),
            proxy: None,
        })
    }

    /// Server peers at `url`; clients through a proxy in front of `instances` (`ID=HOST:PORT`)
    /// that sends each request to `first_hop` and replays it where a `fly-replay` says.
    pub async fn via_fly_proxy(url: &str, instances: &[String], first_hop: &str) -> Result<Route> {
        let parsed = instances
            .iter()
            .map(|spec| parse_instance(spec))
            .collect::<Result<Vec<_>>>()?;
        if !parsed.iter().any(|(id, _)| id == first_hop) {
            bail!("--first-hop {first_hop:?} is none of the --fly-proxy instances");
        }
        let named: Vec<(&str, SocketAddr)> = parsed
            .iter()
            .map(|(id, addr)| (id.as_str(), *addr))
            .collect();
        let proxy = FlyProxy::start(&named, first_hop).await;
        Ok(Route {
            servers: Arc::new(Dialer::new(url, None)?),
            clients: Arc::new(Dialer::new(&proxy.url(""), None)?),
            proxy: Some(proxy),
        })
    }

    /// Whether clients connect somewhere other than their servers.
    pub fn is_split(&self) -> bool {
        !Arc::ptr_eq(&self.servers, &self.clients)
    }

    /// The proxy's counts so far, when there is one.
    pub fn replays(&self) -> Option<Replays> {
        self.proxy.as_ref().map(|proxy| Replays {
            replayed: proxy.replays(),
            failed: proxy.failed_replays(),
        })
    }
}

/// `ID=HOST:PORT`, as `--fly-proxy` takes it.
fn parse_instance(spec: &str) -> Result<(String, SocketAddr)> {
    let (id, addr) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("--fly-proxy takes ID=HOST:PORT, got {spec:?}"))?;
    let addr = addr
        .parse()
        .map_err(|_| anyhow!("--fly-proxy {spec:?}: {addr:?} is not an IP:PORT"))?;
    Ok((id.to_owned(), addr))
}
