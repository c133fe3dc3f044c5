//! helios daemon: CLI, configuration, logging, startup wiring and the local HTTP API.
//! The actors, the model and the ports live in the `helios-actors` crate.
pub mod api;
pub mod cli;
pub mod config;
pub mod exit;
pub mod fuzzing;
pub mod healthcheck;
pub mod logging;
pub mod startup;
pub mod takeover;
pub mod version;

pub use startup::run;

/// Resolves once SIGTERM or SIGINT arrives.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler can be installed");
    tokio::select! {
        _ = term.recv() => log::info!(signal = "SIGTERM"; "Caught signal"),
        _ = int.recv() => log::info!(signal = "SIGINT"; "Caught signal"),
    }
}
