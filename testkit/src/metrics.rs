//! A server's Prometheus endpoint: scraping `/metrics`, reading one metric, and waiting for a
//! metric to reach a value.

use std::net::SocketAddr;
use std::time::Duration;

/// The Prometheus text at `addr`.
pub fn scrape(addr: SocketAddr) -> String {
    shake_ops::http::get(addr, "/metrics").unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
}

/// `GET /users/{user}` on an edge's metrics listener `addr`, with the token the test edges
/// are configured with: the whole response.
pub fn user_report(addr: SocketAddr, user: &str) -> String {
    let bearer = format!("Bearer {}", crate::scratch::USERS_TOKEN);
    shake_ops::http::request_with(
        addr,
        "GET",
        &format!("/users/{user}"),
        &[("Authorization", &bearer)],
    )
    .unwrap_or_else(|e| panic!("GET /users/{user} at {addr}: {e}"))
}

/// The sum of every sample at `addr` whose line starts with `prefix` (0 when none does).
pub fn read(addr: SocketAddr, prefix: &str) -> f64 {
    shake_ops::http::metric_sum(&scrape(addr), prefix)
}

/// Waits (5 s at most) until [`read`] of `prefix` satisfies `ok`; panics naming `wanted`
/// (what `ok` asks, in words) with the last scrape.
pub async fn wait_until(addr: SocketAddr, prefix: &str, wanted: &str, ok: impl Fn(f64) -> bool) {
    for _ in 0..100 {
        if ok(read(addr, prefix)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{prefix} at {addr} never reached {wanted}:\n{}", scrape(addr));
}
