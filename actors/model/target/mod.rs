//! App target wire types (spec/helios-api-v3.md §4.5, target-state-v3.md §2.2–2.4) and the
//! one validation + normalisation path from them to the model's `App`, shared by remote and
//! local targets: whatever it rejects is rejected whole, before anything is created.
//!
//! Decisions where the specs are silent:
//! * bind sources: an allow-listed path or anything below it, compared by path components
//!   after dropping empty ones (`/sys/`, `//sys` → `/sys`); `.` and `..` components and
//!   relative paths are rejected; `/proc` only whole (nothing below it: `/proc/1/root` is the
//!   host's `/`). A textual rule, decided without looking at the host (helios may not share
//!   the engine's mount namespace, and links can change before the engine mounts): it keeps
//!   the rest of the host's filesystem out, it does not make an allowed bind harmless (a
//!   writable `/proc`, `/sys` or docker socket is root on the host, the release author's
//!   choice like `privileged`), nor follow links that a container allowed to write below an
//!   allow-listed path planted there;
//! * a volume whose `driver_opts.o` asks for a `bind`/`rbind` is a host bind too: its `device`
//!   follows the same allow-list, except in apps of class `app` (balena's own apps, like the
//!   supervisor app of target-state-v3.md §2 that binds `/tmp`);
//! * devices: host paths below `/dev` without `.` or `..` components;
//! * a `null` composition value means "not set"; unknown composition keys are ignored;
//! * `restart`: YAML's `no` may arrive as `false`; an unrecognised policy means `always`
//!   (behaviours.md §4.4);
//! * durations: compose strings (`1m30s`); a bare number means seconds;
//! * tmpfs `mode`: a string or number written in octal (`1777`), as in compose files;
//! * environment: list entries without `=` and `null` map values are dropped (there is no
//!   shell environment to take them from);
//! * `io.resin.*` labels are renamed `io.balena.*` (an `io.balena.*` label wins);
//! * names (release, service, network, volume, app uuid) must be engine-name safe; release
//!   and app uuids must not contain `_` (engine names are parsed at the last `_`).
use std::collections::{BTreeMap, BTreeSet};

use mahler::state::Map;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::compose::{
    Condition, DeviceMapping, Healthcheck, Ipam, IpamPool, Mount, NetworkAttachment, NetworkConfig,
    PortMapping, RestartPolicy, RestartPolicyName, ServiceConfig, Ulimit, VolumeConfig,
};
use super::device::{App, Network, Release, Service, Volume};

/// A target that cannot be applied; `field` is a path such as
/// `releases.<rel>.services.web.composition.volumes[1]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// One app of a target (`apps[<uuid>]` remotely, the body of `POST /v3/device/apps/{uuid}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppTarget {
    #[serde(deserialize_with = "de_u32")]
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// At most one release (checked by [`app_from_target`]).
    #[serde(default, deserialize_with = "de_null_default")]
    pub releases: BTreeMap<String, ReleaseTarget>,
    /// `fleet` | `app` | `block`; accepted, not used here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, deserialize_with = "de_null_default")]
    pub is_host: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReleaseTarget {
    #[serde(
        default,
        deserialize_with = "de_opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<u64>,
    #[serde(default, deserialize_with = "de_null_default")]
    pub services: BTreeMap<String, ServiceTarget>,
    /// Compose volume definitions (`null` or an object).
    #[serde(default, deserialize_with = "de_null_default")]
    pub volumes: BTreeMap<String, Value>,
    /// Compose network definitions (`null` or an object).
    #[serde(default, deserialize_with = "de_null_default")]
    pub networks: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceTarget {
    #[serde(deserialize_with = "de_u32")]
    pub id: u32,
    pub image: String,
    #[serde(
        default,
        deserialize_with = "de_opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    #[serde(default, deserialize_with = "de_string_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "de_string_map")]
    pub environment: BTreeMap<String, String>,
    /// The compose service definition; parsed and validated by [`app_from_target`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composition: Option<Value>,
}

fn de_null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn id_from_value(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a non-negative integer")),
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is not a non-negative integer")),
        other => Err(format!("expected an integer, got {other}")),
    }
}

fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    let n = id_from_value(&v).map_err(serde::de::Error::custom)?;
    u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is too large an id")))
}

fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => id_from_value(&v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn de_string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m: Option<BTreeMap<String, Value>> = Option::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (k, v) in m.unwrap_or_default() {
        match v {
            Value::Null => {}
            Value::String(s) => {
                out.insert(k, s);
            }
            Value::Number(n) => {
                out.insert(k, n.to_string());
            }
            Value::Bool(b) => {
                out.insert(k, b.to_string());
            }
            other => {
                return Err(serde::de::Error::custom(format!(
                    "{k}: expected a string, got {other}"
                )))
            }
        }
    }
    Ok(out)
}

/// Port mappings one target may expand to (`1-65535` is one full range's worth): one app
/// target (`POST /v3/device/apps/{uuid}`), or every app of one cloud document together. Each
/// costs a few hundred bytes through to the engine's HostConfig (model, stored config label,
/// port bindings, exposed ports, the create body), so the cap keeps a target's ports to tens
/// of MB at worst; without it a few `"1-65535:1-65535"` strings ask for gigabytes.
pub const MAX_PORT_MAPPINGS: u32 = 65_535;

/// What is left of [`MAX_PORT_MAPPINGS`] while a target is validated; counted from range
/// bounds before anything is expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBudget {
    left: u32,
}

impl Default for PortBudget {
    fn default() -> Self {
        PortBudget {
            left: MAX_PORT_MAPPINGS,
        }
    }
}

impl PortBudget {
    fn take(&mut self, n: u32, field: &str) -> Result<(), ValidationError> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(err(
                field,
                format!(
                    "{n} port mappings would exceed the {MAX_PORT_MAPPINGS} a target may publish \
                     in total ({} left)",
                    self.left
                ),
            )),
        }
    }
}

/// Validates an app target and normalises it into the model: one release keyed by its uuid
/// with its services, and the release's networks (plus an implied `default`) and volumes as
/// the app's. Its ports count against a budget of their own ([`MAX_PORT_MAPPINGS`]).
pub fn app_from_target(app_uuid: &str, t: AppTarget) -> Result<App, ValidationError> {
    app_from_target_within(app_uuid, t, &mut PortBudget::default())
}

/// [`app_from_target`] with the port budget shared by the apps of one document: what this app
/// publishes is taken from `ports` (on success only).
pub fn app_from_target_within(
    app_uuid: &str,
    t: AppTarget,
    ports: &mut PortBudget,
) -> Result<App, ValidationError> {
    let mut budget = *ports;
    check_uuid(app_uuid, "uuid")?;
    if let Some(name) = &t.name {
        if name.len() > 255 {
            return Err(err("name", "longer than 255 characters"));
        }
    }
    if t.releases.len() > 1 {
        return Err(err(
            "releases",
            format!("at most one release per app, got {}", t.releases.len()),
        ));
    }
    let mut app = App {
        id: t.id,
        name: t.name,
        ..Default::default()
    };
    for (rel, r) in t.releases {
        let rel_path = format!("releases.{rel}");
        check_uuid(&rel, &rel_path)?;

        let mut volumes = Map::new();
        for (name, v) in &r.volumes {
            let path = format!("{rel_path}.volumes.{name}");
            check_name(name, &path)?;
            let config = volume_config(v, &path)?;
            if t.class.as_deref() != Some("app") {
                check_volume_bind(&config, &path)?;
            }
            volumes.insert(name.clone(), Volume { config });
        }
        let mut networks = Map::new();
        for (name, v) in &r.networks {
            let path = format!("{rel_path}.networks.{name}");
            check_name(name, &path)?;
            let config = network_config(v, &path)?;
            networks.insert(name.clone(), Network { config });
        }
        let declared = Declared {
            volumes: volumes.keys().cloned().collect(),
            networks: networks.keys().cloned().collect(),
        };

        let mut services = Map::new();
        for (name, s) in &r.services {
            let path = format!("{rel_path}.services.{name}");
            check_name(name, &path)?;
            let svc = service_from_target(s, &path, &declared, &mut budget)?;
            services.insert(name.clone(), svc);
        }
        check_dependencies(&services, &rel_path)?;

        let needs_default = services
            .values()
            .any(|s| s.config.networks.contains_key("default"));
        if needs_default && !networks.contains_key("default") {
            networks.insert(
                "default".to_string(),
                Network {
                    config: network_config(&Value::Null, "")?,
                },
            );
        }
        app.networks = networks;
        app.volumes = volumes;
        app.releases.insert(rel, Release { services });
    }
    *ports = budget;
    Ok(app)
}

/// What a release declares, for the services' references.
struct Declared {
    volumes: BTreeSet<String>,
    networks: BTreeSet<String>,
}

fn check_uuid(v: &str, field: &str) -> Result<(), ValidationError> {
    check_name(v, field)?;
    if v.contains('_') {
        return Err(err(field, format!("{v:?} must not contain '_'")));
    }
    Ok(())
}

/// Engine-name safe: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 255 characters.
fn check_name(v: &str, field: &str) -> Result<(), ValidationError> {
    let ok = v.len() <= 255
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!(
                "{v:?} is not a valid name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 255 characters)"
            ),
        ))
    }
}

fn service_from_target(
    s: &ServiceTarget,
    path: &str,
    declared: &Declared,
    budget: &mut PortBudget,
) -> Result<Service, ValidationError> {
    let image = normalise_image(&s.image).map_err(|m| err(&format!("{path}.image"), m))?;
    for k in s.environment.keys() {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(err(
                &format!("{path}.environment.{k}"),
                "variable names must match [a-zA-Z_][a-zA-Z0-9_]*",
            ));
        }
    }
    for k in s.labels.keys() {
        check_label_key(k, &format!("{path}.labels.{k}"))?;
    }
    let cpath = format!("{path}.composition");
    let empty = serde_json::Map::new();
    let composition = match &s.composition {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(other) => return Err(err(&cpath, format!("expected an object, got {other}"))),
    };
    let mut config = composition_config(composition, &cpath, declared, budget)?;
    config
        .environment
        .extend(s.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
    config
        .labels
        .extend(s.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    config.labels = normalise_labels(std::mem::take(&mut config.labels));
    for k in config.labels.keys() {
        if k.starts_with("io.balena.private.config") {
            return Err(err(
                &format!("{path}.labels.{k}"),
                "io.balena.private.config* labels are reserved for helios",
            ));
        }
    }
    let running = s
        .running
        .or_else(|| composition.get("running").and_then(Value::as_bool))
        .unwrap_or(true);
    Ok(Service {
        id: s.id,
        image,
        running,
        config,
        container: None,
    })
}

fn check_label_key(k: &str, field: &str) -> Result<(), ValidationError> {
    let ok = !k.is_empty()
        && k.len() <= 255
        && k.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '`'));
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            "label names are printable ASCII without spaces or quotes, at most 255 characters",
        ))
    }
}

/// `io.resin.*` → `io.balena.*` (`features.resin-*` → `features.balena-*`); an existing
/// `io.balena.*` label wins over a renamed one.
fn normalise_labels(labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut renamed = Vec::new();
    for (k, v) in labels {
        match k.strip_prefix("io.resin.") {
            Some(rest) => {
                let rest = match rest.strip_prefix("features.resin-") {
                    Some(f) => format!("features.balena-{f}"),
                    None => rest.to_string(),
                };
                renamed.push((format!("io.balena.{rest}"), v));
            }
            None => {
                out.insert(k, v);
            }
        }
    }
    for (k, v) in renamed {
        out.entry(k).or_insert(v);
    }
    out
}

/// Parses and validates a compose service definition (minus the cross-service checks).
fn composition_config(
    c: &serde_json::Map<String, Value>,
    path: &str,
    declared: &Declared,
    budget: &mut PortBudget,
) -> Result<ServiceConfig, ValidationError> {
    let mut cfg = ServiceConfig::default();
    for (key, v) in c {
        if v.is_null() {
            continue;
        }
        let p = format!("{path}.{key}");
        let p = p.as_str();
        match key.as_str() {
            "command" => cfg.command = Some(command(v, p)?),
            "entrypoint" => cfg.entrypoint = Some(command(v, p)?),
            "environment" => cfg.environment = environment(v, p)?,
            "labels" => {
                cfg.labels = string_map(v, p)?;
                for k in cfg.labels.keys() {
                    check_label_key(k, &format!("{p}.{k}"))?;
                }
            }
            "annotations" => cfg.annotations = string_map(v, p)?,
            "networks" => cfg.networks = service_networks(v, p)?,
            "network_mode" => cfg.network_mode = Some(string(v, p)?),
            "volumes" => cfg.volumes = volumes(v, p, declared)?,
            "tmpfs" => cfg.tmpfs = tmpfs(v, p)?,
            "ports" => cfg.ports = ports(v, p, budget)?,
            "depends_on" => cfg.depends_on = depends_on(v, p)?,
            "restart" => cfg.restart_policy = restart(v),
            "sysctls" => cfg.sysctls = sysctls(v, p)?,
            "security_opt" => cfg.security_opt = security_opt(v, p)?,
            "cap_add" => cfg.cap_add = string_list(v, p)?,
            "cap_drop" => cfg.cap_drop = string_list(v, p)?,
            "devices" => cfg.devices = devices(v, p)?,
            "device_cgroup_rules" => cfg.device_cgroup_rules = string_list(v, p)?,
            "privileged" => cfg.privileged = Some(boolean(v, p)?),
            "init" => cfg.init = Some(boolean(v, p)?),
            "tty" => cfg.tty = Some(boolean(v, p)?),
            "read_only" => cfg.read_only = Some(boolean(v, p)?),
            "oom_kill_disable" => cfg.oom_kill_disable = Some(boolean(v, p)?),
            "healthcheck" => cfg.healthcheck = Some(healthcheck(v, p)?),
            "working_dir" => cfg.working_dir = Some(string(v, p)?),
            "user" => cfg.user = Some(string(v, p)?),
            "hostname" => cfg.hostname = Some(string(v, p)?),
            "domainname" => cfg.domainname = Some(string(v, p)?),
            "stop_signal" => cfg.stop_signal = Some(string(v, p)?),
            "stop_grace_period" => cfg.stop_grace_period = Some(stop_grace_period(v, p)?),
            "dns" => cfg.dns = string_list(v, p)?,
            "dns_search" => cfg.dns_search = string_list(v, p)?,
            "dns_opt" => cfg.dns_opt = string_list(v, p)?,
            "extra_hosts" => cfg.extra_hosts = extra_hosts(v, p)?,
            "mem_limit" => cfg.mem_limit = Some(bytes(v, p)?),
            "mem_reservation" => cfg.mem_reservation = Some(bytes(v, p)?),
            "shm_size" => cfg.shm_size = Some(bytes(v, p)?),
            "cpus" => cfg.nano_cpus = Some(cpus(v, p)?),
            "cpu_shares" => cfg.cpu_shares = Some(integer(v, p)?),
            "cpu_quota" => cfg.cpu_quota = Some(integer(v, p)?),
            "cpu_period" => cfg.cpu_period = Some(integer(v, p)?),
            "cpu_rt_period" => cfg.cpu_rt_period = Some(integer(v, p)?),
            "cpu_rt_runtime" => cfg.cpu_rt_runtime = Some(integer(v, p)?),
            "cpuset" => cfg.cpuset = Some(string(v, p)?),
            "pids_limit" => cfg.pids_limit = Some(integer(v, p)?),
            "oom_score_adj" => {
                let n = integer(v, p)?;
                if !(-1000..=1000).contains(&n) {
                    return Err(err(p, "must be between -1000 and 1000"));
                }
                cfg.oom_score_adj = Some(n);
            }
            "group_add" => cfg.group_add = string_list(v, p)?,
            "cgroup" => cfg.cgroup = Some(one_of(v, p, &["host", "private"])?),
            "cgroup_parent" => cfg.cgroup_parent = Some(string(v, p)?),
            "ulimits" => cfg.ulimits = ulimits(v, p)?,
            "runtime" => cfg.runtime = Some(string(v, p)?),
            "userns_mode" => cfg.userns_mode = Some(string(v, p)?),
            "uts" => cfg.uts = Some(one_of(v, p, &["host"])?),
            "pid" => cfg.pid = Some(one_of(v, p, &["host"])?),
            "ipc" => cfg.ipc = Some(one_of(v, p, &["host", "private", "shareable", "none"])?),
            _ => {}
        }
    }

    let mode_path = format!("{path}.network_mode");
    if let Some(mode) = &cfg.network_mode {
        if !cfg.networks.is_empty() {
            return Err(err(
                &mode_path,
                "network_mode and networks are mutually exclusive",
            ));
        }
        let ok = matches!(mode.as_str(), "host" | "none" | "bridge")
            || mode.strip_prefix("service:").is_some_and(|s| !s.is_empty());
        if !ok {
            return Err(err(
                &mode_path,
                format!("{mode:?} is not one of host, none, bridge, service:<name>"),
            ));
        }
    } else if cfg.networks.is_empty() {
        cfg.networks
            .insert("default".to_string(), NetworkAttachment::default());
    }
    for name in cfg.networks.keys() {
        if name != "default" && !declared.networks.contains(name) {
            return Err(err(
                &format!("{path}.networks.{name}"),
                format!("network {name:?} is not declared in the release"),
            ));
        }
    }
    Ok(cfg)
}

/// `depends_on` and `network_mode: service:<x>` reference services of the release, and the
/// dependency graph has no cycle.
fn check_dependencies(
    services: &Map<String, Service>,
    rel_path: &str,
) -> Result<(), ValidationError> {
    for (name, s) in services.iter() {
        let path = format!("{rel_path}.services.{name}.composition");
        if let Some(other) = s.config.network_service() {
            if other == name || !services.contains_key(other) {
                return Err(err(
                    &format!("{path}.network_mode"),
                    format!("service {other:?} is not another service of the release"),
                ));
            }
        }
        for dep in s.config.depends_on.keys() {
            if dep == name || !services.contains_key(dep) {
                return Err(err(
                    &format!("{path}.depends_on.{dep}"),
                    format!("service {dep:?} is not another service of the release"),
                ));
            }
        }
    }
    // Depth-first search; 0 = unvisited, 1 = on the stack, 2 = done.
    fn visit<'a>(
        n: &'a str,
        services: &'a Map<String, Service>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| *s == n).expect("on the stack");
                let mut cycle = stack[start..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n);
        let deps: Vec<&String> = services
            .get(n)
            .map(|s| s.config.dependencies())
            .unwrap_or_default()
            .keys()
            .filter_map(|d| services.get_key_value(d).map(|(k, _)| k))
            .collect();
        for d in deps {
            if let Some(c) = visit(d, services, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for name in services.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(name, services, &mut state, &mut stack) {
            return Err(err(
                &format!("{rel_path}.services.{}.composition.depends_on", cycle[0]),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            ));
        }
    }
    Ok(())
}

// ---- scalar helpers -------------------------------------------------------------------------

fn string(v: &Value, p: &str) -> Result<String, ValidationError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(err(p, format!("expected a string, got {other}"))),
    }
}

fn one_of(v: &Value, p: &str, allowed: &[&str]) -> Result<String, ValidationError> {
    let s = string(v, p)?;
    if allowed.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(err(
            p,
            format!("{s:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

fn boolean(v: &Value, p: &str) -> Result<bool, ValidationError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        other => Err(err(p, format!("expected a boolean, got {other}"))),
    }
}

fn integer(v: &Value, p: &str) -> Result<i64, ValidationError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| err(p, format!("{n} is not an integer"))),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| err(p, format!("{s:?} is not an integer"))),
        other => Err(err(p, format!("expected an integer, got {other}"))),
    }
}

fn list<'a>(v: &'a Value, p: &str) -> Result<&'a Vec<Value>, ValidationError> {
    v.as_array()
        .ok_or_else(|| err(p, format!("expected a list, got {v}")))
}

/// A list of strings (numbers coerced), or a single string.
fn string_list(v: &Value, p: &str) -> Result<Vec<String>, ValidationError> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| string(x, &format!("{p}[{i}]")))
            .collect(),
        other => Ok(vec![string(other, p)?]),
    }
}

/// A map of strings (numbers and booleans coerced, `null` dropped) or a list of `k=v`.
fn string_map(v: &Value, p: &str) -> Result<BTreeMap<String, String>, ValidationError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if !x.is_null() {
                    out.insert(k.clone(), string(x, &format!("{p}.{k}"))?);
                }
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let ip = format!("{p}[{i}]");
                let s = string(x, &ip)?;
                match s.split_once('=') {
                    Some((k, val)) => out.insert(k.to_string(), val.to_string()),
                    None => out.insert(s, String::new()),
                };
            }
        }
        other => return Err(err(p, format!("expected a map or a list, got {other}"))),
    }
    Ok(out)
}

fn environment(v: &Value, p: &str) -> Result<BTreeMap<String, String>, ValidationError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let s = string(x, &format!("{p}[{i}]"))?;
                if let Some((k, val)) = s.split_once('=') {
                    out.insert(k.to_string(), val.to_string());
                }
            }
        }
        _ => out = string_map(v, p)?,
    }
    for k in out.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(err(&format!("{p}.{k}"), "invalid variable name"));
        }
    }
    Ok(out)
}

/// Compose `command`/`entrypoint`: a string (shell-split) or a list.
fn command(v: &Value, p: &str) -> Result<Vec<String>, ValidationError> {
    match v {
        Value::String(s) => shell_split(s).map_err(|m| err(p, m)),
        Value::Array(_) => string_list(v, p),
        other => Err(err(p, format!("expected a string or a list, got {other}"))),
    }
}

/// Splits a command line the way a POSIX shell would, without any expansion (`$` stays
/// literal): whitespace separates words, single quotes are literal, double quotes allow
/// `\"`, `\\`, `\$`, `` \` `` escapes, a backslash outside quotes escapes the next character.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => w.push(e),
                            Some('\n') => {}
                            Some(e) => {
                                w.push('\\');
                                w.push(e);
                            }
                            None => return Err(format!("unclosed double quote in {s:?}")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed double quote in {s:?}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(e) => word.get_or_insert_with(String::new).push(e),
                None => return Err(format!("trailing backslash in {s:?}")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    Ok(words)
}

/// A compose duration string, or a number of seconds.
fn duration(v: &Value, p: &str) -> Result<std::time::Duration, ValidationError> {
    match v {
        Value::String(s) => super::compose::parse_duration(s).map_err(|m| err(p, m)),
        Value::Number(n) => n
            .as_f64()
            .and_then(|f| std::time::Duration::try_from_secs_f64(f).ok())
            .ok_or_else(|| err(p, format!("{n} is not a number of seconds"))),
        other => Err(err(p, format!("expected a duration, got {other}"))),
    }
}

/// The longest stop grace period: the engine's stop request takes whole seconds as an `i32`
/// (rounded up, like [`ServiceConfig::stop_timeout_secs`]).
const MAX_STOP_SECS: u64 = 2_147_483_647;

fn stop_grace_period(v: &Value, p: &str) -> Result<std::time::Duration, ValidationError> {
    let d = duration(v, p)?;
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    if secs > MAX_STOP_SECS {
        return Err(err(
            p,
            format!("at most {MAX_STOP_SECS}s (the engine's stop timeout), got {secs}s"),
        ));
    }
    Ok(d)
}

/// A duration the engine takes in nanoseconds as an `i64` (healthcheck timings): at most
/// about 292 years.
fn engine_duration(v: &Value, p: &str) -> Result<std::time::Duration, ValidationError> {
    let d = duration(v, p)?;
    if i64::try_from(d.as_nanos()).is_err() {
        return Err(err(
            p,
            format!("at most {}ns (the engine's limit)", i64::MAX),
        ));
    }
    Ok(d)
}

/// A byte count: a number, or `<n>[bkmgt][b]` (powers of 1024, case-insensitive).
fn bytes(v: &Value, p: &str) -> Result<i64, ValidationError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| err(p, format!("{n} is not a byte count"))),
        Value::String(s) => parse_bytes(s).map_err(|m| err(p, m)),
        other => Err(err(p, format!("expected a size, got {other}"))),
    }
}

/// `<n>[bkmgt][b]` (`64m`, `1.5g`, `512kb`, `100`) in bytes.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_len);
    let mult: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" => 1024.0,
        "m" | "mb" => 1024.0 * 1024.0,
        "g" | "gb" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{s:?} is not a size like 64m or 1g")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64m or 1g"))?;
    let b = (n * mult).floor();
    if !b.is_finite() || b >= 9.0e18 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(b as i64)
}

fn cpus(v: &Value, p: &str) -> Result<i64, ValidationError> {
    let c = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| err(p, format!("expected a number of CPUs, got {v}")))?;
    if !c.is_finite() || c < 0.0 {
        return Err(err(p, "must be a finite number ≥ 0"));
    }
    let n = (c * 1e9).round();
    if n >= 9.0e18 {
        return Err(err(p, "too large"));
    }
    Ok(n as i64)
}

// ---- structured keys ------------------------------------------------------------------------

fn service_networks(
    v: &Value,
    p: &str,
) -> Result<BTreeMap<String, NetworkAttachment>, ValidationError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                out.insert(
                    string(x, &format!("{p}[{i}]"))?,
                    NetworkAttachment::default(),
                );
            }
        }
        Value::Object(m) => {
            for (name, x) in m {
                let np = format!("{p}.{name}");
                let mut a = NetworkAttachment::default();
                match x {
                    Value::Null => {}
                    Value::Object(o) => {
                        for (k, val) in o {
                            if val.is_null() {
                                continue;
                            }
                            let kp = format!("{np}.{k}");
                            match k.as_str() {
                                "aliases" => a.aliases = string_list(val, &kp)?,
                                "priority" => a.priority = integer(val, &kp)?,
                                "ipv4_address" => a.ipv4_address = Some(string(val, &kp)?),
                                "ipv6_address" => a.ipv6_address = Some(string(val, &kp)?),
                                "mac_address" => a.mac_address = Some(string(val, &kp)?),
                                _ => {}
                            }
                        }
                    }
                    other => return Err(err(&np, format!("expected an object, got {other}"))),
                }
                out.insert(name.clone(), a);
            }
        }
        other => return Err(err(p, format!("expected a list or a map, got {other}"))),
    }
    Ok(out)
}

/// Bind sources helios accepts: these paths or anything below them.
pub const BIND_ALLOW_LIST: [&str; 9] = [
    "/var/run/docker.sock",
    "/run/dbus",
    "/sys",
    "/proc",
    "/lib/modules",
    "/lib/firmware",
    "/var/log/journal",
    "/run/log/journal",
    "/etc/machine-id",
];

/// Allow-listed paths that may only be bound whole. Below `/proc` are the processes'
/// directories (`/proc/<pid>`, `/proc/self`, `/proc/thread-self`, and `/proc/net`,
/// `/proc/mounts` that link into them) with magic links (`root`, `cwd`, `exe`, `fd/<n>`,
/// `map_files/*`, `ns/*`) that the engine, mounting as the host's root, follows to any file or
/// namespace of the host: `/proc/1/root` is the host's `/`. Refusing the whole subtree holds
/// whatever links a host or a kernel adds there; `/proc` itself stays (its magic links are
/// then resolved by the container's own credentials).
const BIND_WHOLE_ONLY: [&str; 1] = ["/proc"];

/// A volume whose driver options bind a host path (`o=bind`, the local driver's bind mount)
/// must bind an allow-listed one.
fn check_volume_bind(c: &VolumeConfig, p: &str) -> Result<(), ValidationError> {
    let binds = c
        .driver_opts
        .get("o")
        .is_some_and(|o| o.split(',').any(|x| matches!(x.trim(), "bind" | "rbind")));
    if !binds {
        return Ok(());
    }
    let device = c
        .driver_opts
        .get("device")
        .map(String::as_str)
        .unwrap_or("");
    bind_source(device)
        .map(|_| ())
        .map_err(|e| err(&format!("{p}.driver_opts.device"), e))
}

/// The normalised bind source if it is allowed.
pub fn bind_source(src: &str) -> Result<String, String> {
    if !src.starts_with('/') {
        return Err(format!("bind source {src:?} must be an absolute host path"));
    }
    let parts: Vec<&str> = src.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(format!("bind source {src:?} must not contain . or .."));
    }
    let norm = format!("/{}", parts.join("/"));
    if let Some(whole) = BIND_WHOLE_ONLY
        .iter()
        .find(|a| norm.starts_with(&format!("{a}/")))
    {
        return Err(format!(
            "bind source {src:?} is below {whole}: only {whole} itself may be bound (paths \
             below it, like /proc/<pid>/root, /proc/self/cwd or /proc/<pid>/fd/<n>, are links \
             the engine follows anywhere on the host)"
        ));
    }
    let allowed = BIND_ALLOW_LIST
        .iter()
        .any(|a| norm == *a || norm.starts_with(&format!("{a}/")));
    if allowed {
        Ok(norm)
    } else {
        Err(format!(
            "bind source {src:?} is not allowed (allowed: {}, or below them except below {})",
            BIND_ALLOW_LIST.join(", "),
            BIND_WHOLE_ONLY.join(", ")
        ))
    }
}

fn container_path(t: &str, p: &str) -> Result<String, ValidationError> {
    if !t.starts_with('/') {
        return Err(err(p, format!("target {t:?} must be an absolute path")));
    }
    Ok(t.to_string())
}

fn volumes(v: &Value, p: &str, declared: &Declared) -> Result<Vec<Mount>, ValidationError> {
    let mut out = Vec::new();
    for (i, x) in list(v, p)?.iter().enumerate() {
        let ip = format!("{p}[{i}]");
        let m = match x {
            Value::String(s) => short_volume(s, &ip)?,
            Value::Object(o) => long_volume(o, &ip)?,
            other => {
                return Err(err(
                    &ip,
                    format!("expected a string or an object, got {other}"),
                ))
            }
        };
        if m.kind == "volume" {
            if let Some(name) = &m.source {
                if !declared.volumes.contains(name) {
                    return Err(err(
                        &ip,
                        format!("volume {name:?} is not declared in the release"),
                    ));
                }
            }
        }
        out.push(m);
    }
    Ok(out)
}

const PROPAGATIONS: [&str; 6] = [
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

/// `name:/path[:opts]`, `/host:/path[:opts]` or `/path` (anonymous volume).
fn short_volume(s: &str, p: &str) -> Result<Mount, ValidationError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [t] => (None, *t, None),
        [src, t] => (Some(*src), *t, None),
        [src, t, o] => (Some(*src), *t, Some(*o)),
        _ => return Err(err(p, format!("{s:?} is not source:target[:options]"))),
    };
    let mut m = Mount {
        kind: "volume".to_string(),
        target: container_path(target, p)?,
        ..Default::default()
    };
    if let Some(src) = source {
        if src.is_empty() {
            return Err(err(p, format!("{s:?} has an empty source")));
        }
        if src.starts_with(['/', '.', '~']) {
            m.kind = "bind".to_string();
            m.source = Some(bind_source(src).map_err(|e| err(p, e))?);
        } else {
            m.source = Some(src.to_string());
        }
    }
    for o in opts.into_iter().flat_map(|o| o.split(',')) {
        match o {
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            "z" | "Z" => {}
            "nocopy" if m.kind == "volume" => m.nocopy = true,
            o if m.kind == "bind" && PROPAGATIONS.contains(&o) => {
                m.propagation = Some(o.to_string())
            }
            o => return Err(err(p, format!("unsupported volume option {o:?}"))),
        }
    }
    Ok(m)
}

fn long_volume(o: &serde_json::Map<String, Value>, p: &str) -> Result<Mount, ValidationError> {
    let get = |k: &str| o.get(k).filter(|v| !v.is_null());
    let target = match get("target") {
        Some(t) => string(t, &format!("{p}.target"))?,
        None => return Err(err(p, "target is required")),
    };
    let source = get("source")
        .map(|s| string(s, &format!("{p}.source")))
        .transpose()?
        .filter(|s| !s.is_empty());
    let kind = match get("type") {
        Some(t) => string(t, &format!("{p}.type"))?,
        None if source.as_deref().is_some_and(|s| s.starts_with('/')) => "bind".to_string(),
        None => "volume".to_string(),
    };
    let mut m = Mount {
        kind: kind.clone(),
        target: container_path(&target, &format!("{p}.target"))?,
        ..Default::default()
    };
    if let Some(ro) = get("read_only") {
        m.read_only = boolean(ro, &format!("{p}.read_only"))?;
    }
    let sub = |k: &str| -> Result<Option<&serde_json::Map<String, Value>>, ValidationError> {
        match get(k) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(other) => Err(err(
                &format!("{p}.{k}"),
                format!("expected an object, got {other}"),
            )),
        }
    };
    match kind.as_str() {
        "bind" => {
            let src = source.ok_or_else(|| err(&format!("{p}.source"), "a bind needs a source"))?;
            m.source = Some(bind_source(&src).map_err(|e| err(&format!("{p}.source"), e))?);
            if let Some(b) = sub("bind")? {
                if let Some(prop) = b.get("propagation").filter(|v| !v.is_null()) {
                    let pp = format!("{p}.bind.propagation");
                    m.propagation = Some(one_of(prop, &pp, &PROPAGATIONS)?);
                }
            }
        }
        "volume" => {
            m.source = source;
            if let Some(vo) = sub("volume")? {
                if let Some(n) = vo.get("nocopy").filter(|v| !v.is_null()) {
                    m.nocopy = boolean(n, &format!("{p}.volume.nocopy"))?;
                }
                if let Some(s) = vo.get("subpath").filter(|v| !v.is_null()) {
                    let sp = format!("{p}.volume.subpath");
                    let s = string(s, &sp)?;
                    if s.starts_with('/') || s.split('/').any(|c| c == "..") {
                        return Err(err(&sp, "must be a relative path inside the volume"));
                    }
                    m.subpath = Some(s);
                }
            }
        }
        "tmpfs" => {
            if source.is_some() {
                return Err(err(&format!("{p}.source"), "a tmpfs has no source"));
            }
            if let Some(t) = sub("tmpfs")? {
                if let Some(s) = t.get("size").filter(|v| !v.is_null()) {
                    m.size = Some(bytes(s, &format!("{p}.tmpfs.size"))?);
                }
                if let Some(md) = t.get("mode").filter(|v| !v.is_null()) {
                    m.mode = Some(octal_mode(md, &format!("{p}.tmpfs.mode"))?);
                }
            }
        }
        other => {
            return Err(err(
                &format!("{p}.type"),
                format!("{other:?} is not one of volume, bind, tmpfs"),
            ))
        }
    }
    Ok(m)
}

/// A file mode written in octal digits (`1777`, `"0755"`).
fn octal_mode(v: &Value, p: &str) -> Result<u32, ValidationError> {
    let digits = match v {
        Value::Number(n) if n.is_u64() => n.to_string(),
        Value::String(s) => s.trim().trim_start_matches("0o").to_string(),
        other => return Err(err(p, format!("expected an octal mode, got {other}"))),
    };
    u32::from_str_radix(&digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| err(p, format!("{digits:?} is not an octal file mode")))
}

fn tmpfs(v: &Value, p: &str) -> Result<Vec<String>, ValidationError> {
    let entries = string_list(v, p)?;
    for (i, e) in entries.iter().enumerate() {
        let path = e.split_once(':').map_or(e.as_str(), |(a, _)| a);
        container_path(path, &format!("{p}[{i}]"))?;
    }
    Ok(entries)
}

/// Parses every entry first, takes their expanded count from `budget`, and only then expands.
fn ports(v: &Value, p: &str, budget: &mut PortBudget) -> Result<Vec<PortMapping>, ValidationError> {
    let mut specs = Vec::new();
    for (i, x) in list(v, p)?.iter().enumerate() {
        let ip = format!("{p}[{i}]");
        let spec = match x {
            Value::Number(_) => port_spec(&string(x, &ip)?).map_err(|m| err(&ip, m))?,
            Value::String(s) => port_spec(s).map_err(|m| err(&ip, m))?,
            Value::Object(o) => long_port(o, &ip)?,
            other => {
                return Err(err(
                    &ip,
                    format!("expected a string or an object, got {other}"),
                ))
            }
        };
        budget.take(spec.count(), &ip)?;
        specs.push(spec);
    }
    Ok(specs.iter().flat_map(PortSpec::expand).collect())
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let one = |x: &str| -> Result<u16, String> {
        x.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{x:?} is not a port number (1-65535)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("{s:?} is not an increasing range"));
            }
            Ok((a, b))
        }
        None => {
            let a = one(s)?;
            Ok((a, a))
        }
    }
}

fn protocol(s: &str) -> Result<String, String> {
    let l = s.to_ascii_lowercase();
    if matches!(l.as_str(), "tcp" | "udp" | "sctp") {
        Ok(l)
    } else {
        Err(format!("{s:?} is not one of tcp, udp, sctp"))
    }
}

/// One `ports` entry before expansion: host and container ranges of equal length map one to
/// one; one container port with a host range publishes every host port on it.
#[derive(Debug, Clone, PartialEq)]
struct PortSpec {
    host: (u16, u16),
    container: (u16, u16),
    protocol: String,
    host_ip: Option<String>,
}

impl PortSpec {
    fn new(
        host: (u16, u16),
        container: (u16, u16),
        protocol: String,
        host_ip: Option<String>,
    ) -> Result<PortSpec, String> {
        let spec = PortSpec {
            host,
            container,
            protocol,
            host_ip,
        };
        let cn = u32::from(container.1 - container.0) + 1;
        if cn != 1 && spec.count() != cn {
            return Err(format!(
                "host range {}-{} and container range {}-{} differ in length",
                host.0, host.1, container.0, container.1
            ));
        }
        Ok(spec)
    }

    /// How many mappings [`PortSpec::expand`] makes: one per host port.
    fn count(&self) -> u32 {
        u32::from(self.host.1 - self.host.0) + 1
    }

    fn expand(&self) -> impl Iterator<Item = PortMapping> + '_ {
        let one = self.container.0 == self.container.1;
        let at = |base: u16, i: u32| {
            u16::try_from(u32::from(base) + i).expect("i is below the range's length")
        };
        (0..self.count()).map(move |i| PortMapping {
            target: if one {
                self.container.0
            } else {
                at(self.container.0, i)
            },
            published: at(self.host.0, i),
            protocol: self.protocol.clone(),
            host_ip: self.host_ip.clone(),
        })
    }
}

/// `[[ip:]host[-host]:]container[-container][/protocol]`; a bare container port (or an
/// empty host part) is published on the same host port.
pub fn parse_port(s: &str) -> Result<Vec<PortMapping>, String> {
    Ok(port_spec(s)?.expand().collect())
}

fn port_spec(s: &str) -> Result<PortSpec, String> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((a, b)) => (a, protocol(b)?),
        None => (s, "tcp".to_string()),
    };
    let (ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (ip, rest) = r
            .split_once("]:")
            .ok_or_else(|| format!("{s:?}: unterminated [ipv6] address"))?;
        (Some(ip.to_string()), rest)
    } else {
        (None, spec)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [a, h, c]) => (Some(a.to_string()), Some(*h), *c),
        (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
        _ => return Err(format!("{s:?} is not [[ip:]host:]container[/protocol]")),
    };
    let container = port_range(container)?;
    let host = match host {
        Some(h) if !h.is_empty() => port_range(h)?,
        _ => container,
    };
    let ip = ip.filter(|i| !i.is_empty());
    PortSpec::new(host, container, proto, ip)
}

fn long_port(o: &serde_json::Map<String, Value>, p: &str) -> Result<PortSpec, ValidationError> {
    let get = |k: &str| o.get(k).filter(|v| !v.is_null());
    let target = get("target").ok_or_else(|| err(p, "target is required"))?;
    let tp = format!("{p}.target");
    let container = port_range(&string(target, &tp)?).map_err(|m| err(&tp, m))?;
    let host = match get("published") {
        Some(h) => {
            let pp = format!("{p}.published");
            port_range(&string(h, &pp)?).map_err(|m| err(&pp, m))?
        }
        None => container,
    };
    let proto = match get("protocol") {
        Some(x) => {
            let pp = format!("{p}.protocol");
            protocol(&string(x, &pp)?).map_err(|m| err(&pp, m))?
        }
        None => "tcp".to_string(),
    };
    let ip = get("host_ip")
        .map(|x| string(x, &format!("{p}.host_ip")))
        .transpose()?
        .filter(|i| !i.is_empty());
    PortSpec::new(host, container, proto, ip).map_err(|m| err(p, m))
}

fn depends_on(v: &Value, p: &str) -> Result<BTreeMap<String, Condition>, ValidationError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                out.insert(string(x, &format!("{p}[{i}]"))?, Condition::ServiceStarted);
            }
        }
        Value::Object(m) => {
            for (name, x) in m {
                let np = format!("{p}.{name}");
                let cond = match x.get("condition").filter(|c| !c.is_null()) {
                    None => Condition::ServiceStarted,
                    Some(c) => {
                        let cp = format!("{np}.condition");
                        match one_of(
                            c,
                            &cp,
                            &[
                                "service_started",
                                "service_healthy",
                                "service_completed_successfully",
                            ],
                        )?
                        .as_str()
                        {
                            "service_healthy" => Condition::ServiceHealthy,
                            "service_completed_successfully" => {
                                Condition::ServiceCompletedSuccessfully
                            }
                            _ => Condition::ServiceStarted,
                        }
                    }
                };
                if !(x.is_null() || x.is_object()) {
                    return Err(err(&np, format!("expected an object, got {x}")));
                }
                out.insert(name.clone(), cond);
            }
        }
        other => return Err(err(p, format!("expected a list or a map, got {other}"))),
    }
    Ok(out)
}

/// `no`, `always`, `unless-stopped`, `on-failure[:n]` (case-insensitive, `_` or `-`); YAML's
/// `restart: no` arrives as `false`; anything else means `always`.
fn restart(v: &Value) -> RestartPolicy {
    let always = RestartPolicy::default();
    let s = match v {
        Value::Bool(false) => {
            return RestartPolicy {
                name: RestartPolicyName::No,
                max_retries: None,
            }
        }
        Value::String(s) => s.trim().to_ascii_lowercase().replace('_', "-"),
        _ => return always,
    };
    let (name, retries) = match s.split_once(':') {
        Some((n, r)) => (n.to_string(), Some(r)),
        None => (s, None),
    };
    let name = match name.as_str() {
        "no" => RestartPolicyName::No,
        "always" => RestartPolicyName::Always,
        "unless-stopped" => RestartPolicyName::UnlessStopped,
        "on-failure" => RestartPolicyName::OnFailure,
        _ => return always,
    };
    let max_retries = match (name, retries) {
        (RestartPolicyName::OnFailure, Some(r)) => match r.trim().parse::<u32>() {
            Ok(n) if n > 0 => Some(n),
            Ok(_) => None,
            Err(_) => return always,
        },
        (_, Some(_)) => return always,
        _ => None,
    };
    RestartPolicy { name, max_retries }
}

fn sysctls(v: &Value, p: &str) -> Result<BTreeMap<String, String>, ValidationError> {
    let m = string_map(v, p)?;
    for k in m.keys() {
        let ok = k.starts_with("net.")
            || k.starts_with("fs.mqueue.")
            || k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k == "kernel.sem";
        if !ok {
            return Err(err(
                &format!("{p}.{k}"),
                "only namespaced sysctls are allowed (net.*, fs.mqueue.*, kernel.shm*, kernel.msg*, kernel.sem)",
            ));
        }
    }
    Ok(m)
}

fn security_opt(v: &Value, p: &str) -> Result<Vec<String>, ValidationError> {
    let mut out = Vec::new();
    for (i, s) in string_list(v, p)?.into_iter().enumerate() {
        let norm = match s.split_once([':', '=']) {
            Some(("no-new-privileges", b @ ("true" | "false"))) => {
                format!("no-new-privileges={b}")
            }
            Some(("apparmor", "unconfined")) => "apparmor=unconfined".to_string(),
            Some(("seccomp", "unconfined")) => "seccomp=unconfined".to_string(),
            _ => {
                return Err(err(
                    &format!("{p}[{i}]"),
                    format!("{s:?} is not allowed (no-new-privileges=true|false, apparmor=unconfined, seccomp=unconfined)"),
                ))
            }
        };
        out.push(norm);
    }
    Ok(out)
}

/// `host[:container[:permissions]]`, host paths only (no CDI names).
fn devices(v: &Value, p: &str) -> Result<Vec<DeviceMapping>, ValidationError> {
    let mut out = Vec::new();
    for (i, s) in string_list(v, p)?.into_iter().enumerate() {
        let ip = format!("{p}[{i}]");
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, perms) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, c] if !c.starts_with('/') => (*h, *h, *c),
            [h, c] => (*h, *c, "rwm"),
            [h, c, m] => (*h, *c, *m),
            _ => {
                return Err(err(
                    &ip,
                    format!("{s:?} is not host[:container[:permissions]]"),
                ))
            }
        };
        if !is_device_path(source) {
            return Err(err(
                &ip,
                format!(
                    "{source:?} is not a host device path below /dev without . or .. \
                     (CDI devices are not supported)"
                ),
            ));
        }
        if !target.starts_with('/') {
            return Err(err(&ip, format!("{target:?} is not an absolute path")));
        }
        if perms.is_empty() || !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(err(&ip, format!("{perms:?} is not a subset of rwm")));
        }
        out.push(DeviceMapping {
            source: source.to_string(),
            target: target.to_string(),
            permissions: perms.to_string(),
        });
    }
    Ok(out)
}

/// A host device path: absolute, below `/dev`, no `.` or `..` components.
pub fn is_device_path(source: &str) -> bool {
    let parts: Vec<&str> = source.split('/').filter(|c| !c.is_empty()).collect();
    source.starts_with('/')
        && parts.len() >= 2
        && parts[0] == "dev"
        && !parts.iter().any(|c| *c == "." || *c == "..")
}

/// `host:ip` entries from a list (`host:ip` or `host=ip`) or a map.
fn extra_hosts(v: &Value, p: &str) -> Result<Vec<String>, ValidationError> {
    let entries: Vec<(String, String)> = match v {
        Value::Object(m) => m
            .iter()
            .map(|(h, ip)| Ok((h.clone(), string(ip, &format!("{p}.{h}"))?)))
            .collect::<Result<_, ValidationError>>()?,
        _ => string_list(v, p)?
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.split_once('=')
                    .or_else(|| s.split_once(':'))
                    .map(|(h, ip)| (h.to_string(), ip.to_string()))
                    .ok_or_else(|| err(&format!("{p}[{i}]"), format!("{s:?} is not host:ip")))
            })
            .collect::<Result<_, ValidationError>>()?,
    };
    Ok(entries
        .into_iter()
        .map(|(h, ip)| format!("{h}:{ip}"))
        .collect())
}

fn healthcheck(v: &Value, p: &str) -> Result<Healthcheck, ValidationError> {
    let o = v
        .as_object()
        .ok_or_else(|| err(p, format!("expected an object, got {v}")))?;
    let mut h = Healthcheck::default();
    for (k, x) in o {
        if x.is_null() {
            continue;
        }
        let kp = format!("{p}.{k}");
        match k.as_str() {
            "test" => {
                let test = match x {
                    Value::String(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                    _ => string_list(x, &kp)?,
                };
                match test.first().map(String::as_str) {
                    Some("NONE") => h.disable = true,
                    Some("CMD" | "CMD-SHELL") if test.len() > 1 => h.test = Some(test),
                    _ => {
                        return Err(err(
                            &kp,
                            "expected a string, [\"CMD\", …], [\"CMD-SHELL\", \"…\"] or [\"NONE\"]",
                        ))
                    }
                }
            }
            "interval" => h.interval = Some(engine_duration(x, &kp)?),
            "timeout" => h.timeout = Some(engine_duration(x, &kp)?),
            "start_period" => h.start_period = Some(engine_duration(x, &kp)?),
            "start_interval" => h.start_interval = Some(engine_duration(x, &kp)?),
            "retries" => {
                h.retries = Some(
                    u32::try_from(integer(x, &kp)?)
                        .map_err(|_| err(&kp, "must be a non-negative integer"))?,
                )
            }
            "disable" => h.disable = boolean(x, &kp)?,
            _ => {}
        }
    }
    if h.disable {
        h.test = None;
    }
    Ok(h)
}

fn ulimits(v: &Value, p: &str) -> Result<BTreeMap<String, Ulimit>, ValidationError> {
    let o = v
        .as_object()
        .ok_or_else(|| err(p, format!("expected a map, got {v}")))?;
    let mut out = BTreeMap::new();
    for (name, x) in o {
        let np = format!("{p}.{name}");
        let u = match x {
            Value::Object(l) => {
                let get = |k: &str| -> Result<i64, ValidationError> {
                    let kp = format!("{np}.{k}");
                    integer(l.get(k).ok_or_else(|| err(&kp, "required"))?, &kp)
                };
                Ulimit {
                    soft: get("soft")?,
                    hard: get("hard")?,
                }
            }
            _ => {
                let n = integer(x, &np)?;
                Ulimit { soft: n, hard: n }
            }
        };
        out.insert(name.clone(), u);
    }
    Ok(out)
}

// ---- networks and volumes -------------------------------------------------------------------

fn object<'a>(
    v: &'a Value,
    p: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, ValidationError> {
    match v {
        Value::Null => Ok(None),
        Value::Object(o) => Ok(Some(o)),
        other => Err(err(p, format!("expected an object, got {other}"))),
    }
}

/// Labels helios sets on networks and volumes itself.
fn check_reserved_labels(
    labels: &BTreeMap<String, String>,
    p: &str,
) -> Result<(), ValidationError> {
    for k in labels.keys() {
        check_label_key(k, &format!("{p}.{k}"))?;
        let reserved = matches!(
            k.as_str(),
            "io.balena.supervised"
                | "io.balena.app-uuid"
                | "io.balena.network-name"
                | "io.balena.volume-name"
        ) || k.starts_with("io.balena.private.");
        if reserved {
            return Err(err(
                &format!("{p}.{k}"),
                "this label is reserved for helios",
            ));
        }
    }
    Ok(())
}

fn network_config(v: &Value, p: &str) -> Result<NetworkConfig, ValidationError> {
    let mut c = NetworkConfig {
        driver: Some("bridge".to_string()),
        ..Default::default()
    };
    let Some(o) = object(v, p)? else {
        return Ok(c);
    };
    for (k, x) in o {
        if x.is_null() {
            continue;
        }
        let kp = format!("{p}.{k}");
        match k.as_str() {
            "driver" => c.driver = Some(string(x, &kp)?),
            "driver_opts" => c.driver_opts = string_map(x, &kp)?,
            "enable_ipv6" => c.enable_ipv6 = boolean(x, &kp)?,
            "internal" => c.internal = boolean(x, &kp)?,
            "config_only" => c.config_only = boolean(x, &kp)?,
            "labels" => {
                c.labels = normalise_labels(string_map(x, &kp)?);
                check_reserved_labels(&c.labels, &kp)?;
            }
            "ipam" => c.ipam = ipam(x, &kp)?,
            _ => {}
        }
    }
    Ok(c)
}

fn ipam(v: &Value, p: &str) -> Result<Ipam, ValidationError> {
    let mut ipam = Ipam::default();
    let Some(o) = object(v, p)? else {
        return Ok(ipam);
    };
    for (k, x) in o {
        if x.is_null() {
            continue;
        }
        let kp = format!("{p}.{k}");
        match k.as_str() {
            "driver" => ipam.driver = string(x, &kp)?,
            "options" => ipam.options = string_map(x, &kp)?,
            "config" => {
                for (i, pool) in list(x, &kp)?.iter().enumerate() {
                    let pp = format!("{kp}[{i}]");
                    let po = object(pool, &pp)?.ok_or_else(|| err(&pp, "expected an object"))?;
                    let mut pool = IpamPool::default();
                    for (pk, pv) in po {
                        if pv.is_null() {
                            continue;
                        }
                        let fp = format!("{pp}.{pk}");
                        match pk.as_str() {
                            "subnet" => pool.subnet = Some(string(pv, &fp)?),
                            "gateway" => pool.gateway = Some(string(pv, &fp)?),
                            "ip_range" => pool.ip_range = Some(string(pv, &fp)?),
                            "aux_addresses" => pool.aux_addresses = string_map(pv, &fp)?,
                            _ => {}
                        }
                    }
                    ipam.config.push(pool);
                }
            }
            _ => {}
        }
    }
    Ok(ipam)
}

fn volume_config(v: &Value, p: &str) -> Result<VolumeConfig, ValidationError> {
    let mut c = VolumeConfig {
        driver: Some("local".to_string()),
        ..Default::default()
    };
    let Some(o) = object(v, p)? else {
        return Ok(c);
    };
    for (k, x) in o {
        if x.is_null() {
            continue;
        }
        let kp = format!("{p}.{k}");
        match k.as_str() {
            "driver" => c.driver = Some(string(x, &kp)?),
            "driver_opts" => c.driver_opts = string_map(x, &kp)?,
            "labels" => {
                c.labels = normalise_labels(string_map(x, &kp)?);
                check_reserved_labels(&c.labels, &kp)?;
            }
            _ => {}
        }
    }
    Ok(c)
}

// ---- images ---------------------------------------------------------------------------------

/// Normalises an image reference (behaviours.md §8.1): `:latest` is added when there is
/// neither tag nor digest; with a digest the tag is dropped. An engine image id
/// (`sha256:<64 hex>`) is kept as is. Errors say why the reference does not parse.
pub fn normalise_image(reference: &str) -> Result<String, String> {
    let r = reference;
    if r.is_empty() {
        return Err("empty image reference".to_string());
    }
    if r.len() > 255 {
        return Err("image reference longer than 255 characters".to_string());
    }
    if let Some(hex) = r.strip_prefix("sha256:") {
        if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Ok(r.to_string());
        }
    }
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        check_digest(d).map_err(|m| format!("{r:?}: {m}"))?;
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(format!("{r:?}: invalid tag {t:?}"));
        }
    }
    check_repository(name).map_err(|m| format!("{r:?}: {m}"))?;
    Ok(match (digest, tag) {
        (Some(d), _) => format!("{name}@{d}"),
        (None, Some(t)) => format!("{name}:{t}"),
        (None, None) => format!("{name}:latest"),
    })
}

fn check_digest(d: &str) -> Result<(), String> {
    let (algo, hex) = d
        .split_once(':')
        .ok_or_else(|| format!("invalid digest {d:?}"))?;
    let algo_ok = !algo.is_empty()
        && algo.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
        });
    let hex_ok = if algo == "sha256" {
        hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    } else {
        hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
    };
    if algo_ok && hex_ok {
        Ok(())
    } else {
        Err(format!("invalid digest {d:?}"))
    }
}

fn check_repository(name: &str) -> Result<(), String> {
    let comps: Vec<&str> = name.split('/').collect();
    let first = comps[0];
    let has_domain =
        comps.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost");
    let path = if has_domain {
        check_domain(first)?;
        &comps[1..]
    } else {
        &comps[..]
    };
    for c in path {
        // [a-z0-9]+ separated by '.', '_', '__' or any run of '-'.
        let valid = !c.is_empty()
            && c.starts_with(|x: char| x.is_ascii_lowercase() || x.is_ascii_digit())
            && c.ends_with(|x: char| x.is_ascii_lowercase() || x.is_ascii_digit())
            && c.chars().all(|x| {
                x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, '.' | '_' | '-')
            })
            && !c.contains("..")
            && !c.contains("___")
            && !c.contains("._")
            && !c.contains("_.")
            && !c.contains(".-")
            && !c.contains("-.")
            && !c.contains("_-")
            && !c.contains("-_");
        if !valid {
            return Err(format!(
                "invalid repository path component {c:?} (lowercase letters, digits and separators)"
            ));
        }
    }
    Ok(())
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = if let Some(r) = d.strip_prefix('[') {
        let (h, rest) = r
            .split_once(']')
            .ok_or_else(|| format!("invalid registry {d:?}"))?;
        if h.is_empty() || !h.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("invalid registry {d:?}"));
        }
        (None, rest.strip_prefix(':'))
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ok {
            return Err(format!("invalid registry {d:?}"));
        }
    }
    if let Some(p) = port {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("invalid registry port in {d:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    const REL: &str = "rel1";

    fn app(services: Value, extra: Value) -> Value {
        let mut rel = json!({"id": 1, "services": services});
        if let Value::Object(e) = extra {
            rel.as_object_mut().unwrap().extend(e);
        }
        json!({"id": 12, "name": "demo", "releases": {REL: rel}})
    }

    fn parse(v: Value) -> Result<App, ValidationError> {
        let t: AppTarget = serde_json::from_value(v).expect("wire shape");
        app_from_target("app1", t)
    }

    fn one(composition: Value) -> Result<ServiceConfig, ValidationError> {
        one_with(
            composition,
            json!({"volumes": {"data": {}}, "networks": {"front": {}}}),
        )
    }

    fn one_with(composition: Value, extra: Value) -> Result<ServiceConfig, ValidationError> {
        let a = parse(app(
            json!({"web": {"id": 3, "image": "alpine", "composition": composition}}),
            extra,
        ))?;
        Ok(a.releases[&REL.to_string()].services[&"web".to_string()]
            .config
            .clone())
    }

    /// Asserts the composition is rejected at `composition.<field>`.
    fn rejected(composition: Value, field: &str) -> String {
        let e = one(composition).expect_err("should be rejected");
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.web.composition.{field}"),
            "{e}"
        );
        e.message
    }

    #[test]
    fn an_app_without_releases_is_an_empty_app() {
        let a = parse(json!({"id": 0, "name": "my-app"})).unwrap();
        assert_eq!(
            a,
            App {
                id: 0,
                name: Some("my-app".into()),
                ..Default::default()
            }
        );
        let a = parse(
            json!({"id": "7", "releases": null, "class": "fleet", "is_host": false,
            "parent_app": "x"}),
        )
        .unwrap();
        assert_eq!(a.id, 7);
        assert!(serde_json::from_value::<AppTarget>(json!({"id": -1})).is_err());
        assert!(serde_json::from_value::<AppTarget>(json!({"id": "x"})).is_err());
    }

    #[test]
    fn a_service_is_normalised() {
        let a = parse(app(
            json!({"web": {"id": 3, "image": "alpine", "image_id": "55",
            "labels": {"com.example": "x", "io.resin.features.resin-api": "1"},
            "environment": {"FOO": "bar"},
            "composition": {
                "command": "sleep infinity",
                "environment": {"FOO": "overridden", "N": 5, "B": true, "U": null},
                "labels": ["com.example=from-compose", "other=y"],
                "networks": {"front": {"aliases": ["www"]}},
                "volumes": ["data:/data"],
                "ports": ["9000:9000"],
                "unknown_key": {"ignored": true},
            }}}),
            json!({"networks": {"front": null}, "volumes": {"data": {}}}),
        ))
        .unwrap();
        let rel = &a.releases[&REL.to_string()];
        let web = &rel.services[&"web".to_string()];
        assert_eq!(web.id, 3);
        assert_eq!(web.image, "alpine:latest");
        assert!(web.running);
        let c = &web.config;
        assert_eq!(c.command, Some(vec!["sleep".into(), "infinity".into()]));
        assert_eq!(
            c.environment,
            BTreeMap::from([
                ("B".to_string(), "true".to_string()),
                ("FOO".to_string(), "bar".to_string()),
                ("N".to_string(), "5".to_string()),
            ])
        );
        assert_eq!(
            c.labels,
            BTreeMap::from([
                ("com.example".to_string(), "x".to_string()),
                ("io.balena.features.balena-api".to_string(), "1".to_string()),
                ("other".to_string(), "y".to_string()),
            ])
        );
        assert_eq!(c.network_names(), ["front"]);
        assert_eq!(c.networks["front"].aliases, ["www"]);
        assert_eq!(c.restart_policy, RestartPolicy::default());
        assert_eq!(
            c.ports,
            [PortMapping {
                target: 9000,
                published: 9000,
                protocol: "tcp".into(),
                host_ip: None
            }]
        );
        assert_eq!(
            a.networks.keys().collect::<Vec<_>>(),
            ["front"],
            "no default network when every service has networks"
        );
        assert_eq!(
            a.networks[&"front".to_string()].config.driver.as_deref(),
            Some("bridge")
        );
        assert_eq!(
            a.volumes[&"data".to_string()].config.driver.as_deref(),
            Some("local")
        );
    }

    #[test]
    fn a_default_network_is_added_for_services_without_networks() {
        let a = parse(app(
            json!({"a": {"id": 1, "image": "alpine"},
                   "b": {"id": 2, "image": "alpine", "composition": {"network_mode": "host"}}}),
            json!({}),
        ))
        .unwrap();
        let rel = &a.releases[&REL.to_string()];
        assert_eq!(
            rel.services[&"a".to_string()].config.network_names(),
            ["default"]
        );
        assert!(rel.services[&"b".to_string()]
            .config
            .network_names()
            .is_empty());
        assert_eq!(a.networks.keys().collect::<Vec<_>>(), ["default"]);
        assert_eq!(
            a.networks[&"default".to_string()].config,
            NetworkConfig {
                driver: Some("bridge".into()),
                ..Default::default()
            }
        );
        let only_host = parse(app(
            json!({"b": {"id": 2, "image": "alpine", "composition": {"network_mode": "host"}}}),
            json!({}),
        ))
        .unwrap();
        assert!(only_host.networks.is_empty());
    }

    #[test]
    fn at_most_one_release() {
        let e = parse(json!({"id": 1, "releases": {"a": {}, "b": {}}})).unwrap_err();
        assert_eq!(e.field, "releases");
    }

    #[test]
    fn names_are_validated() {
        let e = parse(json!({"id": 1, "releases": {"bad_rel": {}}})).unwrap_err();
        assert_eq!(e.field, "releases.bad_rel");
        let e = parse(app(
            json!({"-web": {"id": 1, "image": "alpine"}}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(e.field, format!("releases.{REL}.services.-web"));
        let e = parse(app(json!({}), json!({"networks": {"a b": {}}}))).unwrap_err();
        assert_eq!(e.field, format!("releases.{REL}.networks.a b"));
        let e = parse(app(json!({}), json!({"volumes": {"x/y": {}}}))).unwrap_err();
        assert_eq!(e.field, format!("releases.{REL}.volumes.x/y"));
        let t: AppTarget = serde_json::from_value(json!({"id": 1})).unwrap();
        assert_eq!(app_from_target("a_b", t).unwrap_err().field, "uuid");
    }

    #[test]
    fn top_level_fields_are_validated() {
        let e = parse(app(
            json!({"web": {"id": 1, "image": "Not An Image"}}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(e.field, format!("releases.{REL}.services.web.image"));
        let e = parse(app(
            json!({"web": {"id": 1, "image": "alpine", "environment": {" FOO": "x"}}}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.web.environment. FOO")
        );
        let e = parse(app(
            json!({"web": {"id": 1, "image": "alpine", "labels": {"a b": "x"}}}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(e.field, format!("releases.{REL}.services.web.labels.a b"));
        let e = parse(app(
            json!({"web": {"id": 1, "image": "alpine", "composition": "nope"}}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(e.field, format!("releases.{REL}.services.web.composition"));
        let e = parse(app(
            json!({"web": {"id": 1, "image": "alpine",
                "labels": {"io.balena.private.config": "{}"}}}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.web.labels.io.balena.private.config")
        );
    }

    #[test]
    fn running_defaults_to_true_and_the_top_level_wins() {
        let svc = |s: Value| {
            parse(app(json!({ "web": s }), json!({}))).unwrap().releases[&REL.to_string()].services
                [&"web".to_string()]
                .running
        };
        assert!(svc(json!({"id": 1, "image": "a"})));
        assert!(!svc(json!({"id": 1, "image": "a", "running": false})));
        assert!(!svc(
            json!({"id": 1, "image": "a", "composition": {"running": false}})
        ));
        assert!(svc(json!({"id": 1, "image": "a", "running": true,
            "composition": {"running": false}})));
    }

    #[test]
    fn command_and_entrypoint() {
        let c = one(json!({"command": ["echo", 1], "entrypoint": "/bin/sh -c"})).unwrap();
        assert_eq!(c.command, Some(vec!["echo".into(), "1".into()]));
        assert_eq!(c.entrypoint, Some(vec!["/bin/sh".into(), "-c".into()]));
        assert!(rejected(json!({"command": "echo 'oops"}), "command").contains("unclosed"));
        rejected(json!({"entrypoint": "a \"b"}), "entrypoint");
        rejected(json!({"command": 5}), "command");
    }

    #[test]
    fn shell_split_cases() {
        let ok = |s: &str, w: &[&str]| assert_eq!(shell_split(s).unwrap(), w, "{s}");
        ok("sleep infinity", &["sleep", "infinity"]);
        ok("  a   b  ", &["a", "b"]);
        ok("", &[]);
        ok(
            "sh -c 'echo $HOME; exit 1'",
            &["sh", "-c", "echo $HOME; exit 1"],
        );
        ok(r#"echo "a \"b\" \$c \n""#, &["echo", r#"a "b" $c \n"#]);
        ok(r"a\ b c", &["a b", "c"]);
        ok(r#"x"y"'z' "" ''"#, &["xyz", "", ""]);
        ok("a\tb\nc", &["a", "b", "c"]);
        ok("echo $PATH", &["echo", "$PATH"]);
        assert!(shell_split("'unclosed").is_err());
        assert!(shell_split("\"unclosed").is_err());
        assert!(shell_split("trailing\\").is_err());
    }

    #[test]
    fn volumes_short_and_long_form() {
        let c = one(json!({"volumes": [
            "data:/data",
            "data:/ro:ro",
            "/sys:/sys",
            "/run/dbus:/host/run/dbus:ro,rshared",
            "/anon",
            {"type": "volume", "source": "data", "target": "/v", "read_only": true,
             "volume": {"nocopy": true, "subpath": "sub/dir"}},
            {"type": "bind", "source": "/lib/modules/", "target": "/lib/modules",
             "bind": {"propagation": "rslave"}},
            {"type": "tmpfs", "target": "/cache", "tmpfs": {"size": "64m", "mode": 1777}},
        ]}))
        .unwrap();
        let m = |kind: &str, source: Option<&str>, target: &str| Mount {
            kind: kind.into(),
            source: source.map(Into::into),
            target: target.into(),
            ..Default::default()
        };
        assert_eq!(
            c.volumes,
            vec![
                m("volume", Some("data"), "/data"),
                Mount {
                    read_only: true,
                    ..m("volume", Some("data"), "/ro")
                },
                m("bind", Some("/sys"), "/sys"),
                Mount {
                    read_only: true,
                    propagation: Some("rshared".into()),
                    ..m("bind", Some("/run/dbus"), "/host/run/dbus")
                },
                m("volume", None, "/anon"),
                Mount {
                    read_only: true,
                    nocopy: true,
                    subpath: Some("sub/dir".into()),
                    ..m("volume", Some("data"), "/v")
                },
                Mount {
                    propagation: Some("rslave".into()),
                    ..m("bind", Some("/lib/modules"), "/lib/modules")
                },
                Mount {
                    size: Some(64 << 20),
                    mode: Some(0o1777),
                    ..m("tmpfs", None, "/cache")
                },
            ]
        );
        assert_eq!(c.volume_names(), ["data"]);
    }

    #[test]
    fn bind_sources_must_be_allow_listed() {
        for ok in [
            "/var/run/docker.sock",
            "/run/dbus",
            "/sys/class/gpio",
            "/proc",
            "/lib/firmware/",
            "/var/log/journal",
            "/run/log/journal",
            "/etc/machine-id",
        ] {
            assert!(bind_source(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/etc",
            "/sysfoo",
            "/sys/../etc",
            "./data",
            "~/x",
            "/",
            "/run/dbus/./x",
        ] {
            assert!(bind_source(bad).is_err(), "{bad}");
        }
        // Links below /proc lead anywhere on the host: only /proc itself is allowed.
        for bad in [
            "/proc/1/root",
            "/proc/self/root",
            "/proc//1/root/",
            "/proc/thread-self/root",
            "/proc/4242/cwd",
            "/proc/self/fd/3",
            "/proc/1/map_files/400000-452000",
            "/proc/1/task/1/root",
            "/proc/1/ns/net",
            "/proc/net",
            "/proc/sys/kernel",
        ] {
            let e = bind_source(bad).expect_err(bad);
            assert!(e.contains("below /proc"), "{bad}: {e}");
        }
        assert!(
            rejected(json!({"volumes": ["/proc/1/root:/host"]}), "volumes[0]")
                .contains("only /proc itself")
        );
        rejected(
            json!({"volumes": [{"type": "bind", "source": "/proc/self/root", "target": "/h"}]}),
            "volumes[0].source",
        );
        assert!(rejected(json!({"volumes": ["/etc:/etc"]}), "volumes[0]").contains("not allowed"));
        rejected(
            json!({"volumes": ["data:/d", "/sys/../root:/r"]}),
            "volumes[1]",
        );
        rejected(
            json!({"volumes": [{"type": "bind", "source": "/home", "target": "/h"}]}),
            "volumes[0].source",
        );
        rejected(json!({"volumes": ["./rel:/r"]}), "volumes[0]");
    }

    #[test]
    fn other_volume_rules() {
        assert!(rejected(json!({"volumes": ["undeclared:/x"]}), "volumes[0]").contains("declared"));
        rejected(
            json!({"volumes": [{"type": "volume", "source": "nope", "target": "/x"}]}),
            "volumes[0]",
        );
        rejected(json!({"volumes": ["data:relative"]}), "volumes[0]");
        rejected(json!({"volumes": ["data:/x:bogus"]}), "volumes[0]");
        rejected(
            json!({"volumes": [{"type": "npipe", "target": "/x"}]}),
            "volumes[0].type",
        );
        rejected(
            json!({"volumes": [{"type": "tmpfs", "target": "/x", "tmpfs": {"mode": 999}}]}),
            "volumes[0].tmpfs.mode",
        );
        rejected(
            json!({"volumes": [{"type": "volume", "source": "data", "target": "/x",
                "volume": {"subpath": "../up"}}]}),
            "volumes[0].volume.subpath",
        );
        rejected(json!({"volumes": "data:/x"}), "volumes");
        rejected(json!({"tmpfs": ["relative"]}), "tmpfs[0]");
        assert_eq!(
            one(json!({"tmpfs": "/run:size=1m"})).unwrap().tmpfs,
            ["/run:size=1m"]
        );
    }

    #[test]
    fn security_opt_is_allow_listed_and_normalised() {
        let c = one(json!({"security_opt": [
            "no-new-privileges:true", "no-new-privileges=false",
            "apparmor:unconfined", "seccomp=unconfined"]}))
        .unwrap();
        assert_eq!(
            c.security_opt,
            [
                "no-new-privileges=true",
                "no-new-privileges=false",
                "apparmor=unconfined",
                "seccomp=unconfined"
            ]
        );
        rejected(
            json!({"security_opt": ["seccomp=unconfined", "label=disable"]}),
            "security_opt[1]",
        );
        rejected(
            json!({"security_opt": ["apparmor=my-profile"]}),
            "security_opt[0]",
        );
        rejected(
            json!({"security_opt": ["no-new-privileges"]}),
            "security_opt[0]",
        );
    }

    #[test]
    fn sysctls_are_namespaced_strings() {
        let c = one(
            json!({"sysctls": {"net.core.somaxconn": 1024, "kernel.sem": "1 2 3",
            "kernel.shmmax": 5, "fs.mqueue.msg_max": "10", "kernel.msgmax": 1}}),
        )
        .unwrap();
        assert_eq!(c.sysctls["net.core.somaxconn"], "1024");
        assert_eq!(c.sysctls.len(), 5);
        let c = one(json!({"sysctls": ["net.ipv4.ip_forward=1"]})).unwrap();
        assert_eq!(c.sysctls["net.ipv4.ip_forward"], "1");
        rejected(
            json!({"sysctls": {"vm.swappiness": 1}}),
            "sysctls.vm.swappiness",
        );
        rejected(
            json!({"sysctls": ["kernel.domainname=x"]}),
            "sysctls.kernel.domainname",
        );
        rejected(
            json!({"sysctls": {"kernel.semx": 1}}),
            "sysctls.kernel.semx",
        );
    }

    #[test]
    fn network_mode_and_networks() {
        assert!(rejected(
            json!({"network_mode": "host", "networks": ["front"]}),
            "network_mode"
        )
        .contains("mutually exclusive"));
        rejected(json!({"network_mode": "container:abc"}), "network_mode");
        rejected(json!({"network_mode": "front"}), "network_mode");
        assert!(rejected(json!({"networks": ["back"]}), "networks.back").contains("declared"));
        let c = one(json!({"networks": ["default", "front"]})).unwrap();
        assert_eq!(c.network_names(), ["default", "front"]);
        let c = one(json!({"networks": {"front": {"priority": 1}, "default": null}})).unwrap();
        assert_eq!(c.network_names(), ["front", "default"]);
        for mode in ["host", "none", "bridge"] {
            let c = one(json!({ "network_mode": mode })).unwrap();
            assert_eq!(c.network_mode.as_deref(), Some(mode));
            assert!(c.networks.is_empty());
        }
    }

    #[test]
    fn service_references_and_cycles() {
        let services = |a: Value, b: Value| {
            parse(app(
                json!({"a": {"id": 1, "image": "x", "composition": a},
                       "b": {"id": 2, "image": "x", "composition": b}}),
                json!({}),
            ))
        };
        let ok = services(
            json!({"depends_on": {"b": {"condition": "service_healthy"}}}),
            json!({"network_mode": "service:c", "depends_on": []}),
        );
        let e = ok.unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.b.composition.network_mode")
        );
        let e = services(json!({"depends_on": ["nope"]}), json!({})).unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.a.composition.depends_on.nope")
        );
        let e = services(json!({"depends_on": ["a"]}), json!({})).unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.a.composition.depends_on.a")
        );
        let e = services(
            json!({"depends_on": ["b"]}),
            json!({"depends_on": {"a": null}}),
        )
        .unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.a.composition.depends_on")
        );
        assert_eq!(e.message, "dependency cycle: a -> b -> a");
        let e = services(
            json!({"network_mode": "service:b"}),
            json!({"depends_on": ["a"]}),
        )
        .unwrap_err();
        assert_eq!(e.message, "dependency cycle: a -> b -> a");
        let e = services(
            json!({"depends_on": {"b": {"condition": "whenever"}}}),
            json!({}),
        )
        .unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.a.composition.depends_on.b.condition")
        );
        let a = services(
            json!({"depends_on": {"b": {"condition": "service_completed_successfully"}}}),
            json!({"network_mode": "service:a"}),
        );
        assert!(a.is_err(), "b joins a's namespace, a waits for b: a cycle");
        let a = services(
            json!({"depends_on": {"b": {"condition": "service_completed_successfully"}}}),
            json!({}),
        )
        .unwrap();
        assert_eq!(
            a.releases[&REL.to_string()].services[&"a".to_string()]
                .config
                .dependencies(),
            BTreeMap::from([("b".to_string(), Condition::ServiceCompletedSuccessfully)])
        );
    }

    #[test]
    fn scalar_rules() {
        assert_eq!(
            one(json!({"cpus": 1.5})).unwrap().nano_cpus,
            Some(1_500_000_000)
        );
        assert_eq!(
            one(json!({"cpus": "0.25"})).unwrap().nano_cpus,
            Some(250_000_000)
        );
        rejected(json!({"cpus": -1}), "cpus");
        rejected(json!({"cpus": "inf"}), "cpus");
        rejected(json!({"cpus": "NaN"}), "cpus");
        rejected(
            json!({"devices": ["/dev/ttyUSB0", "nvidia.com/gpu=all"]}),
            "devices[1]",
        );
        rejected(json!({"devices": ["/dev/x:/dev/y:rwx"]}), "devices[0]");
        let c =
            one(json!({"devices": ["/dev/a", "/dev/b:/dev/c", "/dev/d:r", "/dev/e:/dev/f:rw"]}))
                .unwrap();
        let d = |s: &str, t: &str, p: &str| DeviceMapping {
            source: s.into(),
            target: t.into(),
            permissions: p.into(),
        };
        assert_eq!(
            c.devices,
            [
                d("/dev/a", "/dev/a", "rwm"),
                d("/dev/b", "/dev/c", "rwm"),
                d("/dev/d", "/dev/d", "r"),
                d("/dev/e", "/dev/f", "rw")
            ]
        );
        rejected(json!({"privileged": "yes"}), "privileged");
        rejected(json!({"oom_score_adj": 2000}), "oom_score_adj");
        rejected(json!({"cgroup": "shared"}), "cgroup");
        rejected(json!({"mem_limit": "lots"}), "mem_limit");
        rejected(json!({"stop_grace_period": "soon"}), "stop_grace_period");
        rejected(
            json!({"healthcheck": {"test": ["echo"]}}),
            "healthcheck.test",
        );
        rejected(
            json!({"ulimits": {"nofile": {"soft": 1}}}),
            "ulimits.nofile.hard",
        );
        rejected(json!({"extra_hosts": ["nohost"]}), "extra_hosts[0]");
        rejected(json!({"cpu_shares": 1.5}), "cpu_shares");
        rejected(json!({"environment": {"A=B": "x"}}), "environment.A=B");
    }

    /// Values the engine takes in narrower integers are refused when they do not fit, instead
    /// of wrapping on the way (`stop_grace_period` went `as i32` into the stop request).
    #[test]
    fn numbers_the_engine_takes_narrower_must_fit() {
        let secs = |c: ServiceConfig| c.stop_timeout_secs();
        assert_eq!(
            secs(one(json!({"stop_grace_period": "596523h14m7s"})).unwrap()),
            Some(2_147_483_647)
        );
        assert_eq!(
            secs(one(json!({"stop_grace_period": 2_147_483_647u64})).unwrap()),
            Some(2_147_483_647)
        );
        for big in [
            json!("596523h14m8s"),
            json!("1193046h28m21s"),
            json!(4_294_967_301u64),
            json!(1e300),
        ] {
            let m = rejected(json!({ "stop_grace_period": big }), "stop_grace_period");
            assert!(
                m.contains("2147483647") || m.contains("seconds"),
                "{big}: {m}"
            );
        }
        assert!(one(json!({"healthcheck": {"interval": "2562047h"}})).is_ok());
        rejected(
            json!({"healthcheck": {"interval": "2562048h"}}),
            "healthcheck.interval",
        );
        rejected(
            json!({"healthcheck": {"start_period": 1e12}}),
            "healthcheck.start_period",
        );
    }

    #[test]
    fn the_rest_of_the_composition() {
        let c = one(json!({
            "restart": "on-failure:3", "privileged": true, "init": false, "tty": false,
            "read_only": true, "working_dir": "/app", "user": 1000, "hostname": "h",
            "domainname": "d", "stop_signal": "SIGINT", "stop_grace_period": "1m30s",
            "dns": "8.8.8.8", "dns_search": ["example.com"], "dns_opt": ["use-vc"],
            "extra_hosts": {"db": "10.0.0.2"}, "mem_limit": "1g", "mem_reservation": 1024,
            "shm_size": "64mb", "cpu_shares": "512", "cpuset": "0-1", "pids_limit": 100,
            "oom_score_adj": -10, "group_add": ["audio", 44], "cgroup": "host",
            "ulimits": {"nofile": {"soft": 1024, "hard": 2048}, "nproc": 65535},
            "runtime": "runc", "userns_mode": "host", "annotations": ["a=b"],
            "cap_add": ["NET_ADMIN"], "cap_drop": "ALL", "uts": "host", "ipc": "host",
            "healthcheck": {"test": "curl -f localhost", "interval": "30s", "timeout": 10,
                "start_period": "5s", "retries": 3},
        }))
        .unwrap();
        assert_eq!(
            c.restart_policy,
            RestartPolicy {
                name: RestartPolicyName::OnFailure,
                max_retries: Some(3)
            }
        );
        assert_eq!(c.user.as_deref(), Some("1000"));
        assert_eq!(c.stop_grace_period, Some(Duration::from_secs(90)));
        assert_eq!(c.dns, ["8.8.8.8"]);
        assert_eq!(c.extra_hosts, ["db:10.0.0.2"]);
        assert_eq!(c.mem_limit, Some(1 << 30));
        assert_eq!(c.shm_size, Some(64 << 20));
        assert_eq!(c.cpu_shares, Some(512));
        assert_eq!(c.group_add, ["audio", "44"]);
        assert_eq!(
            c.ulimits["nproc"],
            Ulimit {
                soft: 65535,
                hard: 65535
            }
        );
        assert_eq!(c.cap_drop, ["ALL"]);
        assert_eq!(
            c.healthcheck,
            Some(Healthcheck {
                test: Some(vec!["CMD-SHELL".into(), "curl -f localhost".into()]),
                interval: Some(Duration::from_secs(30)),
                timeout: Some(Duration::from_secs(10)),
                start_period: Some(Duration::from_secs(5)),
                retries: Some(3),
                ..Default::default()
            })
        );
        let c = one(json!({"healthcheck": {"disable": true, "test": ["CMD", "x"]}})).unwrap();
        assert_eq!(
            c.healthcheck.unwrap(),
            Healthcheck {
                disable: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn restart_policies() {
        let r = |v: Value| restart(&v);
        let p = |name, max_retries| RestartPolicy { name, max_retries };
        assert_eq!(r(json!("no")), p(RestartPolicyName::No, None));
        assert_eq!(r(json!(false)), p(RestartPolicyName::No, None));
        assert_eq!(
            r(json!(" Unless-Stopped ")),
            p(RestartPolicyName::UnlessStopped, None)
        );
        assert_eq!(
            r(json!("on_failure")),
            p(RestartPolicyName::OnFailure, None)
        );
        assert_eq!(
            r(json!("on-failure:5")),
            p(RestartPolicyName::OnFailure, Some(5))
        );
        assert_eq!(r(json!("sometimes")), p(RestartPolicyName::Always, None));
        assert_eq!(r(json!("always:3")), p(RestartPolicyName::Always, None));
    }

    #[test]
    fn port_ranges_expand() {
        let pm = |t, p, proto: &str, ip: Option<&str>| PortMapping {
            target: t,
            published: p,
            protocol: proto.into(),
            host_ip: ip.map(Into::into),
        };
        assert_eq!(
            parse_port("8080-8081:8080").unwrap(),
            [pm(8080, 8080, "tcp", None), pm(8080, 8081, "tcp", None)]
        );
        assert_eq!(
            parse_port("9000-9001:80-81/udp").unwrap(),
            [pm(80, 9000, "udp", None), pm(81, 9001, "udp", None)]
        );
        assert_eq!(
            parse_port("48484").unwrap(),
            [pm(48484, 48484, "tcp", None)]
        );
        assert_eq!(
            parse_port("5000-5001").unwrap(),
            [pm(5000, 5000, "tcp", None), pm(5001, 5001, "tcp", None)]
        );
        assert_eq!(
            parse_port("127.0.0.1:8000:80").unwrap(),
            [pm(80, 8000, "tcp", Some("127.0.0.1"))]
        );
        assert_eq!(
            parse_port("127.0.0.1::80").unwrap(),
            [pm(80, 80, "tcp", Some("127.0.0.1"))]
        );
        assert_eq!(
            parse_port("[::1]:8000:80/sctp").unwrap(),
            [pm(80, 8000, "sctp", Some("::1"))]
        );
        for bad in [
            "",
            "0",
            "70000",
            "80/icmp",
            "1:2:3:4",
            "9000-9002:80-81",
            "81-80",
            "a:b",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        let c = one(json!({"ports": [80, "8080-8081:8080",
            {"target": 53, "published": "1053-1054", "protocol": "udp", "host_ip": "0.0.0.0"}]}))
        .unwrap();
        assert_eq!(
            c.ports,
            [
                pm(80, 80, "tcp", None),
                pm(8080, 8080, "tcp", None),
                pm(8080, 8081, "tcp", None),
                pm(53, 1053, "udp", Some("0.0.0.0")),
                pm(53, 1054, "udp", Some("0.0.0.0")),
            ]
        );
        rejected(json!({"ports": ["80", "x"]}), "ports[1]");
        rejected(json!({"ports": [{"published": 80}]}), "ports[0]");
        rejected(
            json!({"ports": [{"target": 80, "protocol": "icmp"}]}),
            "ports[0].protocol",
        );
    }

    /// One full range is fine (coturn-style releases publish big ranges); past
    /// [`MAX_PORT_MAPPINGS`] in total the target is refused, naming the service and field,
    /// before anything is expanded.
    #[test]
    fn a_target_publishes_at_most_one_full_range_of_ports() {
        let c = one(json!({"ports": ["1-65535:1-65535"]})).unwrap();
        assert_eq!(c.ports.len(), 65_535);
        assert_eq!(c.ports[65_534].published, 65_535);
        assert_eq!(c.ports[65_534].target, 65_535);
        let c = one(json!({"ports": ["10000-20000:10000-20000/udp", "3478:3478"]})).unwrap();
        assert_eq!(c.ports.len(), 10_002);

        let e = parse(app(
            json!({"web": {"id": 1, "image": "a", "composition": {
                "ports": ["1-65535:1-65535", "1-65535:1-65535/udp", "1-65535:1"]}}}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.web.composition.ports[1]"),
            "{e}"
        );
        assert!(e.message.contains("65535"), "{e}");
        // Across services of the app too, and long-form entries count the same.
        let e = parse(app(
            json!({
                "a": {"id": 1, "image": "a", "composition": {"ports": ["1000-40000:1000"]}},
                "b": {"id": 2, "image": "a", "composition": {"ports": [
                    {"target": 1, "published": "1-30000"}]}}}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.services.b.composition.ports[0]"),
            "{e}"
        );
        // Thousands of full ranges in one body are counted, never allocated.
        let many = vec![json!("1-65535:1-65535"); 5_000];
        let started = std::time::Instant::now();
        rejected(json!({ "ports": many }), "ports[1]");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn image_normalisation() {
        let ok = |i: &str, o: &str| assert_eq!(normalise_image(i).as_deref(), Ok(o), "{i}");
        let d = format!("sha256:{}", "a".repeat(64));
        ok("alpine", "alpine:latest");
        ok("alpine:3.19", "alpine:3.19");
        ok("library/alpine", "library/alpine:latest");
        ok("localhost:5000/x", "localhost:5000/x:latest");
        ok("localhost/x:1", "localhost/x:1");
        ok(
            "127.0.0.1:34837/helios-test/busybox:1",
            "127.0.0.1:34837/helios-test/busybox:1",
        );
        ok(
            "registry2.balena-cloud.com/v2/0f3a",
            "registry2.balena-cloud.com/v2/0f3a:latest",
        );
        ok(&format!("reg.io/a/b@{d}"), &format!("reg.io/a/b@{d}"));
        ok(&format!("reg.io/a/b:tag@{d}"), &format!("reg.io/a/b@{d}"));
        ok(
            &format!("reg.io:443/a:tag@{d}"),
            &format!("reg.io:443/a@{d}"),
        );
        ok(&d, &d);
        ok("a__b/c-d--e.f_g:T_1.0-x", "a__b/c-d--e.f_g:T_1.0-x");
        ok("[::1]:5000/x", "[::1]:5000/x:latest");
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "alpine:bad tag",
            "a//b",
            "/a",
            "a/",
            "a@sha256:abc",
            "a:-x",
            "-a",
            "a..b",
            "reg.io:port/x",
            &"a".repeat(256),
        ] {
            assert!(normalise_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_and_volumes_of_the_release() {
        let a = parse(app(
            json!({}),
            json!({
                "networks": {"front": {"driver": "bridge", "driver_opts": {"mtu": 1400},
                    "enable_ipv6": true, "internal": true, "config_only": false,
                    "labels": ["io.resin.x=1"],
                    "ipam": {"config": [{"subnet": "10.1.0.0/16", "gateway": "10.1.0.1",
                        "ip_range": "10.1.1.0/24", "aux_addresses": {"h": "10.1.0.5"}}],
                        "options": {"o": "v"}}}},
                "volumes": {"data": {"driver_opts": {"type": "tmpfs"}, "labels": {"l": "v"}},
                    "other": null}
            }),
        ))
        .unwrap();
        let front = &a.networks[&"front".to_string()].config;
        assert_eq!(
            *front,
            NetworkConfig {
                driver: Some("bridge".into()),
                driver_opts: BTreeMap::from([("mtu".to_string(), "1400".to_string())]),
                ipam: Ipam {
                    driver: "default".into(),
                    config: vec![IpamPool {
                        subnet: Some("10.1.0.0/16".into()),
                        gateway: Some("10.1.0.1".into()),
                        ip_range: Some("10.1.1.0/24".into()),
                        aux_addresses: BTreeMap::from([("h".to_string(), "10.1.0.5".to_string())]),
                    }],
                    options: BTreeMap::from([("o".to_string(), "v".to_string())]),
                },
                enable_ipv6: true,
                internal: true,
                labels: BTreeMap::from([("io.balena.x".to_string(), "1".to_string())]),
                config_only: false,
            }
        );
        assert_eq!(a.volumes.len(), 2);
        assert_eq!(
            a.volumes[&"other".to_string()].config,
            VolumeConfig {
                driver: Some("local".into()),
                ..Default::default()
            }
        );
        let e = parse(app(
            json!({}),
            json!({"networks": {"n": {"ipam": {"config": "x"}}}}),
        ))
        .unwrap_err();
        assert_eq!(e.field, format!("releases.{REL}.networks.n.ipam.config"));
        let e = parse(app(
            json!({}),
            json!({"volumes": {"v": {"labels": {"io.balena.private.x": "1"}}}}),
        ))
        .unwrap_err();
        assert_eq!(
            e.field,
            format!("releases.{REL}.volumes.v.labels.io.balena.private.x")
        );
        let e = parse(app(json!({}), json!({"volumes": {"v": 5}}))).unwrap_err();
        assert_eq!(e.field, format!("releases.{REL}.volumes.v"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("100b"), Ok(100));
        assert_eq!(parse_bytes("2k"), Ok(2048));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1.5gb"), Ok(3 << 29));
        assert!(parse_bytes("1x").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn devices_are_below_dev() {
        for bad in [
            "/etc/shadow",
            "/dev",
            "/dev/../etc/shadow",
            "/dev/./sda",
            "//etc/x:/dev/x",
            "dev/sda",
        ] {
            rejected(json!({ "devices": [bad] }), "devices[0]");
        }
        assert!(one(json!({"devices": ["/dev/serial/by-id/usb-1:/dev/ttyUSB0"]})).is_ok());
    }

    #[test]
    fn volumes_that_bind_host_paths_follow_the_bind_allow_list() {
        let vol = |opts: Value| {
            app(
                json!({}),
                json!({ "volumes": { "v": { "driver_opts": opts } } }),
            )
        };
        for bad in [
            json!({"type": "none", "o": "bind", "device": "/etc"}),
            json!({"type": "none", "o": "ro,rbind", "device": "/sys/../etc"}),
            json!({"type": "none", "o": "bind", "device": "/proc/1/root"}),
            json!({"o": "bind"}),
        ] {
            let e = parse(vol(bad.clone())).expect_err(&bad.to_string());
            assert_eq!(
                e.field,
                format!("releases.{REL}.volumes.v.driver_opts.device")
            );
        }
        for ok in [
            json!({"type": "none", "o": "bind", "device": "/lib/firmware"}),
            json!({"type": "tmpfs", "device": "tmpfs", "o": "size=10m"}),
        ] {
            assert!(parse(vol(ok.clone())).is_ok(), "{ok}");
        }
        // balena's own apps (class `app`, such as the supervisor app) may bind other paths.
        let mut system = vol(json!({"type": "none", "o": "bind", "device": "/tmp"}));
        system["class"] = json!("app");
        assert!(parse(system).is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever path a target names, an accepted bind source is normalised and stays
        /// below an allow-listed path: no `..`, `.`, empty or relative trick gets out, and
        /// nothing below `/proc` (`/proc/1/root`, `/proc/self/cwd`, ...) is accepted.
        #[test]
        fn no_bind_source_escapes_the_allow_list(
            parts in proptest::collection::vec(
                "(sys|proc|etc|dev|run|dbus|lib|modules|\\.\\.|\\.|root|var|log|journal|machine-id|docker.sock|1|4242|self|thread-self|cwd|fd|map_files|)",
                0..6,
            ),
            lead in "(/|//|\\.|~|)",
            trail in "(/|)",
        ) {
            let src = format!("{lead}{}{trail}", parts.join("/"));
            if let Ok(norm) = bind_source(&src) {
                proptest::prop_assert!(!norm.split('/').any(|c| c == ".." || c == "."), "{src} → {norm}");
                proptest::prop_assert!(!norm.contains("//") && !norm.ends_with('/'), "{src} → {norm}");
                proptest::prop_assert!(
                    BIND_ALLOW_LIST.iter().any(|a| norm == *a || norm.starts_with(&format!("{a}/"))),
                    "{src} → {norm}"
                );
                proptest::prop_assert!(!norm.starts_with("/proc/"), "{src} → {norm}");
            }
            let dev = format!("/dev{lead}{}{trail}", parts.join("/"));
            if is_device_path(&dev) {
                proptest::prop_assert!(!dev.split('/').any(|c| c == ".." || c == "."), "{dev}");
            }
        }
    }
}
