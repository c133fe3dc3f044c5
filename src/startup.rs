//! Startup wiring: opens the store, builds the buses, starts the five actors under
//! `actix::Supervisor`, binds the API, then waits for a stop signal or an escalation and shuts
//! down in order (API, store flush). This is the only place that knows every actor.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::Supervisor;
use log::{error, info, warn};
use tokio::sync::mpsc;

use helios_actors::bus::RemoteBus;
use helios_actors::bus::{CapsBus, StateBus, TargetBus};
use helios_actors::host::{HostActor, HostDeps};
use helios_actors::model::RemoteInfo;
use helios_actors::model::{
    Capabilities, CurrentState, DeviceState, LegacyCapability, RemoteCapability, UpdateStatus,
};
use helios_actors::poll::register::Identity;
use helios_actors::poll::{IdentitySink, PollActor, PollDeps, Provisioning};
use helios_actors::ports::apikeys::{ApiKeys, GlobalKeySink, SupervisorApi};
use helios_actors::ports::locks::Locks;
use helios_actors::ports::store::{Opened, Store, StoreError};
use helios_actors::proxy::{
    ForeignApps, ProxyActor, ProxyDeps, ProxyHandle, ProxySettings, RoutingBus,
};
use helios_actors::report::body::DeviceFields;
use helios_actors::report::{ReportActor, ReportDeps};
use helios_actors::seek::{SeekActor, SeekDeps};
use helios_actors::supervise::{Fatal, Restarts};
use helios_actors::{ErrorChain, Secret};

use crate::api::{self, ApiState, ListenAddr};
use crate::config::{self, Config, Layer, RemoteMode};
use crate::exit::ExitCode;

/// How often, and how far apart, an API address found in use is tried (10 s in all).
const BIND_ATTEMPTS: u32 = 20;
const BIND_RETRY: Duration = Duration::from_millis(500);

/// Runs the agent until `shutdown` resolves or an actor escalates. `on_listen` is told the
/// bound API addresses (tests use port 0).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_listen: impl FnOnce(&[ListenAddr]),
) -> ExitCode {
    info!(version:% = crate::version::VERSION, commit:% = crate::version::GIT_COMMIT,
        built:% = crate::version::build_time(), decision = "start"; "helios starting");
    info!(path:% = config.config_path.display(), decision = "config"; "Config file");
    info!(uuid:% = config.uuid, decision = "identity",
        reason = if config.uuid_generated { "generated" } else { "configured" }; "Device identity");
    persist_generated(&config);
    for key in &config.ignored_identity {
        warn!(key:% = key, decision = "ignore", reason = "a stored identity takes precedence (spec §5.4)";
            "Configured identity value ignored");
    }

    let (store, opened) = match Store::open(&config.store.dir, config.store.cache_capacity) {
        Ok(s) => s,
        Err(e) => {
            error!(path:% = config.store.dir.display(), error:% = ErrorChain(&e),
                decision = "exit"; "Store cannot be created");
            return ExitCode::Startup;
        }
    };
    if let Opened::Recovered { moved_to, reason } = &opened {
        warn!(moved_to:% = moved_to.display(), reason:% = reason, decision = "rebuild";
            "Store was unreadable; rebuilding from the engine and the next target");
    }
    let targets = match TargetBus::new(store.clone()) {
        Ok(t) => t,
        Err(e) => {
            error!(error:% = ErrorChain(&e), decision = "exit"; "Store unreadable after open");
            return ExitCode::Startup;
        }
    };

    let keys = match device_api_keys(&config, &store) {
        Ok(k) => k,
        Err(e) => {
            error!(error:% = ErrorChain(&e), decision = "exit"; "Store unreadable after open");
            return ExitCode::Startup;
        }
    };
    let supervisor_api = SupervisorApi::new(keys.clone());

    let caps = CapsBus::new(initial_caps(&config));
    log_configured_caps(&caps.get(), &config);
    // With a stored target, the device is not known to be on it until Seek has checked.
    let status = match targets.latest() {
        Some(_) => UpdateStatus::ApplyingChanges,
        None => UpdateStatus::Done,
    };
    // What an earlier process last knew, unconfirmed until Seek reads the engine.
    let (device, model) = StateBus::restore(&store, &config.uuid).unwrap_or_else(|| {
        let device = DeviceState {
            uuid: config.uuid.clone(),
            ..Default::default()
        };
        (device, Default::default())
    });
    let state = StateBus::new(CurrentState {
        status,
        device,
        model,
        ..Default::default()
    });
    actix::spawn(state.clone().persist(store.clone()));

    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<Fatal>();
    let restarts = |actor| Restarts::new(actor, config.supervision.clone(), fatal_tx.clone());

    // Keep the addresses: a Supervisor restarts its actor only while an address is alive.
    let locks = Arc::new(Locks::new(&config.host.runtime_dir));
    // In front of a legacy supervisor: Seek leaves its apps alone and says which they are.
    let foreign = config.legacy.as_ref().map(|_| ForeignApps::new(None));
    let routing = RoutingBus::new(None);
    let host = {
        let deps = HostDeps {
            caps: caps.clone(),
            state: state.clone(),
            locks: locks.clone(),
            store: store.clone(),
            targets: targets.clone(),
            engine: config.engine.clone(),
            retry_interval: config.seek.local_retry_interval,
        };
        let (h, r) = (config.host.clone(), restarts("host"));
        Supervisor::start(move |_| HostActor::new(h, deps, r))
    };
    let seek = {
        let deps = SeekDeps {
            settings: config.seek.clone(),
            engine: config.engine.clone(),
            device_uuid: config.uuid.clone(),
            host_os: config.host.os_version.clone(),
            host_runtime_dir: config.host.host_runtime_dir.clone(),
            runtime_dir: config.host.runtime_dir.clone(),
            host_power: host.clone().recipient(),
            locks: locks.clone(),
            store: store.clone(),
            targets: targets.clone(),
            state: state.clone(),
            caps: caps.clone(),
            supervisor_api: supervisor_api.clone(),
            foreign: foreign.clone(),
        };
        let r = restarts("seek");
        Supervisor::start(move |_| SeekActor::new(deps, r))
    };
    let remote_bus = RemoteBus::new(RemoteInfo::default());
    let remote_settings = match &config.remote {
        RemoteMode::Unmanaged => None,
        RemoteMode::Managed(r) | RemoteMode::Provisioning { remote: r, .. } => Some(r.clone()),
    };
    let proxy_settings = config.legacy.as_ref().map(|l| ProxySettings {
        legacy_endpoint: l.endpoint.clone(),
        legacy_key: Secret::new(l.api_key.clone()),
        uuid: config.uuid.clone(),
        remote_endpoint: remote_settings.as_ref().map(|r| r.endpoint.clone()),
        request_timeout: upstream_timeout(&config),
        retry_interval: Duration::from_secs(5),
        status_interval: Duration::from_secs(1),
        status_timeout: Duration::from_secs(600),
    });
    let proxy = {
        let deps = ProxyDeps {
            settings: proxy_settings.clone(),
            routing: routing.clone(),
            state: state.clone(),
            store: store.clone(),
            remote_bus: remote_bus.clone(),
        };
        let r = restarts("proxy");
        Supervisor::start(move |_| ProxyActor::new(deps, r))
    };
    let poll = {
        let provisioning = match &config.remote {
            RemoteMode::Provisioning {
                provisioning: p, ..
            } => Some(Provisioning {
                key: Secret::new(p.key.clone()),
                fleet: p.fleet,
                device_type: p.device_type.clone(),
                os_version: p.os_version.clone(),
                supervisor_version: p.supervisor_version.clone(),
            }),
            _ => None,
        };
        let config_path = config.config_path.clone();
        let endpoint = remote_settings
            .as_ref()
            .map(|r| r.endpoint.clone())
            .unwrap_or_default();
        let identity: IdentitySink = Arc::new(move |id: &Identity| {
            config::save_identity(&config_path, &id.uuid, &endpoint, &id.api_key)
                .map_err(|e| e.to_string())?;
            info!(uuid:% = id.uuid, path:% = config_path.display(), decision = "persist",
                reason = "registered"; "Identity saved");
            Ok(())
        });
        let deps = PollDeps {
            remote: remote_settings.clone(),
            provisioning,
            extra_ca: config.extra_ca.clone(),
            max_target_bytes: config.max_target_bytes,
            targets: targets.clone(),
            state: state.clone(),
            remote_bus: remote_bus.clone(),
            caps: caps.clone(),
            store: store.clone(),
            reapply: seek.clone().recipient(),
            rejected: seek.clone().recipient(),
            identity,
            proxy: foreign.clone().map(|foreign| ProxyHandle {
                uuid: config.uuid.clone(),
                store: store.clone(),
                foreign,
                hand_off: proxy.clone().recipient(),
            }),
            runtime_dir: config.host.runtime_dir.clone(),
        };
        let r = restarts("poll");
        Supervisor::start(move |_| PollActor::new(deps, r))
    };
    let report = {
        let api_port = config
            .listen
            .iter()
            .find_map(|a| match a {
                ListenAddr::Tcp(s) => Some(s.port()),
                ListenAddr::Unix(_) => None,
            })
            .filter(|p| *p != 0)
            .unwrap_or(48484);
        let deps = ReportDeps {
            remote: remote_settings.clone(),
            extra_ca: config.extra_ca.clone(),
            min_interval: config.report_min_interval,
            fields: DeviceFields {
                // In front of a legacy supervisor, its own version stays what the cloud sees.
                supervisor_version: config
                    .legacy
                    .is_none()
                    .then(|| crate::version::VERSION.to_string()),
                api_port,
                os_version: config
                    .host
                    .os_version
                    .as_ref()
                    .map(|o| format!("{} {}", o.name, o.version)),
            },
            data_path: config.store.dir.clone(),
            state: state.clone(),
            remote_bus: remote_bus.clone(),
            store: store.clone(),
            // In front of a legacy supervisor, its key stays the one the cloud uses.
            keys: config.legacy.is_none().then(|| keys.clone()),
        };
        let r = restarts("report");
        Supervisor::start(move |_| ReportActor::new(deps, r))
    };
    let api_state = ApiState {
        targets,
        state,
        caps,
        seek_plan: seek.clone().recipient(),
        seek_reapply: seek.clone().recipient(),
        seek_action: seek.clone().recipient(),
        host_power: host.clone().recipient(),
        host_config: host.clone().recipient(),
        host_config_patch: host.clone().recipient(),
        seek_cleanup: seek.clone().recipient(),
        poll: remote_settings.is_some().then(|| poll.clone().recipient()),
        report: remote_settings.is_some().then(|| report.clone()),
        remote: remote_bus.clone(),
        keys,
        store: store.clone(),
        managed: remote_settings.is_some(),
        device_type: config
            .device_type
            .clone()
            .or_else(|| config.host.boot.device_type()),
        proxy: proxy_settings.as_ref().map(|s| api::proxy::ProxyState {
            routing: routing.clone(),
            timeout: s.request_timeout,
            max_report_bytes: config.api_max_body_bytes,
            extra_ca: config.extra_ca.clone(),
        }),
        allowed_hosts: api::guard::AllowedHosts::new(
            config.api_allowed_hosts.as_deref(),
            &config.uuid,
        ),
    };
    let _actors = (seek, poll, report, proxy, host);
    // A TCP port in the ephemeral range (48484 is) can be held for a moment by a client
    // connection at boot: "in use" is retried for a while, anything else is final.
    let mut attempt = 0u32;
    let (server, bound) = loop {
        attempt += 1;
        match api::bind(
            &config.listen,
            api_state.clone(),
            config.api_workers,
            config.api_max_body_bytes,
        ) {
            Ok(s) => break s,
            Err(e) if e.in_use() && attempt < BIND_ATTEMPTS => {
                warn!(attempt, delay_ms = BIND_RETRY.as_millis() as u64, error:% = ErrorChain(&e),
                    decision = "retry", reason = "address in use"; "API cannot listen yet");
                tokio::time::sleep(BIND_RETRY).await;
            }
            Err(e) => {
                error!(attempt, error:% = ErrorChain(&e), decision = "exit"; "API cannot listen");
                return ExitCode::Startup;
            }
        }
    };
    if let Some(a) = bound.iter().find_map(|a| match a {
        ListenAddr::Tcp(a) => Some(*a),
        ListenAddr::Unix(_) => None,
    }) {
        supervisor_api.set_address(a);
    }
    on_listen(&bound);
    let handle = server.handle();
    actix::spawn(async move {
        if let Err(e) = server.await {
            error!(error:% = e, decision = "stop"; "API server failed");
        }
    });

    let code = tokio::select! {
        _ = shutdown => {
            info!(decision = "stop", reason = "signal"; "Shutting down");
            ExitCode::Ok
        }
        Some(f) = fatal_rx.recv() => {
            error!(actor = f.actor, reason:% = f.reason, decision = "exit"; "Escalated failure, exiting");
            ExitCode::Escalated
        }
    };
    // Stop accepting requests, let in-flight ones finish (bounded), then flush the store.
    if tokio::time::timeout(Duration::from_secs(3), handle.stop(true))
        .await
        .is_err()
    {
        warn!(decision = "stop", reason = "timeout"; "API did not stop in time");
    }
    for a in &bound {
        if let ListenAddr::Unix(p) = a {
            let _ = std::fs::remove_file(p);
        }
    }
    match store.flush() {
        Ok(()) => info!(decision = "stop"; "Store flushed"),
        Err(e) => error!(error:% = ErrorChain(&e), decision = "stop"; "Store flush failed"),
    }
    code
}

/// Timeout of one proxied request until the upstream's answer starts (the remote's request
/// timeout; bodies then stream without one).
fn upstream_timeout(config: &Config) -> Duration {
    match &config.remote {
        RemoteMode::Managed(r) | RemoteMode::Provisioning { remote: r, .. } => r.request_timeout,
        RemoteMode::Unmanaged => Duration::from_secs(59),
    }
}

fn initial_caps(config: &Config) -> Capabilities {
    Capabilities {
        remote: match config.remote {
            RemoteMode::Unmanaged => RemoteCapability::Unmanaged,
            RemoteMode::Managed(_) => RemoteCapability::Configured,
            RemoteMode::Provisioning { .. } => RemoteCapability::Provisioning,
        },
        legacy_supervisor: match config.legacy {
            None => LegacyCapability::NotConfigured,
            Some(_) => LegacyCapability::Configured,
        },
        host_os: config.host.os_version.as_ref().map(|o| o.to_string()),
        ..Default::default()
    }
}

fn log_configured_caps(caps: &Capabilities, config: &Config) {
    match &config.remote {
        RemoteMode::Unmanaged => info!(capability = "remote", decision = "missing",
            reason = "no remote endpoint configured: unmanaged mode"; "Capability missing"),
        RemoteMode::Managed(r) => info!(capability = "remote", endpoint:% = r.endpoint,
            uuid:% = r.uuid, decision = "found"; "Capability found"),
        RemoteMode::Provisioning { remote, .. } => info!(capability = "remote",
            endpoint:% = remote.endpoint, decision = "found", reason = "not registered yet"; "Capability found"),
    }
    match &config.legacy {
        None => info!(capability = "legacy_supervisor", decision = "missing",
            reason = "not configured"; "Capability missing"),
        Some(l) => info!(capability = "legacy_supervisor", endpoint:% = l.endpoint,
            decision = "found"; "Capability found"),
    }
    let _ = caps;
}

/// Saves a generated uuid to the config file so the device keeps its identity (containers get
/// it in their environment). A read-only config is logged, not fatal.
fn persist_generated(config: &Config) {
    if !config.uuid_generated {
        return;
    }
    let update = Layer {
        uuid: Some(config.uuid.clone()),
        ..Default::default()
    };
    match config::save_to_file(&config.config_path, &update) {
        Ok(()) => info!(uuid:% = config.uuid, path:% = config.config_path.display(),
            decision = "persist", reason = "uuid generated"; "Identity saved"),
        Err(e) => warn!(error:% = e, decision = "continue",
            reason = "the uuid will change at the next start"; "Identity not saved"),
    }
}

/// The device API keys (spec/device-api.md §2). There is always a global key: configured, or
/// generated at the first start and saved to the config file (managed or not), so that the
/// API's TCP listener, which always requires a key, can be used (`helios api-key` prints it).
/// On the unix socket keys are required only when managed (a remote is configured).
fn device_api_keys(config: &Config, store: &Store) -> Result<ApiKeys, StoreError> {
    let managed = !matches!(config.remote, RemoteMode::Unmanaged);
    let global = match global_device_api_key(config) {
        GlobalKey::Configured(k) => k,
        GlobalKey::Generated(k) => {
            info!(path:% = config.config_path.display(), decision = "persist",
                reason = "device API key generated"; "Device API key saved");
            k
        }
        GlobalKey::Unsaved(k, e) => {
            warn!(error:% = e, decision = "continue",
                reason = "a new key is generated at the next start"; "Device API key not saved");
            k
        }
    };
    let path = config.config_path.clone();
    let save: GlobalKeySink = Arc::new(move |k: &Secret| {
        save_device_api_key(&path, k).map_err(|e| e.to_string())?;
        info!(path:% = path.display(), decision = "persist", reason = "device API key regenerated";
            "Device API key saved");
        Ok(())
    });
    ApiKeys::open(store.clone(), Some(global), managed, save)
}

/// Where the global device API key comes from.
pub enum GlobalKey {
    /// `api.device_api_key`, `--device-api-key` or `HELIOS_DEVICE_API_KEY`.
    Configured(Secret),
    /// Generated now and saved to the config file.
    Generated(Secret),
    /// Generated now but not saved: it lasts until the process exits.
    Unsaved(Secret, config::ConfigError),
}

/// The global device API key of this configuration, generated and saved to the config file
/// (mode 0600) when there is none yet. Used by the daemon and by `helios api-key`.
pub fn global_device_api_key(config: &Config) -> GlobalKey {
    if let Some(k) = &config.device_api_key {
        return GlobalKey::Configured(k.clone());
    }
    let k = Secret::new(helios_actors::random_hex32());
    match save_device_api_key(&config.config_path, &k) {
        Ok(()) => GlobalKey::Generated(k),
        Err(e) => GlobalKey::Unsaved(k, e),
    }
}

/// Writes the global device API key to the config file (`api.device_api_key`, mode 0600). A key
/// given by flag or environment still wins over the file at the next start.
fn save_device_api_key(path: &std::path::Path, key: &Secret) -> Result<(), config::ConfigError> {
    let update = Layer {
        api: config::ApiLayer {
            device_api_key: Some(key.expose().to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    config::save_to_file(path, &update)
}
