//! `shake-ops`: what the edge and the allocator share to be operable.
//!
//! # Layout
//! - [`config`]: TOML configuration files and the error that names the field at fault.
//! - [`tls`]: PEM loading, the crypto provider, mutual-TLS configurations, edge names.
//! - [`http`]: the tiny HTTP responder behind `/metrics` and `/health`.
//! - [`supervise`]: threads whose end is reported, and the tests' fault-injection point.
//! - [`init_logging`]: tracing to stderr, `RUST_LOG` aware.

pub mod config;
pub mod http;
pub mod supervise;
pub mod tls;

/// Logs to stderr (colour only on a terminal), filtered by `RUST_LOG` or `default_filter`.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
