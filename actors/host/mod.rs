//! HostActor owns everything that touches the host OS over the system bus (zbus).
//! Owns: the bus connection and the `bus` and `host_os` capabilities.
//! Handles: nothing yet (reboot, shutdown and unit control arrive with the host issue).
//! Sends: capability changes on the CapsBus.
//! Restart: reconnects to the bus after the restart backoff.
use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use log::{info, warn};

use crate::bus::CapsBus;
use crate::ports::dbus::Bus;
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

pub struct HostActor {
    settings: HostSettings,
    caps: CapsBus,
    restarts: Restarts,
    bus: Option<Bus>,
    probe_backoff: Duration,
}

impl HostActor {
    pub fn new(settings: HostSettings, caps: CapsBus, restarts: Restarts) -> Self {
        HostActor {
            settings,
            caps,
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
                    if act.caps.update(|c| c.bus = Some(info.clone())) {
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
                    if act.caps.update(|c| c.bus = None) || act.probe_backoff == PROBE_MIN {
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
