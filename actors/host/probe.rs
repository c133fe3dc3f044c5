//! Capability probing: the host OS and the runtime dir at start, the bus and its host services
//! (login1, systemd1, hostname1) with backoff while something is missing, and bus changes.
use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use futures::StreamExt;
use log::{info, warn};

use crate::ports::dbus::Bus;
use crate::ErrorChain;

use super::{HostActor, OsVersion};

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

pub(super) const PROBE_MIN: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(60);

impl HostActor {
    pub(super) fn probe(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.probe_next.take() {
            ctx.cancel_future(h);
        }
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
            act.hup.probed = true;
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
            if let Some(h) = act.probe_next.take() {
                ctx.cancel_future(h);
            }
            act.probe_next = Some(ctx.run_later(delay, |a, ctx| {
                a.probe_next = None;
                a.probe(ctx);
            }));
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

    pub(super) fn probe_host(&mut self) {
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
