//! The relay's metrics as a scraper reads them.

use super::{PATIENCE, raw_http};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `GET path` on the metrics listener at `addr`: the whole response, head and body.
pub async fn metrics_get(addr: SocketAddr, path: &str) -> String {
    raw_http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Scrapes until `series` reads `value`; fails after [`PATIENCE`] with the last reading.
pub async fn until_sample(addr: SocketAddr, series: &str, value: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let read = sample(&metrics_get(addr, "/metrics").await, series);
        if read == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {read:?}, not {value}, after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
