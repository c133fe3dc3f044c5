//! HostActor owns everything that touches the host OS over the system bus (zbus).
//! Owns: the bus connection and the `bus` and `host_os` capabilities.
//! Handles: Power (reboot, power-off through logind, refused while update locks are held
//! unless forced).
//! Sends: capability changes on the CapsBus.
//! Restart: reconnects to the bus after the restart backoff.
use std::time::Duration;

use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use log::{info, warn};

use crate::bus::{CapsBus, StateBus};
use crate::ports::dbus::{Bus, PowerAction};
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
#[rtype(result = "Result<(), PowerError>")]
pub struct Power {
    pub action: PowerAction,
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Unavailable(String),
}

/// How long after answering the API the reboot or power-off is asked for.
const POWER_DELAY: Duration = Duration::from_secs(1);

pub struct HostActor {
    settings: HostSettings,
    deps: HostDeps,
    restarts: Restarts,
    bus: Option<Bus>,
    probe_backoff: Duration,
}

impl HostActor {
    pub fn new(settings: HostSettings, deps: HostDeps, restarts: Restarts) -> Self {
        HostActor {
            settings,
            deps,
            restarts,
            bus: None,
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
                    if act.deps.caps.update(|c| c.bus = Some(info.clone())) {
                        info!(capability = "dbus", address:% = info.address, login1 = info.login1,
                            systemd1 = info.systemd1, hostname1 = info.hostname1,
                            decision = "found"; "Capability found");
                    }
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

impl Resumable for HostActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, ctx: &mut Context<Self>) {
        self.bus = None;
        self.probe_backoff = PROBE_MIN;
        match &self.settings.os_version {
            Some(os) => {
                info!(capability = "host_os", os:% = os, decision = "found"; "Capability found")
            }
            None => info!(capability = "host_os", decision = "missing",
                reason = "no host OS version configured: generic Linux, no host OS updates"; "Capability missing"),
        }
        self.probe(ctx);
    }
}

crate::supervised_actor!(HostActor);

impl Handler<Power> for HostActor {
    type Result = Result<(), PowerError>;

    fn handle(&mut self, msg: Power, ctx: &mut Context<Self>) -> Self::Result {
        let bus = match (&self.bus, self.deps.caps.get().bus) {
            (Some(b), Some(info)) if info.login1 => b.clone(),
            _ => {
                warn!(action:? = msg.action, decision = "refuse",
                    reason = "org.freedesktop.login1 is not on the system bus"; "Power action refused");
                return Err(PowerError::Unavailable(
                    "org.freedesktop.login1 is not available on the system bus".into(),
                ));
            }
        };
        // Every app on the device, as the legacy supervisor does.
        let apps: Vec<String> = self.deps.state.get().model.apps.keys().cloned().collect();
        for app in &apps {
            if let Err(e) = self.deps.locks.take(app, msg.force) {
                self.deps.locks.release_all();
                warn!(action:? = msg.action, app:% = app, error:% = e, decision = "refuse",
                    reason = "update locks held"; "Power action refused");
                return Err(PowerError::Locked(e.to_string()));
            }
        }
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
