//! A service of a release: its top-level fields, its compose definition key by key, and the
//! references between the services of the release.
use std::collections::BTreeMap;

use mahler::state::Map;
use serde_json::Value;

use super::host_access::devices;
use super::image::normalise_image;
use super::mounts::{tmpfs, volumes};
use super::ports::{ports, PortBudget};
use super::scalars::{
    boolean, bytes, command, cpus, engine_duration, environment, integer, one_of,
    stop_grace_period, string, string_list, string_map,
};
use super::wire::ServiceTarget;
use super::{err, Declared, ValidationError};
use crate::model::compose::{
    Condition, Healthcheck, NetworkAttachment, RestartPolicy, RestartPolicyName, ServiceConfig,
    Ulimit,
};
use crate::model::device::Service;

pub(super) fn service_from_target(
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

pub(super) fn check_label_key(k: &str, field: &str) -> Result<(), ValidationError> {
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
pub(super) fn normalise_labels(labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
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
pub(super) fn check_dependencies(
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

#[cfg(test)]
mod tests;
