//! Service containers, engine → model: the read-back, with hand-made drift taken from the engine.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum,
    RestartPolicy as EngineRestartPolicy, RestartPolicyNameEnum,
};

use super::create::engine_restart;
use super::labels::{
    is_supervised, APP_ID_LABEL, APP_NAME_LABEL, APP_UUID_LABEL, CONFIG_LABEL,
    LEGACY_SUPERVISED_LABEL, SERVICE_ID_LABEL, SERVICE_NAME_LABEL, SUPERVISED_LABEL, UNKNOWN_APP,
    UNKNOWN_RELEASE, UNREADABLE_CONFIG_LABEL,
};
use crate::model::compose::{NetworkAttachment, RestartPolicy, RestartPolicyName, ServiceConfig};
use crate::model::device::Container;

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
