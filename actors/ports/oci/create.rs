//! Service containers, model → engine: the create body, environment, mounts, ports and networks.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, DeviceMapping as EngineDevice, EndpointIpamConfig, EndpointSettings,
    HealthConfig, HostConfig, HostConfigCgroupnsModeEnum, Mount as EngineMount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountTmpfsOptions, MountType, MountVolumeOptions,
    NetworkingConfig, PortBinding, ResourcesUlimits, RestartPolicy as EngineRestartPolicy,
    RestartPolicyNameEnum,
};

use super::labels::{
    update_lock_dir, APP_ID_LABEL, APP_NAME_LABEL, APP_UUID_LABEL, CONFIG_LABEL, DEPENDS_ON_LABEL,
    LOCK_TARGETS, SERVICE_ID_LABEL, SERVICE_NAME_LABEL, SUPERVISED_LABEL,
};
use crate::model::compose::{Mount, RestartPolicy, RestartPolicyName, ServiceConfig};
use crate::model::device::{container_name, scoped_name};
use crate::model::host::OsVersion;

/// Everything about a service container that is not its compose configuration.
pub struct ServiceContext<'a> {
    pub app_uuid: &'a str,
    pub app_id: u32,
    pub app_name: Option<&'a str>,
    pub service_name: &'a str,
    pub service_id: u32,
    pub release: &'a str,
    pub device_uuid: &'a str,
    pub device_name: Option<&'a str>,
    pub host_os: Option<&'a OsVersion>,
    /// The runtime dir as the host and the engine see it (bind sources).
    pub host_runtime_dir: &'a Path,
    /// The image reference as given (the container's `Config.Image`).
    pub image: &'a str,
    /// Variables set after the user's (feature variables, e.g. a supervisor API key); they
    /// win over the user's and are not part of the configuration.
    pub extra_env: &'a BTreeMap<String, String>,
}

/// The variables every container gets (spec §6.3 ∪ behaviours.md §4.3), before the user's.
pub fn injected_environment(ctx: &ServiceContext) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut both = |name: &str, value: &str| {
        env.insert(format!("BALENA_{name}"), value.to_string());
        env.insert(format!("RESIN_{name}"), value.to_string());
    };
    both("APP_UUID", ctx.app_uuid);
    both("APP_ID", &ctx.app_id.to_string());
    if let Some(n) = ctx.app_name {
        both("APP_NAME", n);
    }
    both("SERVICE_NAME", ctx.service_name);
    both("DEVICE_UUID", ctx.device_uuid);
    if let Some(os) = ctx.host_os {
        both("HOST_OS_VERSION", &format!("{} {}", os.name, os.version));
        if let Some(b) = &os.build {
            both("HOST_OS_BUILD", b);
        }
    }
    both("APP_LOCK_PATH", "/tmp/balena/updates.lock");
    if let Some(n) = ctx.device_name {
        both("DEVICE_NAME_AT_INIT", n);
    }
    env.insert(
        "BALENA_SERVICE_HANDOVER_COMPLETE_PATH".into(),
        "/tmp/balena/handover-complete".into(),
    );
    env.insert(
        "RESIN_SERVICE_KILL_ME_PATH".into(),
        "/tmp/balena/handover-complete".into(),
    );
    env.insert("BALENA".into(), "1".into());
    env.insert("RESIN".into(), "1".into());
    env.insert("USER".into(), "root".into());
    env
}

/// The container's whole environment: injected, then the user's, then `extra_env`.
pub fn container_environment(
    ctx: &ServiceContext,
    cfg: &ServiceConfig,
) -> BTreeMap<String, String> {
    let mut env = injected_environment(ctx);
    env.extend(cfg.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(ctx.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The create body (named `container_name(service, release)` by the caller) plus the networks
/// to connect after creation, in priority order: (engine network name, EndpointSettings with
/// aliases = user aliases + service name).
pub fn container_create_body(
    ctx: &ServiceContext,
    cfg: &ServiceConfig,
) -> (ContainerCreateBody, Vec<(String, EndpointSettings)>) {
    let mut labels: HashMap<String, String> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(SUPERVISED_LABEL.into(), String::new());
    labels.insert(APP_UUID_LABEL.into(), ctx.app_uuid.into());
    labels.insert(APP_ID_LABEL.into(), ctx.app_id.to_string());
    if let Some(n) = ctx.app_name {
        labels.insert(APP_NAME_LABEL.into(), n.into());
    }
    labels.insert(SERVICE_NAME_LABEL.into(), ctx.service_name.into());
    labels.insert(SERVICE_ID_LABEL.into(), ctx.service_id.to_string());
    labels.insert(
        CONFIG_LABEL.into(),
        serde_json::to_string(cfg).expect("a ServiceConfig serialises to JSON"),
    );
    labels.insert(
        DEPENDS_ON_LABEL.into(),
        serde_json::to_string(&cfg.dependencies()).expect("a map serialises to JSON"),
    );

    let env = container_environment(ctx, cfg)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();

    // Mounts: the user's (minus the lock targets), then the lock dir at both lock targets.
    let lock_dir = update_lock_dir(ctx.host_runtime_dir, ctx.app_uuid);
    let mut mounts: Vec<EngineMount> = cfg
        .volumes
        .iter()
        .filter(|m| !LOCK_TARGETS.contains(&m.target.trim_end_matches('/')))
        .map(|m| engine_mount(ctx.app_uuid, m))
        .collect();
    for t in LOCK_TARGETS {
        mounts.push(EngineMount {
            target: Some(t.into()),
            source: Some(lock_dir.display().to_string()),
            typ: Some(MountType::BIND),
            bind_options: Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::PRIVATE),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let mut exposed: BTreeSet<String> = BTreeSet::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &cfg.ports {
        let key = format!("{}/{}", p.target, p.protocol);
        exposed.insert(key.clone());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.published.to_string()),
            });
    }

    let (network_mode, networking_config, connect) = networking(ctx, cfg);

    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let some_map = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    };
    let tmpfs: HashMap<String, String> = cfg
        .tmpfs
        .iter()
        .map(|e| match e.split_once(':') {
            Some((p, o)) => (p.to_string(), o.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect();

    let host_config = HostConfig {
        mounts: Some(mounts),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        restart_policy: Some(engine_restart(&cfg.restart_policy)),
        network_mode: Some(network_mode),
        privileged: cfg.privileged,
        readonly_rootfs: cfg.read_only,
        init: cfg.init,
        cap_add: some_vec(&cfg.cap_add),
        cap_drop: some_vec(&cfg.cap_drop),
        devices: (!cfg.devices.is_empty()).then(|| {
            cfg.devices
                .iter()
                .map(|d| EngineDevice {
                    path_on_host: Some(d.source.clone()),
                    path_in_container: Some(d.target.clone()),
                    cgroup_permissions: Some(d.permissions.clone()),
                })
                .collect()
        }),
        device_cgroup_rules: some_vec(&cfg.device_cgroup_rules),
        security_opt: some_vec(&cfg.security_opt),
        sysctls: some_map(&cfg.sysctls),
        dns: some_vec(&cfg.dns),
        dns_search: some_vec(&cfg.dns_search),
        dns_options: some_vec(&cfg.dns_opt),
        extra_hosts: some_vec(&cfg.extra_hosts),
        group_add: some_vec(&cfg.group_add),
        memory: cfg.mem_limit,
        memory_reservation: cfg.mem_reservation,
        shm_size: cfg.shm_size,
        nano_cpus: cfg.nano_cpus,
        cpu_shares: cfg.cpu_shares,
        cpu_quota: cfg.cpu_quota,
        cpu_period: cfg.cpu_period,
        cpu_realtime_period: cfg.cpu_rt_period,
        cpu_realtime_runtime: cfg.cpu_rt_runtime,
        cpuset_cpus: cfg.cpuset.clone(),
        pids_limit: cfg.pids_limit,
        oom_score_adj: cfg.oom_score_adj,
        oom_kill_disable: cfg.oom_kill_disable,
        cgroupns_mode: cfg.cgroup.as_deref().map(|c| match c {
            "host" => HostConfigCgroupnsModeEnum::HOST,
            _ => HostConfigCgroupnsModeEnum::PRIVATE,
        }),
        cgroup_parent: cfg.cgroup_parent.clone(),
        ulimits: (!cfg.ulimits.is_empty()).then(|| {
            cfg.ulimits
                .iter()
                .map(|(name, u)| ResourcesUlimits {
                    name: Some(name.clone()),
                    soft: Some(u.soft),
                    hard: Some(u.hard),
                })
                .collect()
        }),
        runtime: cfg.runtime.clone(),
        userns_mode: cfg.userns_mode.clone(),
        uts_mode: cfg.uts.clone(),
        pid_mode: cfg.pid.clone(),
        ipc_mode: cfg.ipc.clone(),
        annotations: some_map(&cfg.annotations),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        ..Default::default()
    };

    let body = ContainerCreateBody {
        image: Some(ctx.image.to_string()),
        cmd: cfg.command.clone(),
        entrypoint: cfg.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                // The engine keeps the image's entrypoint for an empty list; [""] resets it.
                vec![String::new()]
            } else {
                e.clone()
            }
        }),
        env: Some(env),
        labels: Some(labels),
        hostname: cfg.hostname.clone(),
        domainname: cfg.domainname.clone(),
        user: cfg.user.clone(),
        working_dir: cfg.working_dir.clone(),
        tty: Some(cfg.tty.unwrap_or(true)),
        stop_signal: cfg.stop_signal.clone(),
        stop_timeout: cfg.stop_timeout_secs(),
        healthcheck: cfg.healthcheck.as_ref().map(|h| HealthConfig {
            test: if h.disable {
                Some(vec!["NONE".to_string()])
            } else {
                h.test.clone()
            },
            interval: h.interval.map(nanos),
            timeout: h.timeout.map(nanos),
            retries: h.retries.map(i64::from),
            start_period: h.start_period.map(nanos),
            start_interval: h.start_interval.map(nanos),
        }),
        exposed_ports: (!exposed.is_empty()).then(|| exposed.into_iter().collect()),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    };
    (body, connect)
}

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Engine network mode, the create-time endpoint and the networks to connect afterwards.
fn networking(
    ctx: &ServiceContext,
    cfg: &ServiceConfig,
) -> (
    String,
    Option<NetworkingConfig>,
    Vec<(String, EndpointSettings)>,
) {
    if let Some(mode) = &cfg.network_mode {
        let mode = match cfg.network_service() {
            Some(other) => format!("container:{}", container_name(other, ctx.release)),
            None => mode.clone(),
        };
        return (mode, None, Vec::new());
    }
    let mut names = cfg.network_names();
    if names.is_empty() {
        names.push("default".to_string());
    }
    let endpoint = |name: &str| {
        let a = cfg.networks.get(name).cloned().unwrap_or_default();
        let mut aliases = a.aliases.clone();
        if !aliases.iter().any(|x| x == ctx.service_name) {
            aliases.push(ctx.service_name.to_string());
        }
        let ipam =
            (a.ipv4_address.is_some() || a.ipv6_address.is_some()).then(|| EndpointIpamConfig {
                ipv4_address: a.ipv4_address.clone(),
                ipv6_address: a.ipv6_address.clone(),
                ..Default::default()
            });
        (
            scoped_name(name, ctx.app_uuid),
            EndpointSettings {
                aliases: Some(aliases),
                ipam_config: ipam,
                mac_address: a.mac_address.clone(),
                ..Default::default()
            },
        )
    };
    let (main, main_ep) = endpoint(&names[0]);
    let connect = names[1..].iter().map(|n| endpoint(n)).collect();
    (
        main.clone(),
        Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(main, main_ep)])),
        }),
        connect,
    )
}

fn engine_mount(app_uuid: &str, m: &Mount) -> EngineMount {
    let mut e = EngineMount {
        target: Some(m.target.clone()),
        read_only: m.read_only.then_some(true),
        ..Default::default()
    };
    match m.kind.as_str() {
        "bind" => {
            e.typ = Some(MountType::BIND);
            e.source = m.source.clone();
            e.bind_options = m.propagation.as_deref().map(|p| MountBindOptions {
                propagation: Some(propagation(p)),
                ..Default::default()
            });
        }
        "tmpfs" => {
            e.typ = Some(MountType::TMPFS);
            if m.size.is_some() || m.mode.is_some() {
                e.tmpfs_options = Some(MountTmpfsOptions {
                    size_bytes: m.size,
                    mode: m.mode.map(i64::from),
                    ..Default::default()
                });
            }
        }
        _ => {
            e.typ = Some(MountType::VOLUME);
            e.source = m.source.as_deref().map(|s| scoped_name(s, app_uuid));
            if m.nocopy || m.subpath.is_some() {
                e.volume_options = Some(MountVolumeOptions {
                    no_copy: m.nocopy.then_some(true),
                    subpath: m.subpath.clone(),
                    ..Default::default()
                });
            }
        }
    }
    e
}

fn propagation(p: &str) -> MountBindOptionsPropagationEnum {
    match p {
        "private" => MountBindOptionsPropagationEnum::PRIVATE,
        "shared" => MountBindOptionsPropagationEnum::SHARED,
        "rshared" => MountBindOptionsPropagationEnum::RSHARED,
        "slave" => MountBindOptionsPropagationEnum::SLAVE,
        "rslave" => MountBindOptionsPropagationEnum::RSLAVE,
        _ => MountBindOptionsPropagationEnum::RPRIVATE,
    }
}

/// `no` and `always`-like policies get max retries 0 (the engine rejects more).
pub(super) fn engine_restart(r: &RestartPolicy) -> EngineRestartPolicy {
    let (name, retries) = match r.name {
        RestartPolicyName::No => (RestartPolicyNameEnum::NO, 0),
        RestartPolicyName::Always => (RestartPolicyNameEnum::ALWAYS, 0),
        RestartPolicyName::UnlessStopped => (RestartPolicyNameEnum::UNLESS_STOPPED, 0),
        RestartPolicyName::OnFailure => (
            RestartPolicyNameEnum::ON_FAILURE,
            r.max_retries.map_or(0, i64::from),
        ),
    };
    EngineRestartPolicy {
        name: Some(name),
        maximum_retry_count: Some(retries),
    }
}
