//! The operator's signals, the same for every binary: SIGTERM drains (finish what is in
//! flight, then stop: what systemd and orchestrators send), SIGINT stops now (Ctrl-C).
//! SIGHUP is logged and ignored: nothing is reloaded (configuration is read at start), and its
//! default action would end the process with no drain (a terminal hanging up, or an operator
//! used to "HUP reloads"), which systemd counts as a clean exit and does not restart.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: drain, then stop.
    Drain,
    /// SIGINT: stop now.
    Stop,
}

/// SIGTERM, SIGINT and SIGHUP handlers, installed when made (a signal that arrives before the wait is
/// kept, not lost to the default action). Needs a tokio runtime.
#[derive(Debug)]
pub struct StopSignals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl StopSignals {
    /// Installs the three handlers.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next SIGTERM or SIGINT (logged); SIGHUPs before it are logged and ignored.
    pub async fn next(&mut self) -> StopSignal {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM: draining");
                    return StopSignal::Drain;
                }
                _ = self.int.recv() => {
                    tracing::info!("SIGINT: stopping");
                    return StopSignal::Stop;
                }
                _ = self.hup.recv() => tracing::warn!(
                    "SIGHUP: ignored (nothing reloads: the configuration is read at start; \
                     SIGTERM drains, SIGINT stops)"
                ),
            }
        }
    }
}
