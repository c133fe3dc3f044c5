//! Command-line flags (clap): the flags of upstream helios (spec/helios-api-v3.md §2.1) plus ours.
//!
//! Every flag is optional here: values are merged with the config file and the environment in
//! `config.rs` (defaults < file < environment < flags), which is also where cross-field rules live.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "helios",
    about = "On-device agent for container fleets: keeps a device on the state its fleet wants",
    version = crate::version::SHORT,
    long_version = crate::version::LONG,
)]
pub struct Cli {
    #[command(flatten)]
    pub flags: Flags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register with the remote (if not registered yet) and run; same flags as the daemon.
    Register,
    /// GET /ping on the local API (its unix socket if it has one); exit 0 if it answers 200,
    /// else 1. The container image's HEALTHCHECK.
    Healthcheck,
    /// Point the legacy supervisor at helios (its apiEndpointOverride and listenPortOverride),
    /// restart it if that changed anything, and exit (spec/helios-api-v3.md §8.2).
    Takeover(TakeoverArgs),
    /// Remove both overrides from the legacy supervisor and restart it: plain legacy operation.
    Untakeover,
    /// Print the global device API key (generated and saved to the config file if there is
    /// none yet, so it is the key the agent uses): what TCP clients of the local API present as
    /// `Authorization: Bearer <key>`.
    ApiKey,
}

#[derive(Debug, Default, Args)]
pub struct TakeoverArgs {
    /// apiEndpointOverride [default: http://127.0.0.1:<BALENA_SUPERVISOR_PORT, else 48484>]
    #[arg(long, value_name = "URL")]
    pub override_host: Option<String>,
    /// listenPortOverride [default: the port of the legacy API endpoint, else 48480]
    #[arg(long, value_name = "PORT")]
    pub override_port: Option<u16>,
}

/// Flags shared by the daemon and its subcommands. `[env: X]` names the variable that sets the
/// same value when the flag is absent.
#[derive(Debug, Default, Args)]
pub struct Flags {
    /// Config file (TOML) [env: HELIOS_CONFIG] [default: $XDG_CONFIG_HOME/helios/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Device uuid [env: HELIOS_UUID, BALENA_DEVICE_UUID] [default: generated once and saved]
    #[arg(long, global = true, value_name = "UUID")]
    pub uuid: Option<String>,

    /// Host OS as "<name> <version>[@<build>]" [env: HELIOS_HOST_OS_VERSION, BALENA_HOST_OS_VERSION]
    #[arg(long, global = true, value_name = "OS")]
    pub host_os_version: Option<String>,

    /// Runtime dir as seen by the host and the engine [env: HELIOS_HOST_RUNTIME_DIR, BALENA_HOST_RUNTIME_DIR]
    #[arg(long, global = true, value_name = "PATH")]
    pub host_runtime_dir: Option<PathBuf>,

    /// Local API address: IP:PORT for TCP, anything else a unix socket path; repeat to listen on
    /// several [env: HELIOS_LOCAL_API_ADDRESS, comma-separated] [default: 127.0.0.1:48484]
    #[arg(long, global = true, value_name = "ADDR")]
    pub local_api_address: Vec<String>,

    /// A name the local API's TCP listener may be addressed by (Host, Origin) besides IP
    /// addresses and localhost; repeat for several [env: HELIOS_LOCAL_API_ALLOWED_HOSTS,
    /// comma-separated] [default: the hostname and the short uuid, each also with .local]
    #[arg(long, global = true, value_name = "NAME")]
    pub local_api_allowed_host: Vec<String>,

    /// Remote (balenaCloud/openBalena) API endpoint [env: HELIOS_REMOTE_API_ENDPOINT, BALENA_API_URL]
    #[arg(long, global = true, value_name = "URI")]
    pub remote_api_endpoint: Option<String>,

    /// Device API key for the remote [env: HELIOS_REMOTE_API_KEY, BALENA_API_KEY]
    #[arg(long, global = true, value_name = "KEY")]
    pub remote_api_key: Option<String>,

    /// Remote request timeout in ms [env: HELIOS_REMOTE_REQUEST_TIMEOUT_MS] [default: 59000]
    #[arg(long, global = true, value_name = "MS")]
    pub remote_request_timeout_ms: Option<u64>,

    /// Target state poll interval in ms [env: HELIOS_REMOTE_POLL_INTERVAL_MS] [default: 900000]
    #[arg(long, global = true, value_name = "MS")]
    pub remote_poll_interval_ms: Option<u64>,

    /// Minimum gap between two remote requests in ms [env: HELIOS_REMOTE_POLL_MIN_INTERVAL_MS] [default: 10000]
    #[arg(long, global = true, value_name = "MS")]
    pub remote_poll_min_interval_ms: Option<u64>,

    /// Maximum random jitter added to each poll interval in ms [env: HELIOS_REMOTE_POLL_MAX_JITTER_MS] [default: 60000]
    #[arg(long, global = true, value_name = "MS")]
    pub remote_poll_max_jitter_ms: Option<u64>,

    /// Pause before re-planning after a failed apply in ms [env: HELIOS_LOCAL_RETRY_INTERVAL_MS] [default: 30000]
    #[arg(long, global = true, value_name = "MS")]
    pub local_retry_interval_ms: Option<u64>,

    /// Failed attempts of the same target before it is given up, 0 = never [env: HELIOS_MAX_APPLY_ATTEMPTS] [default: 10]
    #[arg(long, global = true, value_name = "N")]
    pub max_apply_attempts: Option<u32>,

    /// Legacy supervisor API endpoint (turns on the proxy) [env: HELIOS_LEGACY_API_ENDPOINT]
    #[arg(long, global = true, value_name = "URI")]
    pub legacy_api_endpoint: Option<String>,

    /// Legacy supervisor API key [env: HELIOS_LEGACY_API_KEY, BALENA_SUPERVISOR_API_KEY]
    #[arg(long, global = true, value_name = "KEY")]
    pub legacy_api_key: Option<String>,

    /// Fleet provisioning key (dropped once registered) [env: HELIOS_PROVISIONING_KEY]
    #[arg(long, global = true, value_name = "KEY")]
    pub provisioning_key: Option<String>,

    /// Fleet numeric id to register into [env: HELIOS_PROVISIONING_FLEET]
    #[arg(long, global = true, value_name = "ID")]
    pub provisioning_fleet: Option<u64>,

    /// Device type slug to register as [env: HELIOS_PROVISIONING_DEVICE_TYPE]
    #[arg(long, global = true, value_name = "SLUG")]
    pub provisioning_device_type: Option<String>,

    /// OS version announced at registration [env: HELIOS_PROVISIONING_OS_VERSION]
    #[arg(long, global = true, value_name = "VERSION")]
    pub provisioning_os_version: Option<String>,

    /// Supervisor version announced at registration [env: HELIOS_PROVISIONING_SUPERVISOR_VERSION]
    #[arg(long, global = true, value_name = "VERSION")]
    pub provisioning_supervisor_version: Option<String>,

    /// Key that clients of the device API (/v1, /v2) must present [env: HELIOS_DEVICE_API_KEY] [default: generated once and saved]
    #[arg(long, global = true, value_name = "KEY")]
    pub device_api_key: Option<String>,

    /// Directory of the store [env: HELIOS_STATE_DIR] [default: $XDG_STATE_HOME/helios]
    #[arg(long, global = true, value_name = "PATH")]
    pub state_dir: Option<PathBuf>,

    /// Container engine address, unix:///path or tcp://host:port [env: DOCKER_HOST] [default: unix:///var/run/docker.sock]
    #[arg(long, global = true, value_name = "URI")]
    pub engine_host: Option<String>,
}
