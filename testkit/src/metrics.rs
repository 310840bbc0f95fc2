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
/// label selector). A bare name with no sample of exactly that name panics: a misspelt or
/// renamed metric (a counter's name without `_total`) would otherwise read 0, and an
/// assertion of 0 pass. (A labelled family with no series yet is not exported at all, so it
/// cannot be told from a misspelt one: read it with [`read_family`].)
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

/// Whether `text` has a sample of the metric a bare name `prefix` names, by its exact sample
/// name (a counter's ends in `_total`, a histogram's in `_bucket`, `_sum` and `_count`: a
/// family's `# TYPE` line names none of them). A label selector passes.
fn exported(text: &str, prefix: &str) -> bool {
    prefix.contains('{') || shake_ops::http::metric_samples(text, prefix).next().is_some()
}

/// Waits (5 s at most) until the sum of the samples at `addr` starting with `prefix` satisfies
/// `ok`, a bare name's samples being there (so a wait for 0 on a misspelt name does not end
/// at once); panics naming `wanted` (what `ok` asks, in words) with the last scrape, and
/// whether the metric was exported at all. (A labelled family with no series yet is not
/// there: wait on it with a label selector.)
pub async fn wait_until(addr: SocketAddr, prefix: &str, wanted: &str, ok: impl Fn(f64) -> bool) {
    for _ in 0..100 {
        let text = scrape(addr);
        if exported(&text, prefix) && ok(shake_ops::http::metric_sum(&text, prefix)) {
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
    fn a_metric_is_exported_by_a_sample_of_its_exact_name() {
        let text = "# TYPE shake_x counter\nshake_x_total 0\n# TYPE shake_g gauge\n\
                    shake_g 3\nshake_l_total{a=\"b\"} 1\n# TYPE shake_h histogram\n\
                    shake_h_sum 1\nshake_h_count 1\nshake_h_bucket{le=\"+Inf\"} 1\n# EOF\n";
        for name in ["shake_x_total", "shake_g", "shake_g ", "shake_l_total", "shake_h_count"] {
            assert!(exported(text, name), "{name}");
        }
        // A counter without `_total`, a histogram's family name, a longer or shorter name.
        for name in ["shake_x", "shake_h", "shake_y_total", "shake_gg", "shake_l", "shake_"] {
            assert!(!exported(text, name), "{name}");
        }
        assert!(exported(text, "shake_empty_total{a=\"b\"}"), "a selector is not checked");
    }
}
