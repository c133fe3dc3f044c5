//! HostActor owns everything that touches the host OS over the system bus (zbus).
//! Owns: the bus connection, the host config files (config.rs), host OS updates (hup.rs: the
//! host release records, the install in flight, its retry timer) and the `bus` and `host_os`
//! capabilities.
//! Handles: Power (reboot, power-off through logind), GetHostConfig, PatchHostConfig
//! (hostname, proxy; units restarted through systemd); whatever stops or reconfigures the
//! host is refused while update locks are held unless forced. Targets from the TargetBus (a
//! watch stream, only with a host OS version): the host part is sought (spec §9).
//! Sends: capability changes on the CapsBus; the host state (`CurrentState::host`) on the
//! StateBus.
//! Restart: reconnects to the bus after the restart backoff; re-reads the records and seeks
//! the latest target's host part again (an install cut short counted its attempt).
//!
//! Power (`/v1/reboot`, `/v1/shutdown`, and the reboot breadcrumb of seek/reboot.rs): refused
//! (the API answers 500 with the reason) without logind on the bus. Otherwise it takes and
//! keeps the update locks of every app on the device (`Locks::keep`; a user lock refuses with
//! 423 unless forced), answers, and one second later flushes the store and calls
//! `org.freedesktop.login1.Manager.Reboot`/`PowerOff` (non-interactive). Kept locks survive an
//! apply ending meanwhile (its `release_all` leaves them); keeps are counted, so an OS update
//! keeping the same locks is not disturbed; an apply that holds them keeps them after the
//! host operation ends. If logind then fails, the locks are given back.
//!
//! Host config (`GET`/`PATCH /v1/device/host-config`; the files and how balenaOS is recognised are
//! config.rs's): on balenaOS the hostname goes into config.json (the OS applies it, so no unit is
//! restarted for it) and the proxy into `system-proxy/`, after which the proxy-config unit
//! (`balena-proxy-config`, else `resin-proxy-config`) and `redsocks` are restarted through systemd,
//! each waited for until its `JobRemoved` (a result other than `done` is the error the API answers,
//! 503). On generic Linux the hostname goes through hostnamed (`SetStaticHostname`) and proxy
//! settings are refused (503): there is no redsocks to configure. An empty hostname resets to the
//! first 7 characters of the uuid. Everything is validated before any lock is taken or file
//! written; then every app's update lock is kept for the change (423 unless forced). Bus calls are
//! bounded (25 s per call, 90 s per unit job).
//!
//! Files: the actor (here), messages.rs, capability probing (probe.rs), power.rs, host config
//! handling (host_config.rs) and files (config.rs), host OS updates (updates.rs; records and the
//! install: hup.rs).
pub mod config;
mod host_config;
pub mod hup;
mod messages;
mod power;
mod probe;
mod updates;

use std::sync::Arc;
use std::time::Duration;

use actix::{AsyncContext, Context, SpawnHandle};
use tokio_stream::wrappers::WatchStream;

use crate::bus::{CapsBus, StateBus, TargetBus};
use crate::ports::dbus::Bus;
use crate::ports::engine::EngineSettings;
use crate::ports::locks::Locks;
use crate::ports::store::Store;
use crate::supervise::{Restarts, Resumable};

use probe::PROBE_MIN;

pub use crate::model::host::OsVersion;
pub use messages::{GetHostConfig, HostConfig, HostError, PatchHostConfig, Power};
pub use probe::{detect_os, OS_RELEASE};

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

/// Everything HostActor needs besides its settings.
#[derive(Clone)]
pub struct HostDeps {
    pub caps: CapsBus,
    pub state: StateBus,
    pub locks: Arc<Locks>,
    pub store: Store,
    /// Targets: their host part (host OS updates).
    pub targets: TargetBus,
    /// The engine the updater image is pulled with.
    pub engine: EngineSettings,
    /// Pause before a failed or waiting host OS install is tried again (the apply loop's
    /// local retry interval).
    pub retry_interval: Duration,
}

pub struct HostActor {
    settings: HostSettings,
    deps: HostDeps,
    restarts: Restarts,
    bus: Option<Bus>,
    /// Whether bus changes are being watched.
    watching: bool,
    probe_backoff: Duration,
    /// The next probe while something is missing (one at a time).
    probe_next: Option<SpawnHandle>,
    hup: Hup,
}

/// Host OS update bookkeeping of the actor (the records themselves live in the store).
#[derive(Default)]
struct Hup {
    /// The host part of the latest target; None before any.
    want: Option<hup::HostWant>,
    /// Its target sequence number and `force` flag.
    seq: u64,
    force: bool,
    /// An install runs (its end evaluates again).
    running: bool,
    /// The next evaluation (retry, wait, attempts reset).
    timer: Option<SpawnHandle>,
    /// The wait reason last logged at WARN (repeats go to DEBUG).
    waiting: Option<String>,
    /// Apps whose update locks the running install keeps.
    locked: Vec<String>,
    /// The last evaluation waited for something: a capability change looks again at once.
    wants_caps: bool,
    /// The bus was probed once (before, a missing systemd is expected, not worth a WARN).
    probed: bool,
    /// The apps of the latest target: their locks are held too, even before they exist.
    target_apps: Vec<String>,
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
            probe_next: None,
            hup: Hup::default(),
        }
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
        self.probe_next = None;
        // An install cut short by the restart keeps no lock.
        for a in std::mem::take(&mut self.hup.locked) {
            self.deps.locks.unkeep(&a);
        }
        self.hup = Hup::default();
        if self.settings.os_version.is_some() {
            // The watch stream yields the latest target first.
            ctx.add_stream(WatchStream::new(self.deps.targets.subscribe()));
            // A waiting install looks again as soon as the bus or the engine changes.
            ctx.add_stream(WatchStream::new(self.deps.caps.subscribe()));
            self.evaluate(ctx);
        }
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

    /// Takes and keeps the update locks of every app on the device (as the legacy supervisor
    /// does), so an apply ending meanwhile cannot release them (`Locks::keep`); the caller
    /// unkeeps each returned app when done. With `target_apps`, also the apps of the host
    /// target that are not on the device yet. On a user lock, gives back what it took and
    /// says which.
    fn keep_all_locks(
        &self,
        force: bool,
        target_apps: bool,
    ) -> Result<Vec<String>, (String, String)> {
        let locks = &self.deps.locks;
        let mut apps: Vec<String> = self.deps.state.get().model.apps.keys().cloned().collect();
        if target_apps {
            apps.extend(self.hup.target_apps.iter().cloned());
            apps.sort();
            apps.dedup();
        }
        for (i, app) in apps.iter().enumerate() {
            if let Err(e) = locks.keep(app, force) {
                for a in &apps[..i] {
                    locks.unkeep(a);
                }
                return Err((app.clone(), e.to_string()));
            }
        }
        Ok(apps)
    }
}

#[cfg(test)]
mod tests;
