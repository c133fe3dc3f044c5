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
pub mod config;
pub mod hup;

use std::time::Duration;

use serde_json::{Map, Value};

use std::sync::Arc;

use actix::{
    ActorFutureExt, AsyncContext, Context, Handler, Message, SpawnHandle, StreamHandler, WrapFuture,
};
use futures::StreamExt;
use log::{debug, error, info, warn};
use tokio_stream::wrappers::WatchStream;

use crate::bus::{CapsBus, StateBus, TargetBus, TargetRequest};
use crate::model::host::{HostPhase, HostState, HostTarget};
use crate::ports::dbus::{Bus, BusError, PowerAction, UnitAction};
use crate::ports::engine::{Engine, EngineSettings};
use crate::ports::locks::Locks;
use crate::ports::store::{Durability, Store};
use crate::supervise::{Restarts, Resumable};
use crate::ErrorChain;

pub use crate::model::host::OsVersion;

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
    /// Targets: their host part (host OS updates).
    pub targets: TargetBus,
    /// The engine the updater image is pulled with.
    pub engine: EngineSettings,
    /// Pause before a failed or waiting host OS install is tried again (the apply loop's
    /// local retry interval).
    pub retry_interval: Duration,
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

    fn probe(&mut self, ctx: &mut Context<Self>) {
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

impl HostActor {
    fn paths(&self) -> hup::Paths {
        hup::Paths {
            runtime_dir: self.settings.runtime_dir.clone(),
            host_runtime_dir: self.settings.host_runtime_dir.clone(),
        }
    }

    fn os_build(&self) -> Option<&str> {
        self.settings.os_version.as_ref()?.build.as_deref()
    }

    fn load_records(&self) -> Result<hup::Records, String> {
        match self.deps.store.get_json(hup::RECORDS_KEY) {
            Ok(None) => Ok(hup::Records::new()),
            Ok(Some(v)) => serde_json::from_value(v)
                .map_err(|e| format!("host release records unreadable: {e}")),
            Err(e) => Err(ErrorChain(&e).to_string()),
        }
    }

    fn save_records(&self, records: &hup::Records) -> Result<(), String> {
        let v = serde_json::to_value(records).map_err(|e| e.to_string())?;
        self.deps
            .store
            .put_json(hup::RECORDS_KEY, &v, Durability::Flush)
            .map_err(|e| ErrorChain(&e).to_string())
    }

    /// Publishes the host state: the known releases (statuses derived now) and the phase of
    /// the host part of the target.
    fn publish_host(&self, records: &hup::Records, phase: HostPhase) {
        let Some(meta) = self.settings.os_version.clone() else {
            return;
        };
        let host = HostState {
            meta,
            releases: hup::releases(records, self.os_build(), &self.paths()),
            seq: self.hup.seq,
            phase,
        };
        self.deps.state.update(|c| c.host = Some(host));
    }

    fn later(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(h) = self.hup.timer.take() {
            ctx.cancel_future(h);
        }
        self.hup.timer = Some(ctx.run_later(delay, |a, ctx| {
            a.hup.timer = None;
            a.evaluate(ctx);
        }));
    }

    /// Decides what to do about the host part of the latest target, and does it
    /// (spec/helios-api-v3.md §9). Runs on every target, after every install and on timers.
    fn evaluate(&mut self, ctx: &mut Context<Self>) {
        if self.hup.running {
            return;
        }
        if let Some(h) = self.hup.timer.take() {
            ctx.cancel_future(h);
        }
        self.hup.wants_caps = false;
        let mut records = match self.load_records() {
            Ok(r) => r,
            Err(e) => {
                self.wait(format!("the store: {e}"), None, false, ctx);
                return;
            }
        };
        let target = match &self.hup.want {
            Some(hup::HostWant::Remote(Some(t))) => Some(t.clone()),
            _ => None,
        };
        if let Some(t) = &target {
            if hup::reconcile(&mut records, t, crate::ports::store::now_ms()) {
                if let Err(e) = self.save_records(&records) {
                    self.wait(format!("the store: {e}"), Some(t), false, ctx);
                    return;
                }
                info!(release:% = t.release, app:% = t.app, build:% = t.build, updater:% = t.updater,
                    decision = "record", reason = "target host release"; "Host release recorded");
            }
        }
        let target_release = target.as_ref().and_then(|t| {
            records.get(&t.release).map(|r| {
                let crumb = self.paths().breadcrumb(&t.release).exists();
                (
                    hup::status(&r.build, self.os_build(), crumb),
                    r.install_attempts,
                )
            })
        });
        let decision = hup::decide(self.hup.want.as_ref(), target_release);
        let release = target.as_ref().map_or("", |t| t.release.as_str());
        match &decision {
            hup::Decision::Idle { reason } => {
                debug!(seq = self.hup.seq, release:% = release, decision = "skip", reason; "Host OS update not needed")
            }
            hup::Decision::NoHostapp => info!(seq = self.hup.seq, decision = "skip",
                reason = "the remote target has no hostapp: the device keeps its OS"; "Host OS update not possible"),
            hup::Decision::AwaitReboot => {
                info!(seq = self.hup.seq, release:% = release, decision = "skip",
                reason = "installed, waiting for a reboot"; "Host OS update installed")
            }
            hup::Decision::GiveUp { attempts } => {
                warn!(seq = self.hup.seq, release:% = release, attempt = *attempts, decision = "give_up",
                    reason = "too many failed installs; tried again once the record is 24 h old"; "Host OS update given up");
                // Attempts reset when the record is a day old: look again then.
                if let Some(r) = records.get(release) {
                    let due = r.since_ms + hup::ATTEMPTS_RESET.as_millis() as u64;
                    let now = crate::ports::store::now_ms();
                    self.later(Duration::from_millis(due.saturating_sub(now) + 1000), ctx);
                }
            }
            hup::Decision::Install { .. } => {}
        }
        match (decision, target) {
            (hup::Decision::Install { attempt }, Some(t)) => self.install(t, attempt, records, ctx),
            (d, _) => {
                self.hup.waiting = None;
                self.publish_host(&records, d.phase());
            }
        }
    }

    /// Something the install needs is missing: log it (WARN once, then DEBUG; DEBUG only when
    /// `quiet`: someone else reports it), try again after the retry interval or when a
    /// capability changes, no attempt counted.
    fn wait(
        &mut self,
        reason: String,
        target: Option<&HostTarget>,
        quiet: bool,
        ctx: &mut Context<Self>,
    ) {
        let delay = self.deps.retry_interval;
        let release = target.map_or("", |t| t.release.as_str());
        self.hup.wants_caps = true;
        if quiet || !self.hup.probed {
            debug!(seq = self.hup.seq, release:% = release, reason:% = reason, delay_ms = delay.as_millis() as u64,
                decision = "wait"; "Host OS update deferred: the bus is not probed yet");
        } else if self.hup.waiting.as_deref() != Some(reason.as_str()) {
            warn!(seq = self.hup.seq, release:% = release, reason:% = reason, delay_ms = delay.as_millis() as u64,
                decision = "wait"; "Host OS update waits");
            self.hup.waiting = Some(reason);
        } else {
            debug!(seq = self.hup.seq, release:% = release, reason:% = reason, delay_ms = delay.as_millis() as u64,
                decision = "wait"; "Host OS update still waits");
        }
        let records = self.load_records().unwrap_or_default();
        self.publish_host(&records, HostPhase::Working);
        self.later(delay, ctx);
    }

    /// Checks what the install needs (systemd, the engine, every app's update lock), counts
    /// the attempt (persisted first) and runs it.
    fn install(
        &mut self,
        target: HostTarget,
        attempt: u32,
        mut records: hup::Records,
        ctx: &mut Context<Self>,
    ) {
        let Some(bus) = self.bus_with("systemd1") else {
            return self.wait(
                "org.freedesktop.systemd1 is not on the system bus".into(),
                Some(&target),
                false,
                ctx,
            );
        };
        if self.deps.caps.get().engine.is_none() {
            // Seek reports the engine's absence (and finds it at start).
            return self.wait("the engine is unreachable".into(), Some(&target), true, ctx);
        }
        let apps = match self.keep_all_locks(self.hup.force, true) {
            Ok(apps) => apps,
            Err((app, e)) => {
                return self.wait(
                    format!("update locks held by app {app}: {e}"),
                    Some(&target),
                    false,
                    ctx,
                )
            }
        };
        if let Some(r) = records.get_mut(&target.release) {
            r.install_attempts = attempt;
        }
        if let Err(e) = self.save_records(&records) {
            for a in &apps {
                self.deps.locks.unkeep(a);
            }
            return self.wait(format!("the store: {e}"), Some(&target), false, ctx);
        }
        self.hup.waiting = None;
        self.hup.running = true;
        self.hup.locked = apps.clone();
        info!(seq = self.hup.seq, release:% = target.release, app:% = target.app, image:% = target.updater,
            attempt, force = self.hup.force, apps = apps.len(), decision = "install",
            reason = "the target host release is not installed"; "Host OS update starts");
        self.publish_host(&records, HostPhase::Working);
        let (settings, paths) = (self.deps.engine.clone(), self.paths());
        let t = target.clone();
        let fut = async move {
            let engine =
                Engine::connect(&settings)
                    .await
                    .map_err(|source| hup::HupError::Engine {
                        step: "connecting to the engine",
                        source,
                    })?;
            hup::install(&engine, &bus, &paths, &t).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            for a in &apps {
                act.deps.locks.unkeep(a);
            }
            act.hup.locked.clear();
            act.hup.running = false;
            match res {
                Ok(()) => info!(release:% = target.release, attempt, decision = "installed",
                    reason = "the updater succeeded; the new OS runs after a reboot"; "Host OS update installed"),
                Err(e) => {
                    let last = attempt >= hup::MAX_ATTEMPTS;
                    let delay = act.deps.retry_interval;
                    warn!(release:% = target.release, attempt, error:% = ErrorChain(&e),
                        delay_ms = if last { 0 } else { delay.as_millis() as u64 },
                        decision = if last { "fail" } else { "retry" }; "Host OS update failed");
                    if e.is_bus() {
                        // The bus may be gone: look again (the capability follows).
                        act.probe(ctx);
                    }
                    if !last {
                        let records = act.load_records().unwrap_or_default();
                        act.publish_host(&records, HostPhase::Working);
                        act.later(delay, ctx);
                        return;
                    }
                }
            }
            act.evaluate(ctx);
        }));
    }
}

impl StreamHandler<crate::model::Capabilities> for HostActor {
    fn handle(&mut self, _: crate::model::Capabilities, ctx: &mut Context<Self>) {
        if self.hup.wants_caps && !self.hup.running {
            self.evaluate(ctx);
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl StreamHandler<Option<Arc<TargetRequest>>> for HostActor {
    fn handle(&mut self, item: Option<Arc<TargetRequest>>, ctx: &mut Context<Self>) {
        let Some(req) = item else { return };
        let want = match hup::HostWant::of(&req.target) {
            Ok(w) => w,
            Err(e) => {
                error!(seq = req.seq, error:% = e, decision = "skip",
                    reason = "the target's host part is unreadable; the host OS stays as it is"; "Host target unreadable");
                hup::HostWant::Local
            }
        };
        self.hup.want = Some(want);
        self.hup.target_apps = req
            .target
            .get("apps")
            .and_then(|a| a.as_object())
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        self.hup.seq = req.seq;
        self.hup.force = req.force;
        self.hup.waiting = None;
        self.evaluate(ctx);
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
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
        let apps = match self.keep_all_locks(msg.force, false) {
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
                        for a in &apps {
                            locks.unkeep(a);
                        }
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
        let apps = match self.keep_all_locks(msg.force, false) {
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
                locks.unkeep(a);
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
