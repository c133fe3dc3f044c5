//! helios entry point: parse flags, resolve the configuration, run the agent.
use clap::Parser;

use helios::cli::{Cli, Command, TakeoverArgs};
use helios::config::{self, Inputs};
use helios::exit::ExitCode;
use helios::takeover;

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
    let system = actix::System::new();
    let code = match &cli.command {
        Some(Command::Healthcheck) => {
            return match helios::healthcheck::probe(&config.listen) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {}", helios_actors::ErrorChain(&e));
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Some(Command::ApiKey) => {
            use helios::startup::GlobalKey;
            return match helios::startup::global_device_api_key(&config) {
                GlobalKey::Configured(k) | GlobalKey::Generated(k) => {
                    println!("{}", k.expose());
                    std::process::ExitCode::SUCCESS
                }
                GlobalKey::Unsaved(_, e) => {
                    eprintln!("error: the device API key cannot be saved: {e}");
                    ExitCode::Startup.into()
                }
            };
        }
        Some(Command::Takeover(args)) => system.block_on(takeover::run_logged(
            &takeover::settings(&config, args),
            takeover::Mode::Take,
        )),
        Some(Command::Untakeover) => system.block_on(takeover::run_logged(
            &takeover::settings(&config, &TakeoverArgs::default()),
            takeover::Mode::Restore,
        )),
        None | Some(Command::Register) => {
            // The container entrypoint's takeover (spec/helios-api-v3.md §2.3): started with
            // BALENA_SUPERVISOR_*, helios takes over first; a failing takeover aborts the start.
            let entry = config
                .legacy
                .as_ref()
                .is_some_and(|l| l.takeover_port.is_some());
            let taken = !entry
                || system.block_on(takeover::run_logged(
                    &takeover::settings(&config, &TakeoverArgs::default()),
                    takeover::Mode::Take,
                )) == ExitCode::Ok;
            if taken {
                system.block_on(helios::run(config, helios::stop_signal(), |_| {}))
            } else {
                ExitCode::Startup
            }
        }
    };
    code.into()
}
