//! The metrics listener (`--metrics-listen`): `/metrics`, `/healthz` and `/readyz` on a port of
//! their own, so they are never exposed on the public port by accident.

use crate::edge::metrics::Live;
use crate::edge::net;
use crate::edge::response::{self, Body};
use crate::edge::state::Shared;
use crate::relay::admission::{HEALTH_PATH, READY_PATH};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Where the metrics listener serves the Prometheus text.
pub const METRICS_PATH: &str = "/metrics";

/// A scrape that has not sent its request by then is dropped.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until the task is dropped. It keeps answering during the shutdown drain, so the last
/// figures and the 503 from `/readyz` stay visible.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    if let Ok(addr) = listener.local_addr() {
        info!(
            url = net::local_url("http", addr, METRICS_PATH),
            "metrics listening"
        );
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "metrics accept failed");
                tokio::time::sleep(net::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(shared.clone(), request));
            let connection =
                net::http1(SCRAPE_TIMEOUT).serve_connection(net::http_io(stream), service);
            if let Err(error) = connection.await {
                debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(response::text(StatusCode::METHOD_NOT_ALLOWED, "GET only"));
    }
    Ok(match request.uri().path() {
        METRICS_PATH => metrics(&shared),
        HEALTH_PATH => response::health(),
        READY_PATH => response::readiness(&shared.shutdown),
        _ => response::not_found(),
    })
}

fn metrics(shared: &Shared) -> Response<Body> {
    let (servers, clients) = shared.hub.counts();
    let live = Live {
        servers,
        clients,
        connections: shared.slots.live(),
        directory_up: shared.cluster.as_ref().map(|cluster| cluster.is_up()),
    };
    let mut response = Response::new(Body::new(Bytes::from(shared.metrics.render(live))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
