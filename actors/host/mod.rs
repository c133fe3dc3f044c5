//! HostActor owns everything that touches the host OS over the system bus (zbus).
//! Owns: the bus connection, the host config files (config.rs) and the `bus` and `host_os`
//! capabilities.
//! Handles: Power (reboot, power-off through logind), GetHostConfig, PatchHostConfig
//! (hostname, proxy; units restarted through systemd); whatever stops or reconfigures the
//! host is refused while update locks are held unless forced.
//! Sends: capability changes on the CapsBus.
//! Restart: reconnects to the bus after the restart backoff.
pub mod config;

use std::time::Duration;

use serde_json::{Map, Value};

use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use futures::StreamExt;
use log::{info, warn};

use crate::bus::{CapsBus, StateBus};
use crate::ports::dbus::{Bus, BusError, PowerAction, UnitAction};
use crate::ports::locks::Locks;
use crate::ports::store::Store;
use crate::supervise::{Restarts, Resumable};
use crate::ErrorChain;

/// The host OS as configured: `"<name> <version>[@<build>]"` (spec/helios-api-v3.md §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsVersion {
    pub name: String,
    pub version: String,
    pub build: Option<String>,
}

impl OsVersion {
    pub fn parse(v: &str) -> Result<OsVersion, String> {
        let v = v.trim();
        let (name, rest) = v
            .rsplit_once(' ')
            .ok_or_else(|| "expected \"<name> <version>[@<build>]\"".to_string())?;
        let (version, build) = match rest.split_once('@') {
            Some((ver, b)) => (ver, Some(b)),
            None => (rest, None),
        };
        if name.trim().is_empty() || version.is_empty() || build.is_some_and(str::is_empty) {
            return Err("expected \"<name> <version>[@<build>]\"".into());
        }
        Ok(OsVersion {
            name: name.trim().to_string(),
            version: version.to_string(),
            build: build.map(str::to_string),
        })
    }
}

impl std::fmt::Display for OsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.version)?;
        if let Some(b) = &self.build {
            write!(f, "@{b}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostSettings {
    pub os_version: Option<OsVersion>,
    /// The runtime dir as this process sees it (locks, breadcrumbs).
    pub runtime_dir: std::path::PathBuf,
    /// The same dir as the host and the engine see it (bind-mount sources).
    pub host_runtime_dir: std::path::PathBuf,
    pub dbus_address: String,
    /// balenaOS's config.json and boot partition (absent on generic Linux).
    pub boot: config::BootFiles,
    /// The device uuid: an empty hostname resets to its first 7 characters.
    pub uuid: String,
}

/// Where the OS describes itself.
pub const OS_RELEASE: &str = "/etc/os-release";

/// balenaOS when a host OS version is configured (the container entrypoint's contract) or
/// os-release says `ID=balena-os`; generic Linux otherwise.
pub fn detect_os(configured: Option<&OsVersion>, os_release: Option<&str>) -> crate::model::OsInfo {
    let field = |k: &str| {
        os_release?.lines().find_map(|l| {
            let v = l.strip_prefix(k)?.strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
    };
    let balena = configured.is_some_and(|o| o.name.to_ascii_lowercase().contains("balena"))
        || field("ID").is_some_and(|id| id == "balena-os");
    crate::model::OsInfo {
        kind: if balena { "balenaOS" } else { "generic Linux" }.into(),
        name: configured
            .map(|o| o.to_string())
            .or_else(|| field("PRETTY_NAME")),
    }
}

/// Whether a file can be created in `dir` (created if missing).
fn writable(dir: &std::path::Path) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(dir)?;
    tempfile_in(dir)
}

fn tempfile_in(dir: &std::path::Path) -> Result<(), std::io::Error> {
    let p = dir.join(format!(".helios-probe-{}", std::process::id()));
    std::fs::write(&p, b"")?;
    std::fs::remove_file(&p)
}

const PROBE_MIN: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(60);

/// Everything HostActor needs besides its settings.
#[derive(Clone)]
pub struct HostDeps {
    pub caps: CapsBus,
    pub state: StateBus,
    pub locks: Arc<Locks>,
    pub store: Store,
}

/// Sent by the API (`POST /v1/reboot`, `POST /v1/shutdown`): take every app's update lock,
/// answer, then (after the API replied and the store is flushed) ask logind.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct Power {
    pub action: PowerAction,
    pub force: bool,
}

/// Sent by the API (`GET /v1/device/host-config`).
#[derive(Debug, Message)]
#[rtype(result = "Result<HostConfig, HostError>")]
pub struct GetHostConfig;

/// The host config as `/v1/device/host-config` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    pub hostname: String,
    /// Present only when a proxy is configured.
    pub proxy: Option<Map<String, Value>>,
}

/// Sent by the API (`PATCH /v1/device/host-config`): change what is given, holding every
/// app's update locks.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct PatchHostConfig {
    /// Empty resets to the first 7 characters of the uuid.
    pub hostname: Option<String>,
    /// Merged field by field over the current proxy; empty removes it.
    pub proxy: Option<Map<String, Value>>,
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A user holds an update lock.
    #[error("{0}")]
    Locked(String),
    /// What the request needs is not on this host (no bus service, not balenaOS).
    #[error("{0}")]
    Unavailable(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The host refused or failed (a bus call, a failed job, a file).
    #[error("{0}")]
    Failed(String),
}

/// How long a unit job may take before its restart is an error.
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// How long after answering the API the reboot or power-off is asked for.
const POWER_DELAY: Duration = Duration::from_secs(1);

pub struct HostActor {
    settings: HostSettings,
    deps: HostDeps,
    restarts: Restarts,
    bus: Option<Bus>,
    /// Whether bus changes are being watched.
    watching: bool,
    probe_backoff: Duration,
}

impl HostActor {
    pub fn new(settings: HostSettings, deps: HostDeps, restarts: Restarts) -> Self {
        HostActor {
            settings,
            deps,
            restarts,
            bus: None,
            watching: false,
            probe_backoff: PROBE_MIN,
        }
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        let address = self.settings.dbus_address.clone();
        let existing = self.bus.clone();
        let fut = async move {
            let bus = match existing {
                Some(b) => b,
                None => Bus::connect(&address).await?,
            };
            let info = bus.probe().await?;
            Ok::<_, crate::ports::dbus::BusError>((bus, info))
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            match res {
                Ok((bus, info)) => {
                    act.bus = Some(bus);
                    let complete = info.login1 && info.systemd1 && info.hostname1;
                    let before = act.deps.caps.get().bus;
                    if act.deps.caps.update(|c| c.bus = Some(info.clone())) {
                        let lost = before.is_some_and(|b| {
                            (b.login1 && !info.login1)
                                || (b.systemd1 && !info.systemd1)
                                || (b.hostname1 && !info.hostname1)
                        });
                        let decision = if lost { "lost" } else { "found" };
                        info!(capability = "dbus", address:% = info.address, login1 = info.login1,
                            systemd1 = info.systemd1, hostname1 = info.hostname1,
                            decision; "Capability changed");
                    }
                    act.watch_bus(ctx);
                    if complete {
                        act.probe_backoff = PROBE_MIN;
                        return;
                    }
                }
                Err(e) => {
                    act.bus = None;
                    if act.deps.caps.update(|c| c.bus = None) || act.probe_backoff == PROBE_MIN {
                        warn!(capability = "dbus", address:% = act.settings.dbus_address,
                            error:% = ErrorChain(&e), decision = "missing"; "Capability missing");
                    }
                }
            }
            // Something is missing: look again later, backing off.
            let delay = act.probe_backoff;
            act.probe_backoff = (act.probe_backoff * 2).min(PROBE_MAX);
            ctx.run_later(delay, |a, ctx| a.probe(ctx));
        }));
    }
}

/// A host service appeared on or left the bus, or the bus connection closed.
struct BusChanged;

impl HostActor {
    /// Watches the bus for host services coming and going (`NameOwnerChanged`), and for the
    /// connection closing: event-driven, nothing wakes while nothing changes.
    fn watch_bus(&mut self, ctx: &mut Context<Self>) {
        if self.watching {
            return;
        }
        let Some(bus) = self.bus.clone() else { return };
        self.watching = true;
        let fut = async move { bus.watch_names().await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(stream) => {
                ctx.add_stream(stream.map(|_| BusChanged));
            }
            Err(e) => {
                act.watching = false;
                warn!(capability = "dbus", error:% = ErrorChain(&e), decision = "continue",
                    reason = "cannot watch the bus for changes"; "Bus watch failed");
            }
        }));
    }

    fn probe_host(&mut self) {
        let os = detect_os(
            self.settings.os_version.as_ref(),
            std::fs::read_to_string(OS_RELEASE).ok().as_deref(),
        );
        info!(capability = "host_os", kind:% = os.kind, name = os.name.as_deref().unwrap_or("unknown"),
            os_updates = self.settings.os_version.is_some(), decision = "found"; "Capability found");
        let dir = &self.settings.runtime_dir;
        let ok = match writable(dir) {
            Ok(()) => {
                info!(capability = "runtime_dir", path:% = dir.display(), decision = "found"; "Capability found");
                true
            }
            Err(e) => {
                warn!(capability = "runtime_dir", path:% = dir.display(), error:% = e, decision = "missing",
                    reason = "not writable: update locks and breadcrumbs fail"; "Capability missing");
                false
            }
        };
        let info = crate::model::RuntimeDirInfo {
            path: dir.display().to_string(),
            writable: ok,
        };
        self.deps.caps.update(|c| {
            c.os = os;
            c.runtime_dir = Some(info);
        });
    }
}

impl actix::StreamHandler<BusChanged> for HostActor {
    fn handle(&mut self, _: BusChanged, ctx: &mut Context<Self>) {
        self.probe_backoff = PROBE_MIN;
        self.probe(ctx);
    }

    /// The connection closed: the bus is lost until a probe finds it again.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.watching = false;
        self.bus = None;
        if self.deps.caps.update(|c| c.bus = None) {
            warn!(capability = "dbus", address:% = self.settings.dbus_address, decision = "lost",
                reason = "the bus connection closed"; "Capability lost");
        }
        self.probe_backoff = PROBE_MIN;
        self.probe(ctx);
    }
}

impl Resumable for HostActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, ctx: &mut Context<Self>) {
        self.bus = None;
        self.watching = false;
        self.probe_backoff = PROBE_MIN;
        self.probe_host();
        self.probe(ctx);
    }
}

crate::supervised_actor!(HostActor);

impl HostActor {
    /// The bus, if it offers `service` (e.g. `login1`).
    fn bus_with(&self, service: &str) -> Option<Bus> {
        let info = self.deps.caps.get().bus?;
        let has = match service {
            "login1" => info.login1,
            "systemd1" => info.systemd1,
            "hostname1" => info.hostname1,
            _ => false,
        };
        has.then(|| self.bus.clone()).flatten()
    }

    /// Takes the update locks of every app on the device (as the legacy supervisor does);
    /// on a user lock, releases what it took and says which.
    fn lock_all(&self, force: bool) -> Result<Vec<String>, (String, String)> {
        let apps: Vec<String> = self.deps.state.get().model.apps.keys().cloned().collect();
        for (i, app) in apps.iter().enumerate() {
            if let Err(e) = self.deps.locks.take(app, force) {
                for a in &apps[..i] {
                    self.deps.locks.release(a);
                }
                return Err((app.clone(), e.to_string()));
            }
        }
        Ok(apps)
    }
}

impl Handler<Power> for HostActor {
    type Result = Result<(), HostError>;

    fn handle(&mut self, msg: Power, ctx: &mut Context<Self>) -> Self::Result {
        let Some(bus) = self.bus_with("login1") else {
            warn!(action:? = msg.action, decision = "refuse",
                reason = "org.freedesktop.login1 is not on the system bus"; "Power action refused");
            return Err(HostError::Unavailable(
                "org.freedesktop.login1 is not available on the system bus".into(),
            ));
        };
        let apps = match self.lock_all(msg.force) {
            Ok(apps) => apps,
            Err((app, e)) => {
                warn!(action:? = msg.action, app:% = app, error:% = e, decision = "refuse",
                    reason = "update locks held"; "Power action refused");
                return Err(HostError::Locked(e));
            }
        };
        info!(action:? = msg.action, force = msg.force, apps = apps.len(), delay_ms = POWER_DELAY.as_millis() as u64,
            decision = "power", reason = "device API request"; "Power action accepted");
        let store = self.deps.store.clone();
        let locks = self.deps.locks.clone();
        ctx.run_later(POWER_DELAY, move |act, ctx| {
            if let Err(e) = store.flush() {
                warn!(error:% = ErrorChain(&e), decision = "continue"; "Store flush before power action failed");
            }
            let action = msg.action;
            ctx.spawn(async move { bus.power(action).await }.into_actor(act).map(move |res, _, _| {
                match res {
                    Ok(()) => info!(action:? = action, decision = "done"; "Power action requested from logind"),
                    Err(e) => {
                        locks.release_all();
                        warn!(action:? = action, error:% = ErrorChain(&e), decision = "abort"; "Power action failed");
                    }
                }
            }));
        });
        Ok(())
    }
}

impl Handler<GetHostConfig> for HostActor {
    type Result = actix::ResponseFuture<Result<HostConfig, HostError>>;

    fn handle(&mut self, _: GetHostConfig, _: &mut Context<Self>) -> Self::Result {
        let (boot, uuid) = (self.settings.boot.clone(), self.settings.uuid.clone());
        let hostnamed = self.bus_with("hostname1");
        Box::pin(async move {
            let failed = |e: &(dyn std::error::Error + 'static)| {
                HostError::Failed(ErrorChain(e).to_string())
            };
            let (hostname, proxy) = if boot.present() {
                let doc = boot.read_config_json().map_err(|e| failed(&e))?;
                let hostname = match doc.get("hostname").and_then(Value::as_str) {
                    Some(h) if !h.is_empty() => h.to_string(),
                    _ => short_uuid(&uuid),
                };
                (hostname, boot.read_proxy().map_err(|e| failed(&e))?)
            } else {
                let hostname = match hostnamed {
                    Some(bus) => bus.static_hostname().await.map_err(|e| failed(&e))?,
                    None => std::fs::read_to_string("/etc/hostname")
                        .map(|h| h.trim().to_string())
                        .map_err(|e| failed(&e))?,
                };
                (hostname, None)
            };
            Ok(HostConfig { hostname, proxy })
        })
    }
}

fn short_uuid(uuid: &str) -> String {
    uuid.chars().take(7).collect()
}

impl Handler<PatchHostConfig> for HostActor {
    type Result = actix::ResponseFuture<Result<(), HostError>>;

    fn handle(&mut self, msg: PatchHostConfig, _: &mut Context<Self>) -> Self::Result {
        let boot = self.settings.boot.clone();
        let balena_os = boot.present();
        let hostname = msg.hostname.map(|h| match h.is_empty() {
            true => short_uuid(&self.settings.uuid),
            false => h,
        });
        // Everything is checked before anything is locked or written.
        let checked = (|| {
            if let Some(h) = &hostname {
                if h.len() > 64
                    || !h
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    return Err(HostError::Invalid(format!(
                        "invalid hostname {h:?}: letters, digits, '-' and '.' only, at most 64"
                    )));
                }
            }
            let hostnamed = match (&hostname, balena_os) {
                (Some(_), false) => Some(self.bus_with("hostname1").ok_or_else(|| {
                    HostError::Unavailable(
                        "cannot set the hostname: no balenaOS config.json and org.freedesktop.hostname1 is not on the system bus".into(),
                    )
                })?),
                _ => None,
            };
            let systemd = match &msg.proxy {
                None => None,
                Some(_) if !balena_os => {
                    return Err(HostError::Unavailable(
                        "proxy settings need balenaOS (no config.json in the boot partition)"
                            .into(),
                    ))
                }
                Some(patch) => {
                    let current = boot
                        .read_proxy()
                        .map_err(|e| HostError::Failed(ErrorChain(&e).to_string()))?;
                    config::merge_proxy(current, patch)
                        .map_err(|e| HostError::Invalid(e.to_string()))?;
                    Some(self.bus_with("systemd1").ok_or_else(|| {
                        HostError::Unavailable(
                            "cannot restart the proxy: org.freedesktop.systemd1 is not on the system bus".into(),
                        )
                    })?)
                }
            };
            Ok((hostnamed, systemd))
        })();
        let (hostnamed, systemd) = match checked {
            Ok(x) => x,
            Err(e) => {
                warn!(error:% = e, decision = "refuse", reason = "bad or unsupported host config"; "Host config refused");
                return Box::pin(async move { Err(e) });
            }
        };
        let apps = match self.lock_all(msg.force) {
            Ok(apps) => apps,
            Err((app, e)) => {
                warn!(app:% = app, error:% = e, decision = "refuse", reason = "update locks held"; "Host config refused");
                return Box::pin(async move { Err(HostError::Locked(e)) });
            }
        };
        let locks = self.deps.locks.clone();
        let proxy = msg.proxy;
        Box::pin(async move {
            let res = patch_host_config(&boot, hostname, hostnamed, proxy, systemd).await;
            for a in &apps {
                locks.release(a);
            }
            if let Err(e) = &res {
                warn!(error:% = e, decision = "abort", reason = "the host refused the change"; "Host config failed");
            }
            res
        })
    }
}

/// Applies a checked host-config patch: hostname first, then the proxy files and units.
async fn patch_host_config(
    boot: &config::BootFiles,
    hostname: Option<String>,
    hostnamed: Option<Bus>,
    proxy: Option<Map<String, Value>>,
    systemd: Option<Bus>,
) -> Result<(), HostError> {
    let failed =
        |e: &(dyn std::error::Error + 'static)| HostError::Failed(ErrorChain(e).to_string());
    if let Some(h) = hostname {
        match hostnamed {
            Some(bus) => {
                bus.set_static_hostname(&h).await.map_err(|e| failed(&e))?;
                info!(hostname:% = h, decision = "set_hostname", reason = "device API request, generic Linux: hostnamed";
                    "Hostname set");
            }
            None => {
                boot.write_hostname(&h).map_err(|e| failed(&e))?;
                info!(hostname:% = h, decision = "set_hostname",
                    reason = "device API request, balenaOS: config.json, applied by the OS"; "Hostname set");
            }
        }
    }
    if let (Some(patch), Some(bus)) = (proxy, systemd) {
        let now = boot.patch_proxy(&patch).map_err(|e| failed(&e))?;
        let (kind, ip) = now
            .as_ref()
            .map(|p| (p.get("type").cloned(), p.get("ip").cloned()))
            .unwrap_or_default();
        info!(proxy_type:? = kind, proxy_ip:? = ip, decision = "set_proxy", reason = "device API request";
            "Proxy configured");
        // The proxy config unit has had two names; the first one that exists is restarted.
        let mut restarted = false;
        for unit in config::PROXY_CONFIG_UNITS {
            match bus.unit(UnitAction::Restart, unit, JOB_TIMEOUT).await {
                Ok(()) => {
                    restarted = true;
                    break;
                }
                Err(BusError::NoSuchUnit { .. }) => continue,
                Err(e) => return Err(failed(&e)),
            }
        }
        bus.unit(UnitAction::Restart, config::REDSOCKS_UNIT, JOB_TIMEOUT)
            .await
            .map_err(|e| failed(&e))?;
        info!(units = if restarted { 2 } else { 1 }, decision = "restart_units", reason = "the proxy changed";
            "Proxy units restarted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_os_versions() {
        assert_eq!(
            OsVersion::parse("balenaOS 6.0.39@test-board-rev-000"),
            Ok(OsVersion {
                name: "balenaOS".into(),
                version: "6.0.39".into(),
                build: Some("test-board-rev-000".into())
            })
        );
        assert_eq!(
            OsVersion::parse("balena OS 2.1").map(|o| (o.name, o.version, o.build)),
            Ok(("balena OS".into(), "2.1".into(), None))
        );
        assert!(OsVersion::parse("balenaOS").is_err());
        assert!(OsVersion::parse("balenaOS 6.0@").is_err());
        assert_eq!(
            OsVersion::parse("balenaOS 6.0.39@b").unwrap().to_string(),
            "balenaOS 6.0.39@b"
        );
    }
}
