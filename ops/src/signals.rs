//! The operator's signals, the same for every binary: SIGTERM drains (finish what is in
//! flight, then stop: what systemd and orchestrators send), SIGINT stops now (Ctrl-C).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: drain, then stop.
    Drain,
    /// SIGINT: stop now.
    Stop,
}

/// SIGTERM and SIGINT handlers, installed when made (a signal that arrives before the wait is
/// kept, not lost to the default action). Needs a tokio runtime.
#[derive(Debug)]
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Installs both handlers.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// The next SIGTERM or SIGINT (logged).
    pub async fn next(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.term.recv() => {
                tracing::info!("SIGTERM: draining");
                StopSignal::Drain
            }
            _ = self.int.recv() => {
                tracing::info!("SIGINT: stopping");
                StopSignal::Stop
            }
        }
    }
}
