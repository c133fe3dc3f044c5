//! Mapping between the model and the engine's objects (bollard types): the create bodies of
//! service containers, networks and volumes (spec/helios-api-v3.md §6), and the read-back of
//! supervised objects into the model. Pure functions: no engine calls.
//!
//! Engine naming (spec/helios-api-v3.md §6): a container is `<service>_<release>`, a network
//! or volume `<name>_<app uuid>`, and all of them carry `io.balena.supervised` (containers
//! labelled `io.resin.supervised` are read as supervised too) with the app uuid, id and name
//! and the service name and id. A supervised container without an app-uuid label reads back
//! under app `10c401`, one whose name is not `<service>_<release>` under release
//! `10ca12e1ea5e` (spec §6.1), which no target has. Every service container gets the
//! app's update-lock directory bound at `/tmp/balena` and `/tmp/resin`.
//!
//! Deliberate differences from upstream: the normalised service config is kept whole in one
//! label (below) instead of upstream's per-field bookkeeping labels, and what can change
//! without recreating a container is read back from the engine and compared. A release change
//! with an identical service config therefore recreates the container (its name holds the
//! release; upstream renames it).
//!
//! A container's normalised `ServiceConfig` is stored as JSON in the `io.balena.private.config`
//! label and read back from there, so the read-back equals the target exactly. What can change
//! by hand without recreating the container is checked against the inspect data and, when it
//! differs, the engine's value is returned so the planner sees the drift: the restart policy
//! (`docker update`), network membership (`docker network connect/disconnect`) and the image
//! (always taken from the engine). A supervised container without a readable config label
//! reads back with the `io.balena.private.config-unreadable` label, which no valid target can
//! carry, so it never equals a target and gets recreated.
//!
//! Networks keep their IPAM configuration and options in `io.balena.private.ipam.config` /
//! `.options` (the engine fills in subnets it picked) and the names of the driver options
//! they were created with in `io.balena.private.driver-opts` (the engine may add its own).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    DeviceMapping as EngineDevice, EndpointIpamConfig, EndpointSettings, HealthConfig,
    HealthStatusEnum, HostConfig, HostConfigCgroupnsModeEnum, Ipam as EngineIpam,
    IpamConfig as EngineIpamConfig, Mount as EngineMount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountTmpfsOptions, MountType, MountVolumeOptions,
    NetworkCreateRequest, NetworkingConfig, PortBinding, ResourcesUlimits,
    RestartPolicy as EngineRestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};

use crate::model::compose::{
    Ipam, IpamPool, Mount, NetworkAttachment, NetworkConfig, RestartPolicy, RestartPolicyName,
    ServiceConfig, VolumeConfig,
};
use crate::model::device::{container_name, scoped_name, Container};
use crate::model::host::OsVersion;

pub const SUPERVISED_LABEL: &str = "io.balena.supervised";
const LEGACY_SUPERVISED_LABEL: &str = "io.resin.supervised";
pub const APP_UUID_LABEL: &str = "io.balena.app-uuid";
pub const APP_ID_LABEL: &str = "io.balena.app-id";
pub const APP_NAME_LABEL: &str = "io.balena.app-name";
pub const SERVICE_NAME_LABEL: &str = "io.balena.service-name";
pub const SERVICE_ID_LABEL: &str = "io.balena.service-id";
pub const CONFIG_LABEL: &str = "io.balena.private.config";
pub const DEPENDS_ON_LABEL: &str = "io.balena.private.depends-on";
/// Set on the read-back config of a container whose config label is missing or unreadable.
pub const UNREADABLE_CONFIG_LABEL: &str = "io.balena.private.config-unreadable";
pub const NETWORK_NAME_LABEL: &str = "io.balena.network-name";
pub const VOLUME_NAME_LABEL: &str = "io.balena.volume-name";
pub const IPAM_CONFIG_LABEL: &str = "io.balena.private.ipam.config";
pub const IPAM_OPTIONS_LABEL: &str = "io.balena.private.ipam.options";
pub const DRIVER_OPTS_LABEL: &str = "io.balena.private.driver-opts";

/// App uuid of a supervised container without an app-uuid label (spec §6.1).
pub const UNKNOWN_APP: &str = "10c401";
/// Release of a supervised container whose name is not `<service>_<release>` (spec §6.1).
pub const UNKNOWN_RELEASE: &str = "10ca12e1ea5e";

/// Where update locks and the hand-over breadcrumb live in every service container.
pub const LOCK_TARGETS: [&str; 2] = ["/tmp/balena", "/tmp/resin"];

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

/// `<host runtime dir>/update-locks/<app uuid>`: bound at `/tmp/balena` and `/tmp/resin` in
/// every container of the app. The caller creates it before creating a container.
pub fn update_lock_dir(host_runtime_dir: &Path, app_uuid: &str) -> PathBuf {
    host_runtime_dir.join("update-locks").join(app_uuid)
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
fn engine_restart(r: &RestartPolicy) -> EngineRestartPolicy {
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

fn restart_from_engine(r: &EngineRestartPolicy) -> RestartPolicy {
    let name = match r.name {
        Some(RestartPolicyNameEnum::ALWAYS) => RestartPolicyName::Always,
        Some(RestartPolicyNameEnum::UNLESS_STOPPED) => RestartPolicyName::UnlessStopped,
        Some(RestartPolicyNameEnum::ON_FAILURE) => RestartPolicyName::OnFailure,
        _ => RestartPolicyName::No,
    };
    let max_retries = match name {
        RestartPolicyName::OnFailure => r
            .maximum_retry_count
            .filter(|n| *n > 0)
            .and_then(|n| u32::try_from(n).ok()),
        _ => None,
    };
    RestartPolicy { name, max_retries }
}

/// A supervised container read back into the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerReadBack {
    pub app_uuid: String,
    pub app_id: u32,
    pub app_name: Option<String>,
    pub service_name: String,
    pub service_id: u32,
    pub release: String,
    /// `Config.Image`: the reference the container was created with.
    pub image: String,
    /// The engine image id (`sha256:…`) the container runs.
    pub image_id: String,
    pub config: ServiceConfig,
    /// Running, restarting, or started before and exited (left to the restart policy).
    pub running: bool,
    pub container: Container,
}

fn is_supervised(labels: &HashMap<String, String>) -> bool {
    labels.contains_key(SUPERVISED_LABEL) || labels.contains_key(LEGACY_SUPERVISED_LABEL)
}

/// Reads a supervised container back into the model. None for containers without the
/// supervised label.
pub fn read_container(c: &ContainerInspectResponse) -> Option<ContainerReadBack> {
    let empty = HashMap::new();
    let labels = c
        .config
        .as_ref()
        .and_then(|cf| cf.labels.as_ref())
        .unwrap_or(&empty);
    if !is_supervised(labels) {
        return None;
    }
    let name = c
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let app_uuid = labels
        .get(APP_UUID_LABEL)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| UNKNOWN_APP.to_string());
    let service_name = labels
        .get(SERVICE_NAME_LABEL)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| {
            name.rsplit_once('_')
                .map_or(name.clone(), |(s, _)| s.to_string())
        });
    let release = name
        .strip_prefix(service_name.as_str())
        .and_then(|r| r.strip_prefix('_'))
        .filter(|r| !r.is_empty() && !r.contains('_'))
        .map_or_else(|| UNKNOWN_RELEASE.to_string(), str::to_string);
    let parse_u32 = |k: &str| {
        labels
            .get(k)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    };

    let config = match labels
        .get(CONFIG_LABEL)
        .ok_or_else(|| "no config label".to_string())
        .and_then(|j| serde_json::from_str::<ServiceConfig>(j).map_err(|e| e.to_string()))
    {
        Ok(cfg) => verify_config(cfg, c, &app_uuid, &service_name),
        Err(reason) => unreadable_config(c, labels, &app_uuid, &service_name, reason),
    };

    let state = c.state.clone().unwrap_or_default();
    let is_running = state.running.unwrap_or(false);
    let restarting = state.restarting.unwrap_or(false);
    let started = state
        .started_at
        .as_deref()
        .is_some_and(|t| !t.is_empty() && !t.starts_with("0001-01-01"));
    let status = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => "created",
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::RESTARTING
            | ContainerStateStatusEnum::PAUSED,
        ) => "running",
        Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::STOPPING) => "stopping",
        Some(ContainerStateStatusEnum::EXITED) => "stopped",
        Some(ContainerStateStatusEnum::DEAD) => "dead",
        Some(ContainerStateStatusEnum::EMPTY) | None if is_running => "running",
        Some(ContainerStateStatusEnum::EMPTY) | None if started => "stopped",
        Some(ContainerStateStatusEnum::EMPTY) | None => "created",
    };
    let health = match state.health.as_ref().and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => "starting",
        Some(HealthStatusEnum::HEALTHY) => "healthy",
        Some(HealthStatusEnum::UNHEALTHY) => "unhealthy",
        _ => "none",
    };
    let running = is_running || restarting || (started && status == "stopped");

    Some(ContainerReadBack {
        app_id: parse_u32(APP_ID_LABEL),
        app_name: labels.get(APP_NAME_LABEL).cloned(),
        service_id: parse_u32(SERVICE_ID_LABEL),
        image: c
            .config
            .as_ref()
            .and_then(|cf| cf.image.clone())
            .unwrap_or_default(),
        image_id: c.image.clone().unwrap_or_default(),
        config,
        running,
        container: Container {
            id: c.id.clone().unwrap_or_default(),
            name,
            created: c.created.clone().unwrap_or_default(),
            status: status.to_string(),
            exit_code: state.exit_code.unwrap_or(0),
            health: health.to_string(),
            started,
        },
        app_uuid,
        service_name,
        release,
    })
}

/// The networks the engine has the container on, as logical names (an engine network not of
/// this app keeps its engine name) with the user aliases.
fn engine_networks(
    c: &ContainerInspectResponse,
    app_uuid: &str,
    service_name: &str,
) -> Option<BTreeMap<String, NetworkAttachment>> {
    let nets = c.network_settings.as_ref()?.networks.as_ref()?;
    let suffix = format!("_{app_uuid}");
    Some(
        nets.iter()
            .map(|(engine_name, ep)| {
                let logical = engine_name
                    .strip_suffix(&suffix)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(engine_name);
                let id = c.id.as_deref().unwrap_or_default();
                let aliases = ep
                    .aliases
                    .iter()
                    .flatten()
                    .filter(|a| {
                        a.as_str() != service_name && !(a.len() >= 12 && id.starts_with(a.as_str()))
                    })
                    .cloned()
                    .collect();
                (
                    logical.to_string(),
                    NetworkAttachment {
                        aliases,
                        ..Default::default()
                    },
                )
            })
            .collect(),
    )
}

/// Replaces what was changed by hand with the engine's values.
fn verify_config(
    mut cfg: ServiceConfig,
    c: &ContainerInspectResponse,
    app_uuid: &str,
    service_name: &str,
) -> ServiceConfig {
    if let Some(actual) = c
        .host_config
        .as_ref()
        .and_then(|h| h.restart_policy.as_ref())
    {
        let actual = restart_from_engine(actual);
        if restart_from_engine(&engine_restart(&cfg.restart_policy)) != actual {
            cfg.restart_policy = actual;
        }
    }
    if cfg.network_mode.is_none() {
        if let Some(actual) = engine_networks(c, app_uuid, service_name) {
            let wanted: BTreeSet<&String> = cfg.networks.keys().collect();
            let have: BTreeSet<&String> = actual.keys().collect();
            if wanted != have {
                cfg.networks = actual
                    .into_iter()
                    .map(|(n, a)| {
                        let a = cfg.networks.get(&n).cloned().unwrap_or(a);
                        (n, a)
                    })
                    .collect();
            }
        }
    }
    cfg
}

/// The best the engine can tell, marked so that it equals no target.
fn unreadable_config(
    c: &ContainerInspectResponse,
    labels: &HashMap<String, String>,
    app_uuid: &str,
    service_name: &str,
    reason: String,
) -> ServiceConfig {
    let ours = |k: &str| {
        k == SUPERVISED_LABEL
            || k == LEGACY_SUPERVISED_LABEL
            || k.starts_with("io.balena.private.")
            || [
                APP_UUID_LABEL,
                APP_ID_LABEL,
                APP_NAME_LABEL,
                SERVICE_NAME_LABEL,
                SERVICE_ID_LABEL,
            ]
            .contains(&k)
    };
    let mut cfg = ServiceConfig {
        labels: labels
            .iter()
            .filter(|(k, _)| !ours(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        command: c.config.as_ref().and_then(|cf| cf.cmd.clone()),
        networks: engine_networks(c, app_uuid, service_name).unwrap_or_default(),
        ..Default::default()
    };
    cfg.labels
        .insert(UNREADABLE_CONFIG_LABEL.to_string(), reason);
    if let Some(r) = c
        .host_config
        .as_ref()
        .and_then(|h| h.restart_policy.as_ref())
    {
        cfg.restart_policy = restart_from_engine(r);
    }
    if let Some(mode) = c.host_config.as_ref().and_then(|h| h.network_mode.clone()) {
        if matches!(mode.as_str(), "host" | "none" | "bridge") {
            cfg.network_mode = Some(mode);
            cfg.networks.clear();
        }
    }
    cfg
}

/// Network create body: engine name `<name>_<app uuid>`, the compose settings, and the labels
/// needed to read the configuration back exactly.
pub fn network_create_body(
    app_uuid: &str,
    name: &str,
    cfg: &NetworkConfig,
) -> NetworkCreateRequest {
    let mut labels: HashMap<String, String> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(SUPERVISED_LABEL.into(), String::new());
    labels.insert(NETWORK_NAME_LABEL.into(), name.into());
    labels.insert(APP_UUID_LABEL.into(), app_uuid.into());
    labels.insert(
        IPAM_CONFIG_LABEL.into(),
        serde_json::to_string(&cfg.ipam.config).expect("IPAM pools serialise to JSON"),
    );
    labels.insert(
        IPAM_OPTIONS_LABEL.into(),
        if cfg.ipam.options.is_empty() {
            "[]".to_string()
        } else {
            serde_json::to_string(&cfg.ipam.options).expect("a map serialises to JSON")
        },
    );
    labels.insert(
        DRIVER_OPTS_LABEL.into(),
        serde_json::to_string(&cfg.driver_opts.keys().collect::<Vec<_>>())
            .expect("a list serialises to JSON"),
    );
    NetworkCreateRequest {
        name: scoped_name(name, app_uuid),
        driver: Some(cfg.driver.clone().unwrap_or_else(|| "bridge".to_string())),
        internal: Some(cfg.internal),
        enable_ipv6: Some(cfg.enable_ipv6),
        config_only: Some(cfg.config_only),
        options: Some(
            cfg.driver_opts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        ipam: Some(EngineIpam {
            driver: Some(cfg.ipam.driver.clone()),
            config: Some(
                cfg.ipam
                    .config
                    .iter()
                    .map(|p| EngineIpamConfig {
                        subnet: p.subnet.clone(),
                        gateway: p.gateway.clone(),
                        ip_range: p.ip_range.clone(),
                        auxiliary_addresses: (!p.aux_addresses.is_empty()).then(|| {
                            p.aux_addresses
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect()
                        }),
                    })
                    .collect(),
            ),
            options: Some(
                cfg.ipam
                    .options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        }),
        labels: Some(labels),
        ..Default::default()
    }
}

/// The engine name and labels of an object: (app uuid, logical name) from the labels, or
/// parsed from `<name>_<app uuid>`.
fn owner(
    engine_name: &str,
    labels: &HashMap<String, String>,
    name_label: &str,
) -> Option<(String, String)> {
    let parsed = engine_name.rsplit_once('_');
    let app = labels
        .get(APP_UUID_LABEL)
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| parsed.map(|(_, a)| a.to_string()))?;
    let name = labels
        .get(name_label)
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| {
            engine_name
                .strip_suffix(&format!("_{app}"))
                .map(str::to_string)
        })?;
    Some((app, name))
}

fn user_labels(labels: &HashMap<String, String>, name_label: &str) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !(k == SUPERVISED_LABEL
                || k == LEGACY_SUPERVISED_LABEL
                || k == APP_UUID_LABEL
                || k == name_label
                || k.starts_with("io.balena.private."))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The parts of a network that [`read_network`] needs (list and inspect shapes differ).
struct NetworkFacts<'a> {
    name: Option<&'a String>,
    driver: Option<&'a String>,
    enable_ipv6: Option<bool>,
    internal: Option<bool>,
    config_only: Option<bool>,
    ipam: Option<&'a EngineIpam>,
    options: Option<&'a HashMap<String, String>>,
    labels: Option<&'a HashMap<String, String>>,
}

/// Reads a supervised network back: (app uuid, logical name, config). None for others.
pub fn read_network(n: &bollard::models::Network) -> Option<(String, String, NetworkConfig)> {
    network_from_facts(NetworkFacts {
        name: n.name.as_ref(),
        driver: n.driver.as_ref(),
        enable_ipv6: n.enable_ipv6,
        internal: n.internal,
        config_only: n.config_only,
        ipam: n.ipam.as_ref(),
        options: n.options.as_ref(),
        labels: n.labels.as_ref(),
    })
}

fn network_from_facts(n: NetworkFacts) -> Option<(String, String, NetworkConfig)> {
    let labels = n.labels?;
    if !is_supervised(labels) {
        return None;
    }
    let (app, name) = owner(n.name?, labels, NETWORK_NAME_LABEL)?;
    let engine_opts: BTreeMap<String, String> = n
        .options
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let driver_opts = match labels
        .get(DRIVER_OPTS_LABEL)
        .and_then(|l| serde_json::from_str::<Vec<String>>(l).ok())
    {
        Some(keys) => engine_opts
            .into_iter()
            .filter(|(k, _)| keys.contains(k))
            .collect(),
        None => engine_opts,
    };
    let engine_pools = || -> Vec<IpamPool> {
        n.ipam
            .and_then(|i| i.config.as_ref())
            .map(|c| {
                c.iter()
                    .map(|p| IpamPool {
                        subnet: p.subnet.clone(),
                        gateway: p.gateway.clone(),
                        ip_range: p.ip_range.clone(),
                        aux_addresses: p
                            .auxiliary_addresses
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let engine_ipam_opts = || -> BTreeMap<String, String> {
        n.ipam
            .and_then(|i| i.options.as_ref())
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let ipam = Ipam {
        driver: n
            .ipam
            .and_then(|i| i.driver.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        config: labels
            .get(IPAM_CONFIG_LABEL)
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(engine_pools),
        options: match labels.get(IPAM_OPTIONS_LABEL).map(String::as_str) {
            Some("[]") => BTreeMap::new(),
            Some(l) => serde_json::from_str(l).unwrap_or_else(|_| engine_ipam_opts()),
            None => engine_ipam_opts(),
        },
    };
    Some((
        app,
        name,
        NetworkConfig {
            driver: n.driver.cloned(),
            driver_opts,
            ipam,
            enable_ipv6: n.enable_ipv6.unwrap_or(false),
            internal: n.internal.unwrap_or(false),
            labels: user_labels(labels, NETWORK_NAME_LABEL),
            config_only: n.config_only.unwrap_or(false),
        },
    ))
}

/// Volume create body: engine name `<name>_<app uuid>`, driver (default `local`), options and
/// labels.
pub fn volume_create_body(app_uuid: &str, name: &str, cfg: &VolumeConfig) -> VolumeCreateRequest {
    let mut labels: HashMap<String, String> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(SUPERVISED_LABEL.into(), String::new());
    labels.insert(VOLUME_NAME_LABEL.into(), name.into());
    labels.insert(APP_UUID_LABEL.into(), app_uuid.into());
    VolumeCreateRequest {
        name: Some(scoped_name(name, app_uuid)),
        driver: Some(cfg.driver.clone().unwrap_or_else(|| "local".to_string())),
        driver_opts: Some(
            cfg.driver_opts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        labels: Some(labels),
        ..Default::default()
    }
}

/// Reads a supervised volume back: (app uuid, logical name, config). None for others.
pub fn read_volume(v: &bollard::models::Volume) -> Option<(String, String, VolumeConfig)> {
    if !is_supervised(&v.labels) {
        return None;
    }
    let (app, name) = owner(&v.name, &v.labels, VOLUME_NAME_LABEL)?;
    Some((
        app,
        name,
        VolumeConfig {
            driver: Some(v.driver.clone()),
            driver_opts: v
                .options
                .iter()
                .map(|(k, val)| (k.clone(), val.clone()))
                .collect(),
            labels: user_labels(&v.labels, VOLUME_NAME_LABEL),
        },
    ))
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerConfig, ContainerState, Health, NetworkSettings};
    use serde_json::json;

    use super::*;
    use crate::model::device::App;
    use crate::model::target::{app_from_target, AppTarget};

    const APP: &str = "app1";
    const REL: &str = "rel1";

    fn app(v: serde_json::Value) -> App {
        let t: AppTarget = serde_json::from_value(v).expect("wire shape");
        app_from_target(APP, t).expect("valid target")
    }

    fn ctx<'a>(
        service: &'a str,
        image: &'a str,
        os: Option<&'a OsVersion>,
        extra: &'a BTreeMap<String, String>,
    ) -> ServiceContext<'a> {
        ServiceContext {
            app_uuid: APP,
            app_id: 12,
            app_name: Some("demo"),
            service_name: service,
            service_id: 3,
            release: REL,
            device_uuid: "dev-uuid",
            device_name: Some("my-device"),
            host_os: os,
            host_runtime_dir: Path::new("/tmp/run"),
            image,
            extra_env: extra,
        }
    }

    /// What the engine would report for a container created from `body` (+ `connect`).
    fn inspect(
        body: &ContainerCreateBody,
        connect: &[(String, EndpointSettings)],
        name: &str,
        state: ContainerState,
    ) -> ContainerInspectResponse {
        let mut networks: HashMap<String, EndpointSettings> = body
            .networking_config
            .as_ref()
            .and_then(|n| n.endpoints_config.clone())
            .unwrap_or_default();
        networks.extend(connect.iter().cloned());
        ContainerInspectResponse {
            id: Some("0123456789abcdef0123".into()),
            name: Some(format!("/{name}")),
            created: Some("2026-11-28T01:54:00.604943066Z".into()),
            image: Some(format!("sha256:{}", "b".repeat(64))),
            state: Some(state),
            config: Some(ContainerConfig {
                image: body.image.clone(),
                env: body.env.clone(),
                cmd: body.cmd.clone(),
                labels: body.labels.clone(),
                ..Default::default()
            }),
            host_config: body.host_config.clone(),
            network_settings: Some(NetworkSettings {
                networks: Some(networks),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn created() -> ContainerState {
        ContainerState {
            status: Some(ContainerStateStatusEnum::CREATED),
            running: Some(false),
            started_at: Some("0001-01-01T00:00:00Z".into()),
            ..Default::default()
        }
    }

    const FULL: &str = r#"{
        "id": 12, "name": "demo",
        "releases": {"rel1": {"id": 1,
            "networks": {"front": {"ipam": {"config": [{"subnet": "10.9.0.0/16"}]}}, "back": {}},
            "volumes": {"data": {}},
            "services": {
                "web": {"id": 3, "image": "alpine", "environment": {"FOO": "bar"},
                    "labels": {"com.example": "x"},
                    "composition": {
                        "command": "sleep infinity", "entrypoint": ["/bin/sh", "-c"],
                        "networks": {"front": {"aliases": ["www"], "priority": 5}, "back": null},
                        "volumes": ["data:/data", "/sys:/sys:ro",
                            {"type": "tmpfs", "target": "/cache", "tmpfs": {"size": "1m", "mode": "1777"}},
                            "data:/tmp/balena"],
                        "tmpfs": ["/run:size=1m"],
                        "ports": ["8080-8081:8080", "127.0.0.1:53:53/udp"],
                        "restart": "on-failure:2", "sysctls": {"net.core.somaxconn": 1024},
                        "security_opt": ["no-new-privileges:true"], "cap_add": ["NET_ADMIN"],
                        "devices": ["/dev/ttyUSB0"], "privileged": false,
                        "healthcheck": {"test": ["CMD", "true"], "interval": "10s", "retries": 2},
                        "working_dir": "/app", "user": "1000", "hostname": "web",
                        "tty": false, "init": true, "read_only": true, "stop_signal": "SIGINT",
                        "stop_grace_period": "1500ms", "dns": ["1.1.1.1"],
                        "extra_hosts": ["db=10.0.0.2"], "mem_limit": "1g", "shm_size": "64m",
                        "cpus": 0.5, "cpu_shares": 512, "pids_limit": 100, "oom_score_adj": 5,
                        "group_add": ["audio"], "cgroup": "private",
                        "ulimits": {"nofile": {"soft": 1024, "hard": 2048}},
                        "annotations": {"a": "b"}, "depends_on": ["db"]
                    }},
                "db": {"id": 4, "image": "postgres:16"},
                "sidecar": {"id": 5, "image": "alpine", "composition": {"network_mode": "service:web"}},
                "hosty": {"id": 6, "image": "alpine", "composition": {"network_mode": "host", "restart": "no"}}
            }}}}"#;

    fn full() -> App {
        app(serde_json::from_str(FULL).unwrap())
    }

    #[test]
    fn every_service_round_trips_through_the_engine() {
        let a = full();
        let no_env = BTreeMap::new();
        let os = OsVersion::parse("balenaOS 6.0.39@rev-1").unwrap();
        for (name, svc) in a.releases[&REL.to_string()].services.iter() {
            let cx = ctx(name, &svc.image, Some(&os), &no_env);
            let (body, connect) = container_create_body(&cx, &svc.config);
            let c = inspect(&body, &connect, &container_name(name, REL), created());
            let rb = read_container(&c).expect("supervised");
            assert_eq!(rb.config, svc.config, "{name}");
            assert_eq!(rb.app_uuid, APP);
            assert_eq!(rb.app_id, 12);
            assert_eq!(rb.app_name.as_deref(), Some("demo"));
            assert_eq!(rb.service_name, *name);
            assert_eq!(rb.release, REL);
            assert_eq!(rb.image, svc.image);
            assert_eq!(rb.image_id, format!("sha256:{}", "b".repeat(64)));
            assert!(!rb.running);
            assert_eq!(
                rb.container,
                Container {
                    id: "0123456789abcdef0123".into(),
                    name: container_name(name, REL),
                    created: "2026-11-28T01:54:00.604943066Z".into(),
                    status: "created".into(),
                    exit_code: 0,
                    health: "none".into(),
                    started: false,
                }
            );
        }
    }

    #[test]
    fn the_create_body_maps_the_compose_configuration() {
        let a = full();
        let web = &a.releases[&REL.to_string()].services[&"web".to_string()];
        let extra = BTreeMap::from([("BALENA_SUPERVISOR_API_KEY".to_string(), "k".to_string())]);
        let os = OsVersion::parse("balenaOS 6.0.39@rev-1").unwrap();
        let (body, connect) =
            container_create_body(&ctx("web", &web.image, Some(&os), &extra), &web.config);
        assert_eq!(body.image.as_deref(), Some("alpine:latest"));
        assert_eq!(body.cmd, Some(vec!["sleep".into(), "infinity".into()]));
        assert_eq!(body.entrypoint, Some(vec!["/bin/sh".into(), "-c".into()]));
        assert_eq!(body.tty, Some(false));
        assert_eq!(body.stop_timeout, Some(2));
        assert_eq!(body.user.as_deref(), Some("1000"));
        assert_eq!(
            body.healthcheck,
            Some(HealthConfig {
                test: Some(vec!["CMD".into(), "true".into()]),
                interval: Some(10_000_000_000),
                retries: Some(2),
                ..Default::default()
            })
        );
        let env: BTreeSet<&str> = body
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect();
        for e in [
            "FOO=bar",
            "BALENA_APP_UUID=app1",
            "RESIN_APP_UUID=app1",
            "BALENA_APP_ID=12",
            "BALENA_APP_NAME=demo",
            "BALENA_SERVICE_NAME=web",
            "BALENA_DEVICE_UUID=dev-uuid",
            "BALENA_HOST_OS_VERSION=balenaOS 6.0.39",
            "BALENA_HOST_OS_BUILD=rev-1",
            "RESIN_HOST_OS_VERSION=balenaOS 6.0.39",
            "BALENA_APP_LOCK_PATH=/tmp/balena/updates.lock",
            "BALENA_SERVICE_HANDOVER_COMPLETE_PATH=/tmp/balena/handover-complete",
            "RESIN_SERVICE_KILL_ME_PATH=/tmp/balena/handover-complete",
            "BALENA_DEVICE_NAME_AT_INIT=my-device",
            "BALENA=1",
            "RESIN=1",
            "BALENA_SUPERVISOR_API_KEY=k",
        ] {
            assert!(env.contains(e), "{e} in {env:?}");
        }
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels["io.balena.supervised"], "");
        assert_eq!(labels["io.balena.app-uuid"], "app1");
        assert_eq!(labels["io.balena.service-name"], "web");
        assert_eq!(labels["io.balena.service-id"], "3");
        assert_eq!(labels["io.balena.app-id"], "12");
        assert_eq!(labels["com.example"], "x");
        assert_eq!(labels[DEPENDS_ON_LABEL], r#"{"db":"service_started"}"#);

        let h = body.host_config.as_ref().unwrap();
        assert_eq!(
            h.restart_policy,
            Some(EngineRestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: Some(2)
            })
        );
        // Main network (highest priority) at create time, the rest connected afterwards.
        assert_eq!(h.network_mode.as_deref(), Some("front_app1"));
        let eps = body
            .networking_config
            .as_ref()
            .unwrap()
            .endpoints_config
            .as_ref()
            .unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(
            eps["front_app1"].aliases,
            Some(vec!["www".into(), "web".into()])
        );
        assert_eq!(connect.len(), 1);
        assert_eq!(connect[0].0, "back_app1");
        assert_eq!(connect[0].1.aliases, Some(vec!["web".into()]));

        let ports = h.port_bindings.as_ref().unwrap();
        let hp = |k: &str| -> Vec<(Option<String>, Option<String>)> {
            ports[k]
                .iter()
                .flatten()
                .map(|b| (b.host_ip.clone(), b.host_port.clone()))
                .collect()
        };
        assert_eq!(
            hp("8080/tcp"),
            [(None, Some("8080".into())), (None, Some("8081".into()))]
        );
        assert_eq!(
            hp("53/udp"),
            [(Some("127.0.0.1".into()), Some("53".into()))]
        );
        assert_eq!(
            body.exposed_ports,
            Some(vec!["53/udp".into(), "8080/tcp".into()])
        );

        let mounts = h.mounts.as_ref().unwrap();
        let lock = |t: &str| EngineMount {
            target: Some(t.into()),
            source: Some("/tmp/run/update-locks/app1".into()),
            typ: Some(MountType::BIND),
            bind_options: Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::PRIVATE),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            *mounts,
            vec![
                EngineMount {
                    target: Some("/data".into()),
                    source: Some("data_app1".into()),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                },
                EngineMount {
                    target: Some("/sys".into()),
                    source: Some("/sys".into()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                },
                EngineMount {
                    target: Some("/cache".into()),
                    typ: Some(MountType::TMPFS),
                    tmpfs_options: Some(MountTmpfsOptions {
                        size_bytes: Some(1 << 20),
                        mode: Some(0o1777),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                lock("/tmp/balena"),
                lock("/tmp/resin"),
            ],
            "the user's /tmp/balena mount is replaced"
        );
        assert_eq!(
            h.tmpfs,
            Some(HashMap::from([("/run".into(), "size=1m".into())]))
        );
        assert_eq!(
            h.sysctls,
            Some(HashMap::from([(
                "net.core.somaxconn".into(),
                "1024".into()
            )]))
        );
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges=true".into()]));
        assert_eq!(
            h.devices,
            Some(vec![EngineDevice {
                path_on_host: Some("/dev/ttyUSB0".into()),
                path_in_container: Some("/dev/ttyUSB0".into()),
                cgroup_permissions: Some("rwm".into())
            }])
        );
        assert_eq!(h.extra_hosts, Some(vec!["db:10.0.0.2".into()]));
        assert_eq!(h.memory, Some(1 << 30));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::PRIVATE));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.init, Some(true));
    }

    #[test]
    fn network_modes() {
        let a = full();
        let services = &a.releases[&REL.to_string()].services;
        let no_env = BTreeMap::new();
        let body = |n: &str| {
            let s = &services[&n.to_string()];
            container_create_body(&ctx(n, &s.image, None, &no_env), &s.config)
        };
        let (b, connect) = body("hosty");
        let h = b.host_config.unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("host"));
        assert!(b.networking_config.is_none() && connect.is_empty());
        assert_eq!(
            h.restart_policy,
            Some(EngineRestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: Some(0)
            })
        );
        assert_eq!(b.tty, Some(true), "tty defaults to true");
        let (b, _) = body("sidecar");
        assert_eq!(
            b.host_config.unwrap().network_mode.as_deref(),
            Some("container:web_rel1")
        );
        let (b, connect) = body("db");
        assert_eq!(
            b.host_config.unwrap().network_mode.as_deref(),
            Some("default_app1")
        );
        assert!(connect.is_empty());
        let env = b.env.unwrap();
        assert!(
            !env.iter().any(|e| e.starts_with("BALENA_HOST_OS_")),
            "no host OS known"
        );
    }

    #[test]
    fn user_variables_win_over_injected_ones_and_extra_ones_win_over_both() {
        let cfg = ServiceConfig {
            environment: BTreeMap::from([
                ("BALENA_APP_NAME".to_string(), "mine".to_string()),
                ("K".to_string(), "user".to_string()),
            ]),
            ..Default::default()
        };
        let extra = BTreeMap::from([("K".to_string(), "feature".to_string())]);
        let env = container_environment(&ctx("web", "a:1", None, &extra), &cfg);
        assert_eq!(env["BALENA_APP_NAME"], "mine");
        assert_eq!(env["RESIN_APP_NAME"], "demo");
        assert_eq!(env["K"], "feature");
    }

    #[test]
    fn hand_made_changes_show_as_drift() {
        let a = full();
        let web = &a.releases[&REL.to_string()].services[&"web".to_string()];
        let no_env = BTreeMap::new();
        let (body, connect) =
            container_create_body(&ctx("web", &web.image, None, &no_env), &web.config);
        let base = inspect(&body, &connect, "web_rel1", created());

        // docker update --restart always
        let mut c = base.clone();
        c.host_config.as_mut().unwrap().restart_policy = Some(EngineRestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: Some(0),
        });
        let rb = read_container(&c).unwrap();
        assert_eq!(rb.config.restart_policy, RestartPolicy::default());
        assert_ne!(rb.config, web.config);

        // docker network disconnect back_app1 web_rel1; docker network connect bridge web_rel1
        let mut c = base.clone();
        let nets = c
            .network_settings
            .as_mut()
            .unwrap()
            .networks
            .as_mut()
            .unwrap();
        nets.remove("back_app1");
        nets.insert(
            "bridge".into(),
            EndpointSettings {
                aliases: Some(vec!["0123456789ab".into()]),
                ..Default::default()
            },
        );
        let rb = read_container(&c).unwrap();
        assert_eq!(
            rb.config.networks.keys().collect::<Vec<_>>(),
            ["bridge", "front"]
        );
        assert_eq!(rb.config.networks["front"], web.config.networks["front"]);
        assert!(rb.config.networks["bridge"].aliases.is_empty());

        // The image comes from the engine.
        let mut c = base.clone();
        c.config.as_mut().unwrap().image = Some("other:1".into());
        assert_eq!(read_container(&c).unwrap().image, "other:1");
    }

    #[test]
    fn unreadable_or_foreign_containers() {
        let a = full();
        let web = &a.releases[&REL.to_string()].services[&"web".to_string()];
        let no_env = BTreeMap::new();
        let (body, connect) =
            container_create_body(&ctx("web", &web.image, None, &no_env), &web.config);
        let base = inspect(&body, &connect, "web_rel1", created());

        for broken in [None, Some("{not json")] {
            let mut c = base.clone();
            let labels = c.config.as_mut().unwrap().labels.as_mut().unwrap();
            match broken {
                None => labels.remove(CONFIG_LABEL),
                Some(b) => labels.insert(CONFIG_LABEL.into(), b.into()),
            };
            let rb = read_container(&c).unwrap();
            assert_ne!(rb.config, web.config);
            assert!(rb.config.labels.contains_key(UNREADABLE_CONFIG_LABEL));
            assert_eq!(rb.config.labels["com.example"], "x");
            assert!(!rb.config.labels.contains_key(APP_UUID_LABEL));
        }

        let mut c = base.clone();
        c.config
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .remove(SUPERVISED_LABEL);
        assert!(read_container(&c).is_none());

        let mut c = base.clone();
        c.name = Some("/something-else".into());
        c.config
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .remove(APP_UUID_LABEL);
        let rb = read_container(&c).unwrap();
        assert_eq!(rb.app_uuid, UNKNOWN_APP);
        assert_eq!(rb.release, UNKNOWN_RELEASE);
        assert_eq!(rb.service_name, "web");
    }

    #[test]
    fn container_states() {
        let a = full();
        let web = &a.releases[&REL.to_string()].services[&"web".to_string()];
        let no_env = BTreeMap::new();
        let (body, connect) =
            container_create_body(&ctx("web", &web.image, None, &no_env), &web.config);
        let read = |state: ContainerState| {
            let rb = read_container(&inspect(&body, &connect, "web_rel1", state)).unwrap();
            (
                rb.running,
                rb.container.status,
                rb.container.health,
                rb.container.started,
                rb.container.exit_code,
            )
        };
        let started = "2026-11-28T01:54:01Z".to_string();
        assert_eq!(
            read(ContainerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                running: Some(true),
                started_at: Some(started.clone()),
                health: Some(Health {
                    status: Some(HealthStatusEnum::HEALTHY),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            (true, "running".into(), "healthy".into(), true, 0)
        );
        assert_eq!(
            read(ContainerState {
                status: Some(ContainerStateStatusEnum::EXITED),
                running: Some(false),
                started_at: Some(started.clone()),
                exit_code: Some(3),
                ..Default::default()
            }),
            (true, "stopped".into(), "none".into(), true, 3),
            "started once and exited: left to the restart policy"
        );
        assert_eq!(
            read(ContainerState {
                status: Some(ContainerStateStatusEnum::RESTARTING),
                restarting: Some(true),
                started_at: Some(started.clone()),
                ..Default::default()
            }),
            (true, "running".into(), "none".into(), true, 0)
        );
        assert_eq!(
            read(ContainerState {
                status: Some(ContainerStateStatusEnum::DEAD),
                dead: Some(true),
                started_at: Some(started),
                ..Default::default()
            }),
            (false, "dead".into(), "none".into(), true, 0)
        );
        assert_eq!(
            read(created()),
            (false, "created".into(), "none".into(), false, 0)
        );
    }

    #[test]
    fn networks_and_volumes_round_trip() {
        let a = full();
        for (name, net) in a.networks.iter() {
            let body = network_create_body(APP, name, &net.config);
            assert_eq!(body.name, format!("{name}_{APP}"));
            // The engine picks subnets when none were given and may add options of its own.
            let mut ipam = body.ipam.clone().unwrap();
            if ipam.config.as_ref().is_none_or(Vec::is_empty) {
                ipam.config = Some(vec![EngineIpamConfig {
                    subnet: Some("172.20.0.0/16".into()),
                    gateway: Some("172.20.0.1".into()),
                    ..Default::default()
                }]);
            }
            let mut options = body.options.clone().unwrap();
            options.insert("com.docker.network.enable_ipv4".into(), "true".into());
            let n = bollard::models::Network {
                name: Some(body.name.clone()),
                id: Some("n1".into()),
                driver: body.driver.clone(),
                enable_ipv6: body.enable_ipv6,
                internal: body.internal,
                config_only: body.config_only,
                ipam: Some(ipam),
                options: Some(options),
                labels: body.labels.clone(),
                ..Default::default()
            };
            assert_eq!(
                read_network(&n),
                Some((APP.to_string(), name.clone(), net.config.clone())),
                "{name}"
            );
            let labels = body.labels.as_ref().unwrap();
            assert_eq!(labels[NETWORK_NAME_LABEL], *name);
            assert_eq!(labels[SUPERVISED_LABEL], "");
        }
        let net = &a.networks[&"back".to_string()];
        let labels = network_create_body(APP, "back", &net.config)
            .labels
            .unwrap();
        assert_eq!(labels[IPAM_CONFIG_LABEL], "[]");
        assert_eq!(labels[IPAM_OPTIONS_LABEL], "[]");

        let cfg = VolumeConfig {
            driver: Some("local".into()),
            driver_opts: BTreeMap::from([("type".to_string(), "tmpfs".to_string())]),
            labels: BTreeMap::from([("l".to_string(), "v".to_string())]),
        };
        let body = volume_create_body(APP, "data", &cfg);
        assert_eq!(body.name.as_deref(), Some("data_app1"));
        let v = bollard::models::Volume {
            name: body.name.clone().unwrap(),
            driver: body.driver.clone().unwrap(),
            mountpoint: "/var/lib/docker/volumes/data_app1/_data".into(),
            labels: body.labels.clone().unwrap(),
            options: body.driver_opts.clone().unwrap(),
            ..Default::default()
        };
        assert_eq!(
            read_volume(&v),
            Some((APP.to_string(), "data".to_string(), cfg))
        );
        let foreign = bollard::models::Volume {
            name: "x".into(),
            ..Default::default()
        };
        assert_eq!(read_volume(&foreign), None);
    }

    #[test]
    fn lock_dir() {
        assert_eq!(
            update_lock_dir(Path::new("/tmp/run"), "app1"),
            PathBuf::from("/tmp/run/update-locks/app1")
        );
    }

    /// The config object of spec §4.4, for the example's app: same keys (except `cgroup`,
    /// which upstream reports from the engine's default cgroup namespace mode and helios only
    /// when set), same shapes.
    #[test]
    fn the_documented_config_shape() {
        let a = app(json!({"id": 12, "name": "demo", "releases": {"rel-1": {
            "networks": {"front": {}}, "volumes": {"data": {}},
            "services": {"web": {"id": 3, "image": "alpine:latest",
                "environment": {"FOO": "bar", "MY_KEY": "123"}, "labels": {"com.example": "x"},
                "composition": {"command": "sleep infinity",
                    "networks": {"front": {"aliases": ["www"]}},
                    "volumes": ["data:/data"], "ports": ["9000:9000"]}}}}}}));
        let web = &a.releases[&"rel-1".to_string()].services[&"web".to_string()];
        let doc = web.config.document();
        let documented = json!({
            "cgroup": "private",
            "command": ["sleep", "infinity"],
            "environment": {"FOO": "bar", "MY_KEY": 123},
            "labels": { "com.example": "x" },
            "restart_policy": { "name": "always" },
            "networks": { "front": { "aliases": ["www"] } },
            "volumes": [{ "type": "volume", "target": "/data", "source": "data" }],
            "ports": [ { "target": 9000, "protocol": "tcp", "published": 9000 } ]
        });
        let mut expected = documented.as_object().unwrap().clone();
        expected.remove("cgroup");
        assert_eq!(doc, serde_json::Value::Object(expected));
        let net = serde_json::to_value(&a.networks[&"front".to_string()].config).unwrap();
        assert_eq!(
            net,
            json!({ "driver": "bridge", "enable_ipv6": false, "internal": false,
                    "ipam": { "driver": "default" } })
        );
        let vol = serde_json::to_value(&a.volumes[&"data".to_string()].config).unwrap();
        assert_eq!(vol, json!({ "driver": "local" }));
    }
}
