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

/// The sum of every sample at `addr` whose line starts with `prefix` (0 when none does, for a
/// label selector). A bare name the server does not export at all panics: a misspelt or
/// renamed metric would otherwise read 0, and an assertion of 0 pass. (A labelled family with
/// no series yet is not exported either, so it cannot be told from a misspelt one: read it
/// with [`read_family`].)
pub fn read(addr: SocketAddr, prefix: &str) -> f64 {
    let text = scrape(addr);
    assert!(exported(&text, prefix), "{addr} exports no metric {prefix:?}:\n{text}");
    shake_ops::http::metric_sum(&text, prefix)
}

/// The sum of a labelled family's series at `addr`, 0 while it has none (the exporter omits
/// an empty family, name and all).
pub fn read_family(addr: SocketAddr, name: &str) -> f64 {
    shake_ops::http::metric_sum(&scrape(addr), name)
}

/// Whether `text` exports the metric a bare name `prefix` names (a sample, or its family's
/// `# TYPE` line, which a counter's declares without `_total`). A label selector passes.
fn exported(text: &str, prefix: &str) -> bool {
    let name = prefix.trim_end();
    if name.contains('{') {
        return true;
    }
    let family = name.strip_suffix("_total").unwrap_or(name);
    text.lines().any(|line| {
        line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' ']))
            || line.strip_prefix("# TYPE ").and_then(|t| t.split(' ').next()) == Some(family)
    })
}

/// Waits (5 s at most) until the sum of the samples at `addr` starting with `prefix` satisfies
/// `ok`; panics naming `wanted` (what `ok` asks, in words) with the last scrape, and whether
/// the metric was exported at all.
pub async fn wait_until(addr: SocketAddr, prefix: &str, wanted: &str, ok: impl Fn(f64) -> bool) {
    for _ in 0..100 {
        if ok(read_family(addr, prefix)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = scrape(addr);
    let missing = if exported(&text, prefix) { "" } else { " (not exported at all)" };
    panic!("{prefix} at {addr} never reached {wanted}{missing}:\n{text}");
}

#[cfg(test)]
mod tests {
    use super::exported;

    #[test]
    fn a_metric_is_exported_by_a_sample_or_its_family_declaration() {
        let text = "# TYPE shake_x counter\nshake_x_total 0\n# TYPE shake_g gauge\n\
                    shake_g 3\nshake_l_total{a=\"b\"} 1\n";
        for name in ["shake_x_total", "shake_x", "shake_g", "shake_g ", "shake_l_total"] {
            assert!(exported(text, name), "{name}");
        }
        for name in ["shake_y_total", "shake_gg", "shake_l"] {
            assert!(!exported(text, name), "{name}");
        }
        assert!(exported(text, "shake_empty_total{a=\"b\"}"), "a selector is not checked");
    }
}
