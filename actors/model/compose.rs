//! Normalised compose configuration of services, networks and volumes (the `config` objects of
//! spec/helios-api-v3.md §4.4), as both the target and the engine read-back produce it.
//! Plain serde types with a hand-written mahler `State` impl (Target = Self).
//!
//! The serde form is the internal, lossless representation (it is what mahler diffs and what
//! the `io.balena.private.config` container label stores): keys appear only when set, every
//! value is typed as stored. The `/v3/device` document additionally shows environment values
//! that look like numbers or booleans as JSON numbers/booleans: see
//! [`ServiceConfig::environment_json`]. The lenient compose parsing (string or list, short or
//! long forms, sizes, durations) lives in `model::target`.
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `depends_on` condition (compose long form); the list form means `service_started`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    #[default]
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

/// `io.balena.update.strategy` (spec/behaviours.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateStrategy {
    #[default]
    DownloadThenKill,
    KillThenDownload,
    DeleteThenDownload,
    HandOver,
}

/// How a service joins one of its app's networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkAttachment {
    /// User aliases; the service name is added by the engine adapter, not stored here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Compose `priority`: higher is connected first; the first network is the main one.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub priority: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

/// One entry of `volumes`: a named or anonymous volume, an allow-listed bind or a tmpfs.
/// Long-form options are flattened (as the §4.4 document shows `propagation` on the mount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Mount {
    /// `volume` | `bind` | `tmpfs`
    #[serde(rename = "type")]
    pub kind: String,
    /// Logical volume name (engine name `<name>_<app uuid>`), host path for binds, absent for
    /// anonymous volumes and tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Bind propagation: private | rprivate | shared | rshared | slave | rslave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    /// Volume: do not copy the image content at the target into a new volume.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nocopy: bool,
    /// Volume: mount this path inside the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// Tmpfs size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Tmpfs mode bits (e.g. 0o1777 = 1023).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// One published host port (ranges are expanded to one entry per host port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Container port.
    pub target: u16,
    /// Host port.
    pub published: u16,
    /// tcp | udp | sctp
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicyName {
    No,
    #[default]
    Always,
    UnlessStopped,
    OnFailure,
}

/// Restart policy; the compose default is `always`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RestartPolicy {
    pub name: RestartPolicyName,
    /// Only meaningful for `on_failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// A host device made available in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMapping {
    /// Host path (`/dev/…`).
    pub source: String,
    /// Path in the container (defaults to the host path).
    pub target: String,
    /// cgroup permissions, a subset of `rwm` (default `rwm`).
    pub permissions: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Healthcheck {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]`; absent: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub timeout: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub start_period: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub start_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Disables the image's healthcheck (engine test `["NONE"]`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

/// The normalised configuration of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The target's variables only (the injected ones are added at container creation).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Logical networks; ordered by [`ServiceConfig::network_names`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NetworkAttachment>,
    /// `host` | `none` | `bridge` | `service:<name>`; exclusive with `networks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Mount>,
    /// Short-form `tmpfs` entries, `path[:options]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Condition>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Normalised with `=` (`no-new-privileges=true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// Absent means true at container creation (balena default, stdout and stderr merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub stop_grace_period: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_opt: Vec<String>,
    /// `host:ip` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_limit: Option<i64>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_reservation: Option<i64>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<i64>,
    /// Compose `cpus` in units of 10⁻⁹ CPU (engine NanoCpus); shown as `cpus` (a number).
    #[serde(
        rename = "cpus",
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_cpus"
    )]
    pub nano_cpus: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_rt_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_rt_runtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill_disable: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    /// Cgroup namespace: `host` | `private`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl mahler::state::State for ServiceConfig {
    type Target = Self;
}

impl ServiceConfig {
    /// Logical networks the container joins, main network first: by compose `priority`
    /// (highest first), then by name. Empty with a `network_mode`.
    pub fn network_names(&self) -> Vec<String> {
        let mut nets: Vec<(&String, &NetworkAttachment)> = self.networks.iter().collect();
        nets.sort_by(|(an, a), (bn, b)| b.priority.cmp(&a.priority).then_with(|| an.cmp(bn)));
        nets.into_iter().map(|(n, _)| n.clone()).collect()
    }

    /// Named volumes it mounts (logical names, without duplicates, in mount order).
    pub fn volume_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for m in self.volumes.iter().filter(|m| m.kind == "volume") {
            if let Some(s) = &m.source {
                if !names.contains(s) {
                    names.push(s.clone());
                }
            }
        }
        names
    }

    /// Services it must wait for, with the condition: `depends_on` plus the service whose
    /// network namespace it joins (`network_mode: service:<name>`, started).
    pub fn dependencies(&self) -> BTreeMap<String, Condition> {
        let mut deps = self.depends_on.clone();
        if let Some(other) = self.network_service() {
            deps.entry(other.to_string()).or_default();
        }
        deps
    }

    /// The service named by `network_mode: service:<name>`.
    pub fn network_service(&self) -> Option<&str> {
        self.network_mode
            .as_deref()
            .and_then(|m| m.strip_prefix("service:"))
    }

    pub fn update_strategy(&self) -> UpdateStrategy {
        match self
            .labels
            .get("io.balena.update.strategy")
            .map(String::as_str)
        {
            Some("kill-then-download") => UpdateStrategy::KillThenDownload,
            Some("delete-then-download") => UpdateStrategy::DeleteThenDownload,
            Some("hand-over") => UpdateStrategy::HandOver,
            _ => UpdateStrategy::DownloadThenKill,
        }
    }

    pub fn handover_timeout(&self) -> Duration {
        self.labels
            .get("io.balena.update.handover-timeout")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(60))
    }

    /// Engine StopTimeout: `stop_grace_period` rounded up to whole seconds.
    pub fn stop_timeout_secs(&self) -> Option<i64> {
        self.stop_grace_period.map(|d| {
            let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            i64::try_from(s).unwrap_or(i64::MAX)
        })
    }

    /// The stop request's timeout (its `t`, whole seconds as an `i32`): [`Self::stop_timeout_secs`]
    /// or 10 when unset, saturated (validation keeps targets within it; a target stored
    /// before it did may not be).
    pub fn stop_request_secs(&self) -> i32 {
        self.stop_timeout_secs()
            .map_or(10, |s| i32::try_from(s).unwrap_or(i32::MAX))
    }

    /// The `config` object of a service in the `/v3/device` document (§4.4): the serde form
    /// with [`ServiceConfig::environment_json`] for `environment`.
    pub fn document(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a ServiceConfig serialises to JSON");
        if let Some(o) = v.as_object_mut() {
            if !self.environment.is_empty() {
                o.insert(
                    "environment".to_string(),
                    serde_json::Value::Object(self.environment_json()),
                );
            }
        }
        v
    }

    /// `environment` as the `/v3/device` document shows it: values that read as a JSON
    /// number in canonical form (`123`, `-4`, `1.5`, not `0123` or `1e3`) or as `true`/`false`
    /// become numbers/booleans, everything else stays a string.
    pub fn environment_json(&self) -> serde_json::Map<String, serde_json::Value> {
        environment_json(&self.environment)
    }
}

/// See [`ServiceConfig::environment_json`]; usable on any variable map (e.g. with the injected
/// variables added).
pub fn environment_json(
    env: &BTreeMap<String, String>,
) -> serde_json::Map<String, serde_json::Value> {
    env.iter()
        .map(|(k, v)| (k.clone(), env_value_json(v)))
        .collect()
}

fn env_value_json(v: &str) -> serde_json::Value {
    match v {
        "true" => return serde_json::Value::Bool(true),
        "false" => return serde_json::Value::Bool(false),
        _ => {}
    }
    let looks_numeric = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '-' | '.' | 'e' | 'E' | '+'));
    if looks_numeric {
        if let Ok(n) = serde_json::from_str::<serde_json::Number>(v) {
            if n.to_string() == v {
                return serde_json::Value::Number(n);
            }
        }
    }
    serde_json::Value::String(v.to_string())
}

/// Compose IPAM configuration of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    /// Default `default`.
    #[serde(default = "default_ipam_driver")]
    pub driver: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<IpamPool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

impl Default for Ipam {
    fn default() -> Self {
        Ipam {
            driver: default_ipam_driver(),
            config: Vec::new(),
            options: BTreeMap::new(),
        }
    }
}

fn default_ipam_driver() -> String {
    "default".to_string()
}

/// One `ipam.config` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IpamPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// Normalised network configuration. From a target, `driver` is always set (default
/// `bridge`), as it is when read back from the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub ipam: Ipam,
    #[serde(default)]
    pub enable_ipv6: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub config_only: bool,
}

impl mahler::state::State for NetworkConfig {
    type Target = Self;
}

/// Normalised volume configuration. From a target, `driver` is always set (default `local`),
/// as it is when read back from the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VolumeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl mahler::state::State for VolumeConfig {
    type Target = Self;
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// Formats a duration the compose way, losslessly: `1h2m3s500ms`, `250us`, `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        ((secs % 3600) / 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from((nanos / 1_000) % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect()
}

/// Parses a compose/Go duration: one or more `<number>[.<fraction>]<unit>` with units
/// `h`, `m`, `s`, `ms`, `us` (or `µs`), `ns` (`1m30s`, `1.5s`, `0`). Exact to the nanosecond.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".to_string());
    }
    let bad = || format!("{s:?} is not a duration like 1m30s, 10s or 500ms");
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            frac_part = &r[..frac_len];
            rest = &r[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut frac_ns: u128 = 0;
        let mut scale = unit;
        for d in frac_part.chars() {
            scale /= 10;
            frac_ns += u128::from(d.to_digit(10).expect("ascii digit")) * scale;
        }
        total = int
            .checked_mul(unit)
            .and_then(|v| v.checked_add(frac_ns))
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too long a duration"))?;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| format!("{s:?} is too long a duration"))?;
    Ok(Duration::new(
        secs,
        u32::try_from(total % 1_000_000_000).expect("below 10^9"),
    ))
}

/// `Option<Duration>` as a compose duration string.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        v.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// NanoCpus as a CPU count (`1500000000` ⇄ `1.5`); exact for any realistic value.
mod opt_cpus {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_f64(*n as f64 / 1e9),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v: Option<f64> = Option::deserialize(d)?;
        v.map(|c| {
            let n = (c * 1e9).round();
            if c.is_finite() && (0.0..9.0e18).contains(&n) {
                Ok(n as i64)
            } else {
                Err(serde::de::Error::custom(format!("{c} is not a CPU count")))
            }
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_request_timeout_saturates_instead_of_wrapping() {
        let with = |d: Option<Duration>| ServiceConfig {
            stop_grace_period: d,
            ..Default::default()
        };
        assert_eq!(with(None).stop_request_secs(), 10);
        assert_eq!(
            with(Some(Duration::from_millis(2500))).stop_request_secs(),
            3
        );
        // 2^32 + 5 s used to wrap to 5 s (and 2^31 s to a negative timeout).
        let huge = Duration::from_secs((1u64 << 32) + 5);
        assert_eq!(with(Some(huge)).stop_request_secs(), i32::MAX);
        assert_eq!(
            with(Some(Duration::from_secs(1 << 31))).stop_request_secs(),
            i32::MAX
        );
    }

    #[test]
    fn network_names_put_the_highest_priority_first_then_sort_by_name() {
        let mut cfg = ServiceConfig::default();
        for (n, p) in [("b", 0), ("a", 0), ("main", 10), ("z", 5)] {
            cfg.networks.insert(
                n.to_string(),
                NetworkAttachment {
                    priority: p,
                    ..Default::default()
                },
            );
        }
        assert_eq!(cfg.network_names(), ["main", "z", "a", "b"]);
    }

    #[test]
    fn dependencies_include_the_network_mode_service() {
        let cfg = ServiceConfig {
            network_mode: Some("service:vpn".into()),
            depends_on: BTreeMap::from([("db".to_string(), Condition::ServiceHealthy)]),
            ..Default::default()
        };
        assert_eq!(
            cfg.dependencies(),
            BTreeMap::from([
                ("db".to_string(), Condition::ServiceHealthy),
                ("vpn".to_string(), Condition::ServiceStarted),
            ])
        );
    }

    #[test]
    fn volume_names_are_named_volumes_only() {
        let cfg = ServiceConfig {
            volumes: vec![
                Mount {
                    kind: "volume".into(),
                    source: Some("data".into()),
                    target: "/data".into(),
                    ..Default::default()
                },
                Mount {
                    kind: "volume".into(),
                    source: None,
                    target: "/anon".into(),
                    ..Default::default()
                },
                Mount {
                    kind: "bind".into(),
                    source: Some("/sys".into()),
                    target: "/sys".into(),
                    ..Default::default()
                },
                Mount {
                    kind: "volume".into(),
                    source: Some("data".into()),
                    target: "/again".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(cfg.volume_names(), ["data"]);
    }

    #[test]
    fn durations_format_and_parse_losslessly() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::new(3723, 4_005_006), "1h2m3s4ms5us6ns"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d));
        }
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(".5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "10", "1x", "s", "1.s5", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_json_types_numbers_and_booleans() {
        let cfg = ServiceConfig {
            environment: [
                ("A", "123"),
                ("B", "true"),
                ("C", "1.5"),
                ("D", "0123"),
                ("E", "bar"),
                ("F", "-4"),
                ("G", "1e3"),
                ("H", ""),
                ("I", "True"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::Value::Object(cfg.environment_json()),
            serde_json::json!({"A": 123, "B": true, "C": 1.5, "D": "0123", "E": "bar",
                "F": -4, "G": "1e3", "H": "", "I": "True"})
        );
    }

    #[test]
    fn defaults_serialise_to_the_documented_shapes() {
        assert_eq!(
            serde_json::to_value(ServiceConfig::default()).unwrap(),
            serde_json::json!({"restart_policy": {"name": "always"}})
        );
        let net = NetworkConfig {
            driver: Some("bridge".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&net).unwrap(),
            serde_json::json!({"driver": "bridge", "enable_ipv6": false, "internal": false,
                "ipam": {"driver": "default"}})
        );
        assert_eq!(
            serde_json::from_value::<NetworkConfig>(serde_json::json!({"driver": "bridge"}))
                .unwrap(),
            net
        );
    }

    #[test]
    fn a_full_config_round_trips_through_json() {
        let cfg = ServiceConfig {
            command: Some(vec!["sleep".into(), "infinity".into()]),
            entrypoint: Some(vec![]),
            environment: BTreeMap::from([("N".to_string(), "007".to_string())]),
            stop_grace_period: Some(Duration::from_millis(2500)),
            nano_cpus: Some(333_333_333),
            healthcheck: Some(Healthcheck {
                test: Some(vec!["CMD".into(), "true".into()]),
                interval: Some(Duration::from_secs(5)),
                retries: Some(3),
                ..Default::default()
            }),
            restart_policy: RestartPolicy {
                name: RestartPolicyName::OnFailure,
                max_retries: Some(4),
            },
            ulimits: BTreeMap::from([("nofile".to_string(), Ulimit { soft: 1, hard: 2 })]),
            ports: vec![PortMapping {
                target: 80,
                published: 8080,
                protocol: "udp".into(),
                host_ip: Some("127.0.0.1".into()),
            }],
            ..Default::default()
        };
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<ServiceConfig>(&json).unwrap(), cfg);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["cpus"], serde_json::json!(0.333333333));
        assert_eq!(v["stop_grace_period"], "2s500ms");
        assert_eq!(
            v["restart_policy"],
            serde_json::json!({"name": "on_failure", "max_retries": 4})
        );
    }
}
