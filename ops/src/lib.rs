//! `shake-ops`: what the edge and the allocator share to be operable.
//!
//! # Layout
//! - [`config`]: TOML configuration files and the error that names the field at fault.
//! - [`exit`]: how every binary ends (its status, or its error and status 1).
//! - [`tls`]: PEM loading, the crypto provider, mutual-TLS configurations, edge names.
//! - [`http`]: the tiny HTTP responder behind `/metrics` and `/health`; [`write_stall`]: its
//!   connections' writes may stall only so long.
//! - [`bearer`]: bearer tokens for the endpoints that are not for everyone.
//! - [`supervise`]: threads whose end is reported, and the tests' fault-injection point.
//! - [`init_logging`]: tracing to stderr, `RUST_LOG` aware; JSON lines with
//!   `SHAKE_LOG_FORMAT=json`.
//! - [`build`]: the version and git revision, for the `build_info` metric.
//! - [`labels`]: [`label_values!`], closed sets of metric label values and the text each
//!   exports.
//! - [`signals`]: SIGTERM drains, SIGINT stops: one handler for every binary.
//! - [`webdriver`]: headless chromium through chromedriver (the dashboard's browser checks).
//! - [`kernel_drops`]: what the kernel dropped on a UDP socket quinn reads (`/proc/net/udp`).

pub mod bearer;
pub mod config;
pub mod exit;
pub mod http;
pub mod kernel_drops;
pub mod labels;
pub mod signals;
pub mod supervise;
pub mod tls;
pub mod webdriver;
pub mod write_stall;

/// What the binaries were built from.
pub mod build {
    /// The crate version (the workspace's).
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The git revision at build time ("unknown" outside a checkout).
    pub const REVISION: &str = env!("SHAKE_GIT_REVISION");

    /// Registers `<prefix>_build_info{version, revision} 1` (the usual Prometheus idiom: join
    /// on it to see which build an instance runs), and `<prefix>_start_time_seconds`, when
    /// this process first registered its metrics (Unix seconds): each restart changes it, so
    /// `changes()` over it counts restarts that a scrape interval would hide (a crash loop
    /// under systemd is up between scrapes often enough to keep `absent()` quiet).
    pub fn register_info(registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::encoding::EncodeLabelSet;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;

        #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct BuildLabels {
            version: &'static str,
            revision: &'static str,
        }

        let info: Family<BuildLabels, Gauge> = Family::default();
        info.get_or_create(&BuildLabels { version: VERSION, revision: REVISION }).set(1);
        registry.register("build_info", "Version and git revision of this binary", info);

        static STARTED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
        let started = *STARTED.get_or_init(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(0.0, |since| since.as_secs_f64())
        });
        let start_time: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        start_time.set(started);
        registry.register(
            "start_time_seconds",
            "When this process first registered its metrics (its start), Unix seconds; a \
             change is a restart",
            start_time,
        );
    }
}

/// Logs to stderr, filtered by `RUST_LOG` or `default_filter`: readable lines (colour only on a
/// terminal), or one JSON object per line with `SHAKE_LOG_FORMAT=json` (for log shippers).
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("SHAKE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().with_current_span(false).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}
