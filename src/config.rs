//! Configuration: merges defaults < config file < environment < flags once, validates, and hands
//! each actor its typed settings. Flag and env names follow spec/helios-api-v3.md §2.1 and §2.3.
//!
//! The file, the environment and the flags are all read into the same [`Layer`] shape (the TOML
//! layout of `config.example.toml`), merged field by field, then resolved into [`Config`].
//! Errors name the offending key; `main` turns them into exit code 2.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use helios_actors::host::OsVersion;

use crate::api::ListenAddr;

use crate::cli::Flags;

/// Port of the legacy supervisor once helios has taken its place (spec §2.3).
pub const DEFAULT_LEGACY_PORT: u16 = 48480;
/// Where the standalone binary listens when no address is given (a deliberate difference:
/// upstream helios serves no API at all then).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:48484";
/// Where the container listens (spec §2.3).
pub const CONTAINER_LISTEN: &str = "/tmp/run/helios.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{key} requires {requires}")]
    Requires { key: String, requires: String },
    #[error("cannot write config file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Merges two layers field by field: `over` wins where it has a value.
macro_rules! layer_struct {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name { $(#[serde(skip_serializing_if = "Option::is_none")] pub $field: Option<$ty>,)* }
        impl $name {
            fn merge(self, over: Self) -> Self {
                Self { $($field: over.$field.or(self.$field),)* }
            }
        }
    };
}

layer_struct!(
    /// `[api]`: the local HTTP API.
    ApiLayer { listen: Vec<String>, device_api_key: String, allowed_hosts: Vec<String>, workers: usize, max_body_bytes: usize }
);
layer_struct!(
    /// `[remote]`: the balena API.
    RemoteLayer {
        api_endpoint: String,
        api_key: String,
        request_timeout_ms: u64,
        poll_interval_ms: u64,
        poll_min_interval_ms: u64,
        poll_max_jitter_ms: u64,
        report_min_interval_ms: u64,
        extra_ca: PathBuf,
        max_target_bytes: usize,
    }
);
layer_struct!(
    /// `[provisioning]`: registration of a new device.
    ProvisioningLayer { key: String, fleet: u64, device_type: String, os_version: String, supervisor_version: String }
);
layer_struct!(
    /// `[legacy]`: the legacy supervisor behind the proxy.
    LegacyLayer { api_endpoint: String, api_key: String, takeover_port: u16 }
);
layer_struct!(
    /// `[host]`: the host OS and its directories.
    HostLayer { os_version: String, runtime_dir: PathBuf, host_runtime_dir: PathBuf, dbus_address: String, boot_dir: PathBuf, config_json: PathBuf }
);
layer_struct!(
    /// `[engine]`: the container engine.
    EngineLayer { host: String }
);
layer_struct!(
    /// `[seek]`: the apply loop.
    SeekLayer { local_retry_interval_ms: u64, max_attempts: u32 }
);
layer_struct!(
    /// `[store]`: the sled store.
    StoreLayer { dir: PathBuf, cache_capacity_bytes: u64 }
);
layer_struct!(
    /// `[supervision]`: actor restarts.
    SupervisionLayer { backoff_initial_ms: u64, backoff_max_ms: u64, max_restarts: u32, restart_window_ms: u64 }
);

/// One source of configuration, in the TOML layout of `config.example.toml`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default)]
    pub api: ApiLayer,
    #[serde(default)]
    pub remote: RemoteLayer,
    #[serde(default)]
    pub provisioning: ProvisioningLayer,
    #[serde(default)]
    pub legacy: LegacyLayer,
    #[serde(default)]
    pub host: HostLayer,
    #[serde(default)]
    pub engine: EngineLayer,
    #[serde(default)]
    pub seek: SeekLayer,
    #[serde(default)]
    pub store: StoreLayer,
    #[serde(default)]
    pub supervision: SupervisionLayer,
}

impl Layer {
    pub fn merge(self, over: Layer) -> Layer {
        Layer {
            uuid: over.uuid.or(self.uuid),
            api: self.api.merge(over.api),
            remote: self.remote.merge(over.remote),
            provisioning: self.provisioning.merge(over.provisioning),
            legacy: self.legacy.merge(over.legacy),
            host: self.host.merge(over.host),
            engine: self.engine.merge(over.engine),
            seek: self.seek.merge(over.seek),
            store: self.store.merge(over.store),
            supervision: self.supervision.merge(over.supervision),
        }
    }

    /// The built-in defaults (those that do not depend on the directories).
    pub fn defaults() -> Layer {
        Layer {
            uuid: None,
            api: ApiLayer {
                listen: None,
                device_api_key: None,
                allowed_hosts: None,
                workers: Some(1),
                max_body_bytes: Some(1 << 20),
            },
            remote: RemoteLayer {
                api_endpoint: None,
                api_key: None,
                request_timeout_ms: Some(59_000),
                poll_interval_ms: Some(900_000),
                poll_min_interval_ms: Some(10_000),
                poll_max_jitter_ms: Some(60_000),
                report_min_interval_ms: Some(10_000),
                extra_ca: None,
                max_target_bytes: Some(10 << 20),
            },
            provisioning: ProvisioningLayer::default(),
            legacy: LegacyLayer::default(),
            host: HostLayer {
                dbus_address: Some("unix:path=/var/run/dbus/system_bus_socket".into()),
                boot_dir: Some("/mnt/boot".into()),
                ..Default::default()
            },
            engine: EngineLayer {
                host: Some("unix:///var/run/docker.sock".into()),
            },
            seek: SeekLayer {
                local_retry_interval_ms: Some(30_000),
                max_attempts: Some(10),
            },
            store: StoreLayer {
                dir: None,
                cache_capacity_bytes: Some(4 << 20),
            },
            supervision: SupervisionLayer {
                backoff_initial_ms: Some(500),
                backoff_max_ms: Some(30_000),
                max_restarts: Some(10),
                restart_window_ms: Some(300_000),
            },
        }
    }
}

/// Reads a TOML config file into a layer. A missing file is an empty layer.
pub fn read_file(path: &Path) -> Result<Layer, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Layer::default()),
        Err(e) => {
            return Err(ConfigError::File {
                path: path.into(),
                message: e.to_string(),
            })
        }
    };
    parse_file(path, &text)
}

/// Parses the text of the config file at `path` (named in errors).
pub fn parse_file(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::File {
        path: path.into(),
        message: parse_error(text, &e),
    })
}

/// Where a parse error is (line, column, the key of that line) and what it is, without any
/// value: the file holds keys, and a broken line (an unclosed quote, a wrong type) must not
/// end up on stderr or in the log. toml's own text quotes the line and serde's quotes values.
fn parse_error(text: &str, e: &toml::de::Error) -> String {
    let mut out = String::new();
    if let Some(start) = e.span().map(|s| s.start.min(text.len())) {
        let before = &text.as_bytes()[..start];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        out = format!("line {line}, column {column}");
        if let Some(key) = key_at(text, line) {
            out.push_str(&format!(", key {key}"));
        }
        out.push_str(": ");
    }
    let message = e.message().lines().next().unwrap_or_default();
    // serde quotes keys (the file's, then ours) in these: the file's only when it looks like one.
    let names_keys = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split_once('`'))
        .is_some_and(|(key, _)| is_key_name(key));
    match message.find(['"', '\'', '`']) {
        Some(i) if !names_keys => {
            out.push_str(message[..i].trim_end());
            out.push_str(" <redacted>");
        }
        _ => out.push_str(message),
    }
    out
}

/// Looks like one of our keys (lower-case words): safe to print. A key with digits, capitals
/// or symbols may be a value that lost its `key =`.
fn is_key_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || matches!(c, '_' | '.'))
}

/// The dotted key set on line `line` (1-based) of a TOML text: the table header above it and
/// the bare key left of `=`; None unless both look like keys ([`is_key_name`]).
fn key_at(text: &str, line: usize) -> Option<String> {
    let plain = is_key_name;
    let lines: Vec<&str> = text.lines().collect();
    let (key, _) = lines.get(line.checked_sub(1)?)?.split_once('=')?;
    let key = key.trim();
    if !plain(key) {
        return None;
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim());
    match table {
        Some(t) if plain(t) => Some(format!("{t}.{key}")),
        Some(_) => None,
        None => Some(key.to_string()),
    }
}

/// The configuration a config file with this text gives, without environment or flags.
pub fn resolve_file_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file = parse_file(path, text)?;
    let dirs = Dirs::from_env(&Env::new());
    build(
        Layer::defaults().merge(file),
        dirs,
        path.to_path_buf(),
        false,
    )
}

/// The flags as a layer.
pub fn flags_layer(f: &Flags) -> Layer {
    Layer {
        uuid: f.uuid.clone(),
        api: ApiLayer {
            listen: (!f.local_api_address.is_empty()).then(|| f.local_api_address.clone()),
            device_api_key: f.device_api_key.clone(),
            allowed_hosts: (!f.local_api_allowed_host.is_empty())
                .then(|| f.local_api_allowed_host.clone()),
            ..Default::default()
        },
        remote: RemoteLayer {
            api_endpoint: f.remote_api_endpoint.clone(),
            api_key: f.remote_api_key.clone(),
            request_timeout_ms: f.remote_request_timeout_ms,
            poll_interval_ms: f.remote_poll_interval_ms,
            poll_min_interval_ms: f.remote_poll_min_interval_ms,
            poll_max_jitter_ms: f.remote_poll_max_jitter_ms,
            ..Default::default()
        },
        provisioning: ProvisioningLayer {
            key: f.provisioning_key.clone(),
            fleet: f.provisioning_fleet,
            device_type: f.provisioning_device_type.clone(),
            os_version: f.provisioning_os_version.clone(),
            supervisor_version: f.provisioning_supervisor_version.clone(),
        },
        legacy: LegacyLayer {
            api_endpoint: f.legacy_api_endpoint.clone(),
            api_key: f.legacy_api_key.clone(),
            takeover_port: None,
        },
        host: HostLayer {
            os_version: f.host_os_version.clone(),
            host_runtime_dir: f.host_runtime_dir.clone(),
            ..Default::default()
        },
        engine: EngineLayer {
            host: f.engine_host.clone(),
        },
        seek: SeekLayer {
            local_retry_interval_ms: f.local_retry_interval_ms,
            max_attempts: f.max_apply_attempts,
        },
        store: StoreLayer {
            dir: f.state_dir.clone(),
            ..Default::default()
        },
        supervision: SupervisionLayer::default(),
    }
}

/// The environment, as a read-only map (tests pass their own).
pub type Env = HashMap<String, String>;

fn env_str(env: &Env, key: &str) -> Option<String> {
    env.get(key).filter(|v| !v.is_empty()).cloned()
}

fn env_num<T: std::str::FromStr>(env: &Env, key: &str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    env_str(env, key)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|e| invalid(key, format!("{v:?}: {e}")))
        })
        .transpose()
}

/// True when started with the environment balenaOS gives a container (spec §2.3).
pub fn container_mode(env: &Env) -> bool {
    env_str(env, "BALENA_DEVICE_UUID").is_some()
}

/// The environment as a layer: `HELIOS_*` (spec §2.1), then the container's `BALENA_*`
/// variables with the meaning the upstream entrypoint gives them (spec §2.3).
pub fn env_layer(env: &Env) -> Result<Layer, ConfigError> {
    let mut l = Layer {
        uuid: env_str(env, "HELIOS_UUID"),
        api: ApiLayer {
            listen: env_str(env, "HELIOS_LOCAL_API_ADDRESS")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
            device_api_key: env_str(env, "HELIOS_DEVICE_API_KEY"),
            allowed_hosts: env_str(env, "HELIOS_LOCAL_API_ALLOWED_HOSTS").map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            ..Default::default()
        },
        remote: RemoteLayer {
            api_endpoint: env_str(env, "HELIOS_REMOTE_API_ENDPOINT"),
            api_key: env_str(env, "HELIOS_REMOTE_API_KEY"),
            request_timeout_ms: env_num(env, "HELIOS_REMOTE_REQUEST_TIMEOUT_MS")?,
            poll_interval_ms: env_num(env, "HELIOS_REMOTE_POLL_INTERVAL_MS")?,
            poll_min_interval_ms: env_num(env, "HELIOS_REMOTE_POLL_MIN_INTERVAL_MS")?,
            poll_max_jitter_ms: env_num(env, "HELIOS_REMOTE_POLL_MAX_JITTER_MS")?,
            report_min_interval_ms: env_num(env, "HELIOS_REMOTE_REPORT_MIN_INTERVAL_MS")?,
            extra_ca: env_str(env, "HELIOS_REMOTE_EXTRA_CA").map(PathBuf::from),
            max_target_bytes: None,
        },
        provisioning: ProvisioningLayer {
            key: env_str(env, "HELIOS_PROVISIONING_KEY"),
            fleet: env_num(env, "HELIOS_PROVISIONING_FLEET")?,
            device_type: env_str(env, "HELIOS_PROVISIONING_DEVICE_TYPE"),
            os_version: env_str(env, "HELIOS_PROVISIONING_OS_VERSION"),
            supervisor_version: env_str(env, "HELIOS_PROVISIONING_SUPERVISOR_VERSION"),
        },
        legacy: LegacyLayer {
            api_endpoint: env_str(env, "HELIOS_LEGACY_API_ENDPOINT"),
            api_key: env_str(env, "HELIOS_LEGACY_API_KEY"),
            takeover_port: None,
        },
        host: HostLayer {
            os_version: env_str(env, "HELIOS_HOST_OS_VERSION"),
            runtime_dir: None,
            host_runtime_dir: env_str(env, "HELIOS_HOST_RUNTIME_DIR").map(PathBuf::from),
            dbus_address: env_str(env, "DBUS_SYSTEM_BUS_ADDRESS"),
            boot_dir: env_str(env, "BOOT_MOUNTPOINT").map(PathBuf::from),
            config_json: env_str(env, "CONFIG_MOUNT_POINT").map(PathBuf::from),
        },
        engine: EngineLayer {
            host: env_str(env, "DOCKER_HOST"),
        },
        seek: SeekLayer {
            local_retry_interval_ms: env_num(env, "HELIOS_LOCAL_RETRY_INTERVAL_MS")?,
            max_attempts: env_num(env, "HELIOS_MAX_APPLY_ATTEMPTS")?,
        },
        store: StoreLayer {
            dir: env_str(env, "HELIOS_STATE_DIR").map(PathBuf::from),
            ..Default::default()
        },
        supervision: SupervisionLayer::default(),
    };
    if container_mode(env) {
        l.uuid = env_str(env, "BALENA_DEVICE_UUID");
        // The entrypoint discards a directly passed key: managed only with both BALENA_API_*.
        l.remote.api_key = None;
        if let (Some(url), Some(key)) = (
            env_str(env, "BALENA_API_URL"),
            env_str(env, "BALENA_API_KEY"),
        ) {
            l.remote.api_endpoint = Some(url);
            l.remote.api_key = Some(key);
        }
        if let Some(os) = env_str(env, "BALENA_HOST_OS_VERSION") {
            l.host.os_version = Some(match env_str(env, "BALENA_HOST_OS_BOARD_REV") {
                Some(rev) => format!("{os}@{rev}"),
                None => os,
            });
        }
        l.host.host_runtime_dir = env_str(env, "BALENA_HOST_RUNTIME_DIR").map(PathBuf::from);
        if let (Some(key), Some(host), Some(port)) = (
            env_str(env, "BALENA_SUPERVISOR_API_KEY"),
            env_str(env, "BALENA_SUPERVISOR_HOST"),
            env_num::<u16>(env, "BALENA_SUPERVISOR_PORT")?,
        ) {
            let legacy_port =
                env_num::<u16>(env, "HELIOS_LEGACY_PORT")?.unwrap_or(DEFAULT_LEGACY_PORT);
            l.legacy.api_endpoint = Some(format!("http://{host}:{legacy_port}"));
            l.legacy.api_key = Some(key);
            l.legacy.takeover_port = Some(port);
        }
        if let Some(ms) = l.remote.poll_interval_ms {
            l.remote.poll_interval_ms = Some(ms.max(900_000));
        }
    }
    Ok(l)
}

/// XDG directories (spec §3), with the container's fixed values in container mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Dirs {
    pub config: PathBuf,
    pub state: PathBuf,
    pub runtime: PathBuf,
}

impl Dirs {
    pub fn from_env(env: &Env) -> Dirs {
        let container = container_mode(env);
        let home = env_str(env, "HOME").map(PathBuf::from);
        let xdg = |var: &str, container_default: &str, home_rel: &str| -> PathBuf {
            if let Some(v) = env_str(env, var) {
                return PathBuf::from(v);
            }
            if container {
                return PathBuf::from(container_default);
            }
            match &home {
                Some(h) => h.join(home_rel),
                None => PathBuf::from("/").join(home_rel),
            }
        };
        let runtime = match env_str(env, "XDG_RUNTIME_DIR") {
            Some(v) => PathBuf::from(v),
            None if container => PathBuf::from("/tmp/run"),
            None => PathBuf::from(env_str(env, "TMPDIR").unwrap_or_else(|| "/tmp".into()))
                .join("helios"),
        };
        Dirs {
            config: xdg("XDG_CONFIG_HOME", "/config", ".config").join("helios"),
            state: xdg("XDG_STATE_HOME", "/local", ".local/state").join("helios"),
            runtime,
        }
    }
}

/// How the device talks to the remote (spec §5.4).
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteMode {
    Unmanaged,
    /// Registered: uuid, endpoint and device key known.
    Managed(helios_actors::poll::RemoteSettings),
    /// Not registered yet: a provisioning key is known.
    Provisioning {
        remote: helios_actors::poll::RemoteSettings,
        provisioning: Provisioning,
    },
}

#[derive(Clone, PartialEq)]
pub struct Provisioning {
    pub key: String,
    pub fleet: u64,
    pub device_type: String,
    pub os_version: Option<String>,
    pub supervisor_version: Option<String>,
}

impl std::fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioning")
            .field("key", &"<redacted>")
            .field("fleet", &self.fleet)
            .field("device_type", &self.device_type)
            .finish()
    }
}

/// Legacy supervisor settings (the proxy is on when present).
#[derive(Clone, PartialEq)]
pub struct Legacy {
    pub endpoint: String,
    pub api_key: String,
    pub takeover_port: Option<u16>,
}

impl std::fmt::Debug for Legacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Legacy")
            .field("endpoint", &self.endpoint)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// The resolved configuration. Built once in `main`; each actor gets its own part.
#[derive(Debug, Clone)]
pub struct Config {
    pub config_path: PathBuf,
    pub uuid: String,
    /// The uuid was generated at this start (and is saved to the config file).
    pub uuid_generated: bool,
    pub listen: Vec<ListenAddr>,
    pub api_workers: usize,
    pub api_max_body_bytes: usize,
    /// The global device API key (`Debug` prints `<redacted>`).
    pub device_api_key: Option<helios_actors::Secret>,
    /// Names the TCP listener may be addressed by besides IP literals and `localhost`; None:
    /// the defaults (`api::guard::AllowedHosts::new`).
    pub api_allowed_hosts: Option<Vec<String>>,
    pub remote: RemoteMode,
    pub legacy: Option<Legacy>,
    pub host: helios_actors::host::HostSettings,
    pub engine: helios_actors::ports::engine::EngineSettings,
    pub seek: helios_actors::seek::SeekSettings,
    pub store: helios_actors::StoreSettings,
    pub supervision: helios_actors::supervise::RestartPolicy,
    pub report_min_interval: Duration,
    pub extra_ca: Option<PathBuf>,
    pub max_target_bytes: usize,
    /// Identity values from the environment or flags that the stored identity overrode.
    pub ignored_identity: Vec<String>,
    /// The device type slug, when configured (`provisioning.device_type`).
    pub device_type: Option<String>,
}

/// Everything `resolve` reads, so tests can pass their own.
pub struct Inputs<'a> {
    pub flags: &'a Flags,
    pub env: &'a Env,
}

/// Resolves the configuration: defaults < file < environment < flags.
pub fn resolve(inputs: Inputs<'_>) -> Result<Config, ConfigError> {
    let env = inputs.env;
    let dirs = Dirs::from_env(env);
    let config_path = inputs
        .flags
        .config
        .clone()
        .or_else(|| env_str(env, "HELIOS_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| dirs.config.join("config.toml"));
    let file = read_file(&config_path)?;
    let over = env_layer(env)?.merge(flags_layer(inputs.flags));
    let (over, ignored) = keep_stored_identity(&file, over);
    let merged = Layer::defaults().merge(file).merge(over);
    let mut config = build(merged, dirs, config_path, container_mode(env))?;
    config.ignored_identity = ignored;
    Ok(config)
}

/// Spec §5.4: a stored identity (uuid, endpoint and key in the config file) wins over a
/// partial one from the environment or flags, whose differing values are ignored (and named,
/// for a warning at start). Provisioning values are ignored once registered. All three given
/// together replace the stored identity.
fn keep_stored_identity(file: &Layer, mut over: Layer) -> (Layer, Vec<String>) {
    let stored =
        file.uuid.is_some() && file.remote.api_endpoint.is_some() && file.remote.api_key.is_some();
    let given_all =
        over.uuid.is_some() && over.remote.api_endpoint.is_some() && over.remote.api_key.is_some();
    let mut ignored = vec![];
    if !stored || given_all {
        return (over, ignored);
    }
    if over
        .uuid
        .take()
        .is_some_and(|u| Some(&u) != file.uuid.as_ref())
    {
        ignored.push("uuid".to_string());
    }
    if over
        .remote
        .api_endpoint
        .take()
        .is_some_and(|e| Some(&e) != file.remote.api_endpoint.as_ref())
    {
        ignored.push("remote.api_endpoint".to_string());
    }
    if over
        .remote
        .api_key
        .take()
        .is_some_and(|k| Some(&k) != file.remote.api_key.as_ref())
    {
        ignored.push("remote.api_key".to_string());
    }
    if over.provisioning.key.take().is_some() {
        ignored.push("provisioning.key (already registered)".to_string());
    }
    (over, ignored)
}

fn ms(v: Option<u64>) -> Duration {
    Duration::from_millis(v.unwrap_or_default())
}

fn check_endpoint(key: &str, v: &str) -> Result<(), ConfigError> {
    if !(v.starts_with("http://") || v.starts_with("https://")) || v.len() <= "https://".len() {
        return Err(invalid(key, format!("{v:?} is not an http(s) URI")));
    }
    Ok(())
}

fn non_empty(key: &str, v: Option<String>) -> Result<Option<String>, ConfigError> {
    match v {
        Some(s) if s.trim().is_empty() => Err(invalid(key, "must not be empty")),
        other => Ok(other),
    }
}

/// Parses a listen address: `IP:PORT` is TCP, anything else a unix socket path.
pub fn parse_listen(v: &str) -> Result<ListenAddr, ConfigError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(invalid("api.listen (--local-api-address)", "empty address"));
    }
    Ok(match v.parse::<SocketAddr>() {
        Ok(a) => ListenAddr::Tcp(a),
        Err(_) => ListenAddr::Unix(PathBuf::from(v)),
    })
}

fn build(
    l: Layer,
    dirs: Dirs,
    config_path: PathBuf,
    container: bool,
) -> Result<Config, ConfigError> {
    let uuid = non_empty("uuid (--uuid)", l.uuid)?;
    let uuid_generated = uuid.is_none();
    let uuid = uuid.unwrap_or_else(helios_actors::random_hex32);

    let listen = l.api.listen.unwrap_or_else(|| {
        vec![if container {
            CONTAINER_LISTEN
        } else {
            DEFAULT_LISTEN
        }
        .to_string()]
    });
    let listen = listen
        .iter()
        .map(|s| parse_listen(s))
        .collect::<Result<Vec<_>, _>>()?;
    let api_workers = l.api.workers.unwrap_or(1);
    if api_workers == 0 {
        return Err(invalid("api.workers", "must be at least 1"));
    }

    let endpoint = non_empty(
        "remote.api_endpoint (--remote-api-endpoint)",
        l.remote.api_endpoint,
    )?;
    let api_key = non_empty("remote.api_key (--remote-api-key)", l.remote.api_key)?;
    let prov_key = non_empty("provisioning.key (--provisioning-key)", l.provisioning.key)?;
    if let Some(e) = &endpoint {
        check_endpoint("remote.api_endpoint (--remote-api-endpoint)", e)?;
    }
    let remote_settings =
        |endpoint: String, api_key: Option<String>| helios_actors::poll::RemoteSettings {
            endpoint,
            api_key,
            uuid: uuid.clone(),
            request_timeout: ms(l.remote.request_timeout_ms),
            poll_interval: ms(l.remote.poll_interval_ms),
            poll_min_interval: ms(l.remote.poll_min_interval_ms),
            poll_max_jitter: ms(l.remote.poll_max_jitter_ms),
        };
    let remote = match (endpoint, api_key, prov_key) {
        (None, None, None) => RemoteMode::Unmanaged,
        (None, Some(_), _) => {
            return Err(ConfigError::Requires {
                key: "remote.api_key (--remote-api-key)".into(),
                requires: "remote.api_endpoint (--remote-api-endpoint)".into(),
            })
        }
        (None, None, Some(_)) => {
            return Err(ConfigError::Requires {
                key: "provisioning.key (--provisioning-key)".into(),
                requires: "remote.api_endpoint (--remote-api-endpoint)".into(),
            })
        }
        (Some(e), Some(k), _) => RemoteMode::Managed(remote_settings(e, Some(k))),
        (Some(e), None, Some(pk)) => {
            let fleet = l.provisioning.fleet.ok_or_else(|| ConfigError::Requires {
                key: "provisioning.key (--provisioning-key)".into(),
                requires: "provisioning.fleet (--provisioning-fleet)".into(),
            })?;
            let device_type = non_empty(
                "provisioning.device_type (--provisioning-device-type)",
                l.provisioning.device_type.clone(),
            )?
            .ok_or_else(|| ConfigError::Requires {
                key: "provisioning.key (--provisioning-key)".into(),
                requires: "provisioning.device_type (--provisioning-device-type)".into(),
            })?;
            RemoteMode::Provisioning {
                remote: remote_settings(e, None),
                provisioning: Provisioning {
                    key: pk,
                    fleet,
                    device_type,
                    os_version: l.provisioning.os_version,
                    supervisor_version: l.provisioning.supervisor_version,
                },
            }
        }
        (Some(_), None, None) => {
            return Err(ConfigError::Requires {
                key: "remote.api_endpoint (--remote-api-endpoint)".into(),
                requires:
                    "remote.api_key (--remote-api-key) or provisioning.key (--provisioning-key)"
                        .into(),
            })
        }
    };
    if let RemoteMode::Managed(r) | RemoteMode::Provisioning { remote: r, .. } = &remote {
        if r.poll_min_interval > r.poll_interval {
            return Err(invalid(
                "remote.poll_min_interval_ms (--remote-poll-min-interval-ms)",
                "must not exceed remote.poll_interval_ms",
            ));
        }
    }

    let legacy = match (
        non_empty(
            "legacy.api_endpoint (--legacy-api-endpoint)",
            l.legacy.api_endpoint,
        )?,
        non_empty("legacy.api_key (--legacy-api-key)", l.legacy.api_key)?,
    ) {
        (None, None) => None,
        (Some(endpoint), Some(api_key)) => {
            check_endpoint("legacy.api_endpoint (--legacy-api-endpoint)", &endpoint)?;
            Some(Legacy {
                endpoint,
                api_key,
                takeover_port: l.legacy.takeover_port,
            })
        }
        (Some(_), None) => {
            return Err(ConfigError::Requires {
                key: "legacy.api_endpoint (--legacy-api-endpoint)".into(),
                requires: "legacy.api_key (--legacy-api-key)".into(),
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::Requires {
                key: "legacy.api_key (--legacy-api-key)".into(),
                requires: "legacy.api_endpoint (--legacy-api-endpoint)".into(),
            })
        }
    };

    let os_version = l
        .host
        .os_version
        .map(|v| {
            OsVersion::parse(&v)
                .map_err(|m| invalid("host.os_version (--host-os-version)", format!("{v:?}: {m}")))
        })
        .transpose()?;
    let runtime_dir = l.host.runtime_dir.unwrap_or(dirs.runtime);
    let host = helios_actors::host::HostSettings {
        os_version,
        host_runtime_dir: l
            .host
            .host_runtime_dir
            .unwrap_or_else(|| runtime_dir.clone()),
        runtime_dir,
        dbus_address: l.host.dbus_address.unwrap_or_default(),
        boot: helios_actors::host::config::BootFiles {
            config_json: match (l.host.config_json, &l.host.boot_dir) {
                (Some(p), _) => p,
                (None, Some(b)) => b.join("config.json"),
                (None, None) => PathBuf::from("/mnt/boot/config.json"),
            },
            boot_dir: l
                .host
                .boot_dir
                .unwrap_or_else(|| PathBuf::from("/mnt/boot")),
        },
        uuid: uuid.clone(),
    };

    let engine_host = l.engine.host.unwrap_or_default();
    let engine = helios_actors::ports::engine::EngineSettings::parse(&engine_host)
        .map_err(|m| invalid("engine.host (--engine-host, DOCKER_HOST)", m))?;

    let store = helios_actors::StoreSettings {
        dir: l.store.dir.unwrap_or(dirs.state),
        cache_capacity: l.store.cache_capacity_bytes.unwrap_or(4 << 20),
    };
    if store.cache_capacity < (64 << 10) {
        return Err(invalid(
            "store.cache_capacity_bytes",
            "must be at least 65536",
        ));
    }

    let s = l.supervision;
    let supervision = helios_actors::supervise::RestartPolicy {
        backoff_initial: ms(s.backoff_initial_ms),
        backoff_max: ms(s.backoff_max_ms),
        max_restarts: s.max_restarts.unwrap_or(10),
        window: ms(s.restart_window_ms),
    };
    if supervision.max_restarts == 0 {
        return Err(invalid("supervision.max_restarts", "must be at least 1"));
    }

    let device_type = l.provisioning.device_type.filter(|t| !t.is_empty());
    Ok(Config {
        device_type,
        config_path,
        uuid,
        uuid_generated,
        listen,
        api_workers,
        api_max_body_bytes: l.api.max_body_bytes.unwrap_or(1 << 20),
        device_api_key: non_empty(
            "api.device_api_key (--device-api-key)",
            l.api.device_api_key,
        )?
        .map(helios_actors::Secret::new),
        api_allowed_hosts: l.api.allowed_hosts,
        remote,
        legacy,
        host,
        engine,
        seek: helios_actors::seek::SeekSettings {
            local_retry_interval: ms(l.seek.local_retry_interval_ms),
            max_attempts: l.seek.max_attempts.unwrap_or_default(),
        },
        store,
        supervision,
        report_min_interval: ms(l.remote.report_min_interval_ms),
        extra_ca: l.remote.extra_ca,
        max_target_bytes: l.remote.max_target_bytes.unwrap_or(10 << 20),
        ignored_identity: vec![],
    })
}

/// Writes `update` into the config file, keeping every other key; mode 0600, atomic rename.
/// Used to persist the identity (uuid, remote key) once known.
pub fn save_to_file(path: &Path, update: &Layer) -> Result<(), ConfigError> {
    let current = read_file(path)?;
    write_file(path, &current.merge(update.clone()))
}

/// Saves a registered identity: uuid, endpoint and device key; the provisioning key is dropped.
pub fn save_identity(
    path: &Path,
    uuid: &str,
    endpoint: &str,
    api_key: &str,
) -> Result<(), ConfigError> {
    let mut layer = read_file(path)?;
    layer.uuid = Some(uuid.to_string());
    layer.remote.api_endpoint = Some(endpoint.to_string());
    layer.remote.api_key = Some(api_key.to_string());
    layer.provisioning.key = None;
    write_file(path, &layer)
}

fn write_file(path: &Path, layer: &Layer) -> Result<(), ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let text = toml::to_string(layer).map_err(|e| invalid("config file", e.to_string()))?;
    let write_err = |source| ConfigError::Write {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let tmp = path.with_extension("toml.tmp");
    // A leftover temp file (or a link planted there) keeps its mode and owner when reopened:
    // remove it and create a new file, 0600 from its first byte.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(write_err(e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    f.write_all(
        b"# helios configuration; see config.example.toml for every key.\n\
          # helios writes its identity here; delete this file to make it forget it.\n",
    )
    .and_then(|_| f.write_all(text.as_bytes()))
    .and_then(|_| f.sync_all())
    .map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests;
