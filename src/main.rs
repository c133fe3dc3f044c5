//! helios entry point: parse flags, resolve the configuration, run the agent.
use clap::Parser;

use helios::cli::{Cli, Command};
use helios::config::{self, Inputs};
use helios::exit::ExitCode;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    helios::logging::init();
    let env: config::Env = std::env::vars().collect();
    let config = match config::resolve(Inputs {
        flags: &cli.flags,
        env: &env,
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            log::error!(error:% = e, decision = "exit"; "Invalid configuration");
            return ExitCode::Usage.into();
        }
    };
    if let Some(Command::Healthcheck) = cli.command {
        return match helios::healthcheck::probe(&config.listen) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {}", helios_actors::ErrorChain(&e));
                std::process::ExitCode::FAILURE
            }
        };
    }
    let code = actix::System::new().block_on(helios::run(config, helios::stop_signal(), |_| {}));
    code.into()
}
