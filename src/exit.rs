//! Process exit codes (listed in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Clean stop (SIGTERM/SIGINT).
    Ok = 0,
    /// Startup failed: the API address is taken, the store cannot be created.
    Startup = 1,
    /// Bad flags, environment or config file values (clap uses 2 as well).
    Usage = 2,
    /// An actor restarted too often within its window; systemd or the engine restarts us.
    Escalated = 3,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}
