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

/// The sum of every sample at `addr` whose line starts with `prefix`; panics when none does.
/// A bare name needs a sample of exactly that name, a label selector (`name{key="value"`) a
/// sample it opens: a misspelt or renamed metric or label (a counter's name without `_total`)
/// would otherwise read 0, and an assertion of 0 pass. A series that may not exist yet (a
/// labelled family the server does not export from 0: the exporter omits it, name and all,
/// until its first series) is read with [`read_family`].
pub fn read(addr: SocketAddr, prefix: &str) -> f64 {
    let text = scrape(addr);
    assert!(exported(&text, prefix), "{addr} exports no metric {prefix:?}:\n{text}");
    shake_ops::http::metric_sum(&text, prefix)
}

/// The sum of the samples at `addr` whose line starts with `prefix`, 0 while there is none: a
/// labelled family, or one of its series, that may not exist yet (the exporter omits an empty
/// family, name and all).
pub fn read_family(addr: SocketAddr, prefix: &str) -> f64 {
    shake_ops::http::metric_sum(&scrape(addr), prefix)
}

/// Whether `text` has a sample of what `prefix` names: by its exact sample name for a bare
/// name (a counter's ends in `_total`, a histogram's in `_bucket`, `_sum` and `_count`: a
/// family's `# TYPE` line names none of them), by a sample it opens for a label selector.
fn exported(text: &str, prefix: &str) -> bool {
    shake_ops::http::metric_samples(text, prefix).next().is_some()
}

/// Waits (5 s at most) until the sum of the samples at `addr` starting with `prefix` satisfies
/// `ok`, a sample it names being there (so a wait for 0 on a misspelt name or label does not
/// end at once); panics naming `wanted` (what `ok` asks, in words) with the last scrape, and
/// whether the metric was exported at all.
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
        // A selector needs a sample it opens.
        assert!(exported(text, "shake_l_total{a=\"b\"}"));
        assert!(exported(text, "shake_l_total{a="));
        for selector in ["shake_l_total{a=\"c\"}", "shake_l_total{b=", "shake_empty_total{a=\"b\"}"]
        {
            assert!(!exported(text, selector), "{selector}");
        }
    }
}
