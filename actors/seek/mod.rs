//! SeekActor drives the engine from the current state to the target state.
//! Owns: the engine connection and its event stream, the in-flight apply, at most one pending
//! target (newest wins), the retry timer, and the `engine` capability.
//! Handles: targets from the TargetBus (a watch stream), engine events (drift), `Reapply`,
//! `PreviewPlan`.
//! Sends: the current state and apply status on the StateBus; capability changes on the CapsBus.
//! Restart: reconnects to the engine (waiting with backoff while it is missing), re-reads the
//! current state and resumes seeking the latest target. An engine event stream that breaks is a
//! failure that restarts it.
//!
//! The apply loop:
//! 1. A target arrives on the TargetBus (or `Reapply` re-sends the current one with new flags).
//!    While an apply runs, `cancel=true` interrupts it (status `interrupted`, locks released)
//!    and the new one starts; `cancel=false` queues it (only the newest is kept). A target
//!    waits while the engine is unreachable and starts once it is back.
//! 2. An apply reads the engine (supervised containers, networks, volumes, images) and the
//!    store's app records into a `Device` and publishes it; prepares the planner's target
//!    (the images its services need, the volumes of apps that stay, requires-reboot services
//!    held stopped: reboot.rs); plans with mahler on tokio's blocking pool (never on the
//!    actors' thread); and logs the plan as ordered steps with their reasons (`Plan computed`,
//!    then one `Planned step` line each). An empty plan is `done` without a line at INFO.
//! 3. It runs the workflow, publishing every intermediate state, then reads the engine again
//!    so what readers see is the engine's state, not the planner's belief. A failed step ends
//!    the workflow; after `seek.local_retry_interval_ms` the engine is re-read and the plan
//!    made again. No plan is `aborted`, retried the same way.
//! 4. While idle, engine events (debounced 1.5 s) and a 5-minute timer re-check the device
//!    against the target: drift (a container removed by hand, a network gone) is corrected by
//!    the next plan. A retry already scheduled takes precedence over a drift check.
//!
//! **Retry limit.** A failed attempt counts toward `seek.max_attempts` (default 10; 0 retries
//! forever) unless every error of the workflow is a fault of the environment
//! (`plan::StepError::is_transient`: any engine error but a 4xx answer, so the engine unreachable,
//! a connection error or a 5xx; a pull that broke off; a user update lock; a transient store error
//! such as a full disk) or the engine could not be read at all: those are retried forever, since
//! the release is not at fault. A 4xx from the engine (an image that does not exist, a config it
//! refuses), a dependency that never became healthy, or no plan at all count. After `max_attempts`
//! counted failures Seek logs `decision=give_up attempts=N error=<last failure>`, sets the status
//! `aborted` (so `/v3/status`, the report's `update_status` of the target release and
//! `/v1/device`'s `update_failed` say so) and stops retrying: no retry timer; drift checks, an
//! engine reconnection and the end of a device API action only re-read and publish the engine. What
//! runs stays as the failed attempts left it (with the default `download-then-kill` and a missing
//! image, the previous release keeps running). The same target arriving again (a poll, a non-forced
//! `/v1/update`, the same local POST) is skipped with `decision=skip`; a changed target or `force`
//! (`/v1/update {"force": true}`, `?force=true`) starts counting from zero. The give-up is stored
//! (`seek/given-up`: the target's digest and the attempts, flushed), so a restart skips the same
//! target too; a changed target or a forced retry removes the record. The count before a give-up
//! lives in memory: a restart in the middle grants `max_attempts` new attempts. A target whose
//! planning killed helios twice is given up the same way without planning it (ports/unfinished.rs).
//!
//! **Crash consistency** comes from the engine being the source of truth and every plan being
//! recomputed from it, so each step must be idempotent against what a SIGKILL can leave: a
//! create first removes a leftover container of the same name; a half-connected container
//! differs from its config label and is recreated; the old container of a hand-over is found
//! next to the new one and removed after the hand-over wait; a pull is atomic in the engine
//! and recorded in the store only after it finished; the target is stored, flushed, before
//! the API answers. `tests/it/engine/crash.rs` kills the process inside and between the steps
//! of an update and checks that the end state equals an uninterrupted update's.
//!
//! Planning cost is the known weak spot: tasks that extract `System<Device>`/`SystemTarget`
//! deserialize the whole device for every candidate, so planning grows about N³ with the
//! services and those tasks never run in parallel; mahler 0.28 also caps planning at 256
//! rounds (about 120 new containers in one target). Narrowing those extractors (per-app reads
//! instead of whole-device ones) is the planned fix.
pub mod actions;
pub mod current;
pub mod messages;
pub mod plan;
pub mod reboot;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    ActorContext, ActorFutureExt, AsyncContext, Context, Handler, ResponseActFuture, SpawnHandle,
    StreamHandler, WrapFuture,
};
use futures::StreamExt;
use log::{debug, error, info, warn};
use mahler::worker::{Uninitialized, Worker, WorkerEvent, WorkflowStatus};
use tokio_stream::wrappers::WatchStream;

use crate::bus::{CapsBus, StateBus, TargetBus, TargetRequest};
use crate::metrics::{ApplyResult, METRICS};
use crate::model::device::{Device, DeviceTarget};
use crate::model::host::OsVersion;
use crate::model::{EngineInfo, UpdateStatus};
use crate::ports::engine::{Engine, EngineError, EngineSettings};
use crate::ports::locks::Locks;
use crate::ports::store::{Durability, Store};
use crate::ports::unfinished::{self, Unfinished, REPEATED};
use crate::supervise::{Restarts, Resumable};
use crate::ErrorChain;

pub use messages::{
    Action, ActionDone, ActionError, CleanupVolumes, MarkRejected, PlanError, PreviewPlan, Reapply,
    RunAction,
};

#[derive(Debug, Clone, PartialEq)]
pub struct SeekSettings {
    /// Pause before re-planning after a failed apply.
    pub local_retry_interval: Duration,
    /// Failed attempts of the same target after which it is given up (0: never).
    pub max_attempts: u32,
}

/// Everything SeekActor needs besides its peers.
#[derive(Clone)]
pub struct SeekDeps {
    pub settings: SeekSettings,
    pub engine: EngineSettings,
    pub device_uuid: String,
    pub host_os: Option<OsVersion>,
    pub host_runtime_dir: std::path::PathBuf,
    /// The runtime dir as this process sees it (the reboot breadcrumb).
    pub runtime_dir: std::path::PathBuf,
    /// Reboots when the reboot breadcrumb asks for it (spec/behaviours.md §13.5).
    pub host_power: actix::Recipient<crate::host::Power>,
    pub locks: Arc<Locks>,
    pub store: Store,
    pub targets: TargetBus,
    pub state: StateBus,
    pub caps: CapsBus,
    /// Keys and address for containers with the supervisor-api feature.
    pub supervisor_api: crate::ports::apikeys::SupervisorApi,
    /// In front of a legacy supervisor: apps helios did not create are left alone and
    /// published here (spec/helios-proxy.md; see actors/proxy/split.rs).
    pub foreign: Option<crate::proxy::ForeignApps>,
}

const CONNECT_MIN: Duration = Duration::from_millis(500);
const CONNECT_MAX: Duration = Duration::from_secs(30);
/// Engine events are batched: drift is checked this long after the last one.
const DRIFT_DEBOUNCE: Duration = Duration::from_millis(1500);
/// Besides events, the engine is re-read this often while idle.
const PERIODIC_CHECK: Duration = Duration::from_secs(300);

pub struct SeekActor {
    deps: SeekDeps,
    restarts: Restarts,
    template: Worker<Device, Uninitialized>,
    engine: Option<Engine>,
    connect_backoff: Duration,
    waiting_logged: bool,
    /// The target being sought.
    target: Option<Arc<TargetRequest>>,
    /// A target that arrived while applying without `cancel`.
    pending: Option<Arc<TargetRequest>>,
    applying: Option<SpawnHandle>,
    retry: Option<SpawnHandle>,
    /// The breadcrumb's reboot was asked for (once per process).
    reboot_requested: bool,
    drift_check: Option<SpawnHandle>,
    attempt: u32,
    /// Failed attempts of the current target that count toward `max_attempts` (faults of the
    /// environment do not count).
    failures: u32,
    /// The target given up after `max_attempts` failures: not retried until the target
    /// changes or a forced re-apply asks.
    given_up: Option<Arc<serde_json::Value>>,
    status: UpdateStatus,
    /// Digest of the last target this process planned (its planning needs no marker again).
    planned: Option<u64>,
    /// The given-up target the store records (digest, failed attempts): a restart does not
    /// try it again either.
    given_up_stored: Option<(u64, u32)>,
    /// When the running apply started (an interrupted one is counted with its duration).
    apply_started: Option<Instant>,
}

/// Why an apply started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// A new target (or a re-apply request).
    Target,
    /// The previous attempt failed.
    Retry,
    /// The engine changed under us, or the periodic check.
    Drift,
}

impl Cause {
    fn reason(self) -> &'static str {
        match self {
            Cause::Target => "the device differs from the new target",
            Cause::Retry => "the previous attempt did not reach the target",
            Cause::Drift => "drift: the engine no longer matches the target",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Target => "target",
            Cause::Retry => "retry",
            Cause::Drift => "drift",
        })
    }
}

/// Runtime-dir file marking a planning in progress (ports/unfinished.rs): a target whose
/// planning killed [`REPEATED`] processes (an aborting panic) is given up, not crash-looped on.
const PLANNING_MARKER: &str = "helios-planning";

/// One apply's request, as `start_apply` hands it over.
struct Run {
    cause: Cause,
    req: Arc<TargetRequest>,
    attempt: u32,
    /// Where and under which key to mark the planning, when this process has not planned
    /// this target yet.
    guard: Option<(std::path::PathBuf, String)>,
}

/// The target's digest ([`unfinished::digest`]): the same target gives the same digest in
/// every process.
fn target_digest(target: &serde_json::Value) -> u64 {
    unfinished::digest(target)
}

/// Store key of the target Seek gave up on: `{"digest": "<16 hex>", "attempts": n}`.
pub const GIVEN_UP_KEY: &str = "seek/given-up";

fn read_given_up(store: &Store) -> Option<(u64, u32)> {
    let v = store.get_json(GIVEN_UP_KEY).ok().flatten()?;
    let digest = u64::from_str_radix(v.get("digest")?.as_str()?, 16).ok()?;
    let attempts = v.get("attempts")?.as_u64()?;
    Some((digest, u32::try_from(attempts).unwrap_or(u32::MAX)))
}

/// How an apply ended.
enum Outcome {
    /// Reached the target.
    Done,
    /// Some step failed; retry after the interval. `transient`: only faults of the
    /// environment (engine or registry unreachable, update lock, full disk), which do not
    /// count toward `max_attempts`.
    Failed { reason: String, transient: bool },
    /// No workflow reaches the target.
    NoPlan,
    /// Earlier processes died planning this target: it is given up without planning.
    Crashed(String),
}

impl Outcome {
    fn transient(reason: String) -> Outcome {
        Outcome::Failed {
            reason,
            transient: true,
        }
    }

    fn permanent(reason: String) -> Outcome {
        Outcome::Failed {
            reason,
            transient: false,
        }
    }
}

/// Whether a workflow error is a fault of the environment (see [`plan::StepError::is_transient`]).
fn error_is_transient(e: &mahler::error::Error) -> bool {
    e.source()
        .and_then(|b| b.downcast_ref::<plan::StepError>())
        .is_some_and(|s| s.is_transient())
}

impl SeekActor {
    pub fn new(deps: SeekDeps, restarts: Restarts) -> Self {
        let given_up_stored = read_given_up(&deps.store);
        SeekActor {
            deps,
            restarts,
            template: plan::worker(),
            engine: None,
            connect_backoff: CONNECT_MIN,
            waiting_logged: false,
            target: None,
            pending: None,
            applying: None,
            retry: None,
            reboot_requested: false,
            drift_check: None,
            attempt: 0,
            failures: 0,
            given_up: None,
            status: UpdateStatus::Done,
            planned: None,
            given_up_stored,
            apply_started: None,
        }
    }

    fn set_status(&mut self, s: UpdateStatus) {
        self.status = s;
        self.deps.state.update(|c| c.status = s);
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let settings = self.deps.engine.clone();
        ctx.spawn(
            async move { Engine::connect(&settings).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(engine) => act.connected(engine, ctx),
                    Err(e) => act.wait_for_engine(e, ctx),
                }),
        );
    }

    fn wait_for_engine(&mut self, e: EngineError, ctx: &mut Context<Self>) {
        let lost = self.deps.caps.update(|c| c.engine = None);
        let delay = self.connect_backoff;
        if lost || !self.waiting_logged {
            warn!(capability = "engine", address:% = self.deps.engine, error:% = ErrorChain(&e),
                delay_ms = delay.as_millis() as u64, decision = "wait"; "Engine unreachable, waiting for it");
            self.waiting_logged = true;
        } else {
            debug!(capability = "engine", delay_ms = delay.as_millis() as u64, decision = "wait"; "Engine still unreachable");
        }
        self.connect_backoff = (self.connect_backoff * 2).min(CONNECT_MAX);
        ctx.run_later(delay, |a, ctx| a.connect(ctx));
    }

    fn connected(&mut self, engine: Engine, ctx: &mut Context<Self>) {
        self.connect_backoff = CONNECT_MIN;
        self.waiting_logged = false;
        let info = EngineInfo {
            version: engine.version.clone(),
            api_version: engine.api_version.clone(),
        };
        if self.deps.caps.update(|c| c.engine = Some(info.clone())) {
            info!(capability = "engine", address:% = self.deps.engine, version:% = info.version,
                api_version:% = info.api_version, decision = "found"; "Capability found");
        }
        ctx.add_stream(engine.events());
        self.engine = Some(engine);
        // Resume the target that arrived (or was stored) while the engine was missing.
        self.resume(ctx);
        ctx.run_interval(PERIODIC_CHECK, |a, ctx| {
            if a.applying.is_none() {
                a.check_drift(ctx);
            }
        });
    }

    /// A new target: apply now, interrupt the running apply, or queue behind it. A target that
    /// was given up is not retried unless it changed or `force` asks.
    fn on_target(&mut self, req: Arc<TargetRequest>, ctx: &mut Context<Self>) {
        if self.given_up.is_none()
            && self
                .given_up_stored
                .is_some_and(|(d, _)| d == target_digest(&req.target))
        {
            self.given_up = Some(req.target.clone());
            self.failures = self.given_up_stored.map_or(0, |(_, n)| n);
        }
        let given_up = self.given_up.as_ref().is_some_and(|g| *g == req.target);
        if given_up && !req.force {
            info!(seq = req.seq, source:% = req.source, attempts = self.failures, decision = "skip",
                reason = "this target was given up: it is retried when it changes or on a forced update";
                "Target not retried");
            self.target = Some(req.clone());
            self.deps.state.update(|c| c.seq = req.seq);
            self.set_status(UpdateStatus::Aborted);
            return;
        }
        let same = self.target.as_ref().is_some_and(|t| t.target == req.target);
        if !same || req.force || self.given_up.is_some() {
            self.failures = 0;
            self.given_up = None;
            self.forget_given_up();
        }
        if self.applying.is_some() {
            if req.cancel {
                info!(seq = req.seq, source:% = req.source, decision = "interrupt",
                    reason = "newer target with cancel"; "Interrupting the running apply");
                self.interrupt_apply(ctx);
                self.deps.locks.release_all();
                self.set_status(UpdateStatus::Interrupted);
                self.pending = None;
            } else {
                info!(seq = req.seq, source:% = req.source, decision = "queue",
                    reason = "an apply is running and cancel=false"; "Target queued");
                self.pending = Some(req);
                return;
            }
        }
        self.attempt = 0;
        self.start_apply(req, Cause::Target, ctx);
    }

    /// Cancels the running apply, if any (counted in `/metrics`); returns whether one ran.
    fn interrupt_apply(&mut self, ctx: &mut Context<Self>) -> bool {
        let Some(h) = self.applying.take() else {
            return false;
        };
        ctx.cancel_future(h);
        if let Some(t) = self.apply_started.take() {
            METRICS.apply(ApplyResult::Interrupted, t.elapsed());
        }
        true
    }

    fn start_apply(&mut self, req: Arc<TargetRequest>, cause: Cause, ctx: &mut Context<Self>) {
        if let Some(h) = self.retry.take() {
            ctx.cancel_future(h);
        }
        let target: DeviceTarget = match serde_json::from_value((*req.target).clone()) {
            Ok(t) => t,
            Err(e) => {
                error!(seq = req.seq, error:% = e, decision = "reject",
                    reason = "stored target does not fit the model"; "Target rejected");
                self.deps.state.update(|c| c.seq = req.seq);
                self.target = Some(req);
                self.set_status(UpdateStatus::Rejected);
                return;
            }
        };
        // Readers (the report) see the target even before the engine is there.
        self.deps.state.update(|c| c.target = Some(target.clone()));
        let Some(engine) = self.engine.clone() else {
            info!(seq = req.seq, decision = "defer", reason = "engine unreachable"; "Target waits for the engine");
            self.target = Some(req);
            return;
        };
        self.target = Some(req.clone());
        self.deps.state.update(|c| c.seq = req.seq);
        self.set_status(UpdateStatus::ApplyingChanges);
        self.attempt += 1;
        let digest = target_digest(&req.target);
        let guard = if self.planned == Some(digest) {
            None
        } else {
            let path = self.deps.runtime_dir.join(PLANNING_MARKER);
            let key = format!("{digest:016x}");
            let died = unfinished::earlier(&path, &key);
            if died >= REPEATED && !req.force {
                let reason = format!("{died} earlier processes died while planning this target");
                self.finished(Outcome::Crashed(reason), ctx);
                return;
            }
            Some((path, key))
        };
        let run = Run {
            cause,
            req: req.clone(),
            attempt: self.attempt,
            guard,
        };
        let fut = apply(
            run,
            engine,
            self.template.clone(),
            self.deps.clone(),
            target,
        );
        self.apply_started = Some(Instant::now());
        let handle = ctx.spawn(
            fut.into_actor(self)
                .map(move |(outcome, planned), act, ctx| {
                    act.applying = None;
                    act.apply_started = None;
                    if planned {
                        act.planned = Some(digest);
                    }
                    act.finished(outcome, ctx);
                }),
        );
        self.applying = Some(handle);
    }

    fn finished(&mut self, outcome: Outcome, ctx: &mut Context<Self>) {
        self.deps.locks.release_all();
        if let Some(next) = self.pending.take() {
            self.attempt = 0;
            self.start_apply(next, Cause::Target, ctx);
            return;
        }
        let reason = match outcome {
            Outcome::Done => {
                self.attempt = 0;
                self.failures = 0;
                self.set_status(UpdateStatus::Done);
                self.reboot_if_scheduled(ctx);
                return;
            }
            Outcome::NoPlan => {
                self.set_status(UpdateStatus::Aborted);
                self.failures += 1;
                "no sequence of steps reaches the target".to_string()
            }
            Outcome::Crashed(reason) => {
                self.failures = self.failures.max(1);
                self.give_up(reason, "planning it crashed helios repeatedly; retried when it changes or on a forced update");
                return;
            }
            Outcome::Failed { reason, transient } => {
                debug!(reason:% = reason, transient, decision = "retry"; "Apply failed");
                if transient {
                    self.schedule_retry(ctx);
                    return;
                }
                self.failures += 1;
                reason
            }
        };
        let max = self.deps.settings.max_attempts;
        if max > 0 && self.failures >= max {
            self.give_up(
                reason,
                "the target failed max_attempts times; retried when it changes or on a forced update",
            );
        } else {
            self.schedule_retry(ctx);
        }
    }

    /// On target with the reboot breadcrumb newer than the boot: reboot, taking every update
    /// lock with the apply's `force` (spec/behaviours.md §13.5). Asked once per process: after
    /// the reboot a new process starts.
    fn reboot_if_scheduled(&mut self, ctx: &mut Context<Self>) {
        let Some(boot) = reboot::boot_time() else {
            return;
        };
        if self.reboot_requested || !reboot::pending(&self.deps.runtime_dir, boot) {
            return;
        }
        let force = self.target.as_ref().is_some_and(|r| r.force);
        self.reboot_requested = true;
        info!(force, decision = "reboot", reason = "on target and the reboot breadcrumb is newer than the boot";
            "Rebooting to apply changes");
        let power = self.deps.host_power.send(crate::host::Power {
            action: crate::ports::dbus::PowerAction::Reboot,
            force,
        });
        ctx.spawn(power.into_actor(self).map(|res, act, ctx| {
            let err = match res {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            act.reboot_requested = false;
            warn!(error:% = err, decision = "retry", reason = "the reboot was refused"; "Reboot failed");
            act.schedule_retry(ctx);
        }));
    }

    /// `max_attempts` failures of the same target: stop retrying it. What runs stays as the
    /// failed attempts left it; the status is `aborted` until the target changes or a forced
    /// re-apply asks.
    fn give_up(&mut self, error: String, why: &'static str) {
        let Some(t) = self.target.clone() else {
            return;
        };
        error!(seq = t.seq, attempts = self.failures, error:% = error, decision = "give_up",
            reason = why; "Target given up");
        self.given_up = Some(t.target.clone());
        self.set_status(UpdateStatus::Aborted);
        let record = (target_digest(&t.target), self.failures);
        let value =
            serde_json::json!({"digest": format!("{:016x}", record.0), "attempts": record.1});
        match self
            .deps
            .store
            .put_json(GIVEN_UP_KEY, &value, Durability::Flush)
        {
            Ok(()) => self.given_up_stored = Some(record),
            Err(e) => warn!(seq = t.seq, error:% = ErrorChain(&e), decision = "continue",
                reason = "the give-up is not stored: a restart tries the target again"; "Give-up not stored"),
        }
    }

    /// Drops the stored give-up (a new target, or a forced retry); writes only if there is one.
    fn forget_given_up(&mut self) {
        if self.given_up_stored.take().is_some() {
            if let Err(e) = self.deps.store.remove(GIVEN_UP_KEY) {
                warn!(error:% = ErrorChain(&e), decision = "continue",
                    reason = "a stale give-up stays stored; it only matches the same target"; "Give-up not removed");
            }
        }
    }

    fn schedule_retry(&mut self, ctx: &mut Context<Self>) {
        let delay = self.deps.settings.local_retry_interval;
        info!(attempt = self.attempt, delay_ms = delay.as_millis() as u64, decision = "retry",
            reason = "the last apply did not reach the target"; "Apply retry scheduled");
        self.retry = Some(ctx.run_later(delay, |a, ctx| {
            a.retry = None;
            if let Some(t) = a.target.clone() {
                a.start_apply(t, Cause::Retry, ctx);
            }
        }));
    }

    /// Seeks the current target again, unless it was given up (then only re-reads the engine).
    fn resume(&mut self, ctx: &mut Context<Self>) {
        match self.target.clone() {
            Some(t) if self.given_up.is_none() => self.start_apply(t, Cause::Target, ctx),
            _ => self.check_drift(ctx),
        }
    }

    /// Re-reads the engine and re-applies the target if the device drifted from it.
    fn check_drift(&mut self, ctx: &mut Context<Self>) {
        if self.applying.is_some() || self.retry.is_some() {
            return;
        }
        match self.target.clone() {
            Some(t) if self.given_up.is_none() => {
                debug!(decision = "check", reason = "engine changed or periodic check"; "Checking for drift");
                self.start_apply(t, Cause::Drift, ctx);
            }
            t => {
                // No target yet, or it was given up: just publish what the engine holds.
                let Some(engine) = self.engine.clone() else {
                    return;
                };
                let deps = self.deps.clone();
                let target: Option<DeviceTarget> =
                    t.and_then(|t| serde_json::from_value((*t.target).clone()).ok());
                ctx.spawn(
                    async move { read_and_publish(&engine, &deps, target.as_ref()).await }
                        .into_actor(self)
                        .map(|res, act, ctx| {
                            if let Err(e) = res {
                                act.restarts.failed(format!(
                                    "reading the engine failed: {}",
                                    ErrorChain(&e)
                                ));
                                ctx.stop();
                            }
                        }),
                );
            }
        }
    }
}

/// Reads the engine and the store into the planner's `Device`, publishes its document.
async fn read_and_publish(
    engine: &Engine,
    deps: &SeekDeps,
    target: Option<&DeviceTarget>,
) -> Result<(Device, current::EngineImages), EngineError> {
    let mut objs = engine.read_objects().await?;
    let records = current::parse_records(deps.store.get_json(plan::APPS_KEY).ok().flatten());
    if let Some(foreign) = &deps.foreign {
        let found = current::drop_foreign(&mut objs, |app| {
            records.contains_key(app) || target.is_some_and(|t| t.apps.contains_key(app))
        });
        foreign.update(|f| *f = Some(found));
    }
    let pulled: BTreeSet<String> = deps
        .store
        .get_json(plan::IMAGES_KEY)
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let wanted: BTreeSet<String> = target
        .map(|t| plan::target_images(t).into_keys().collect())
        .unwrap_or_default();
    let name = target.and_then(|t| t.name.clone());
    let mut dev = current::build_current(&objs, &records, &pulled, &wanted, name);
    current::mark_regenerated_keys(&mut dev, &objs, &deps.supervisor_api);
    let images = current::EngineImages::from_objects(&objs);
    let doc = current::render(&deps.device_uuid, &dev, &images, target, &deps.locks);
    deps.state.update(|c| {
        c.device = doc;
        c.model = dev.clone();
        c.target = target.cloned();
    });
    Ok((dev, images))
}

/// One apply: read the engine, plan, run the workflow while publishing every state.
async fn apply(
    run: Run,
    engine: Engine,
    template: Worker<Device, Uninitialized>,
    deps: SeekDeps,
    target: DeviceTarget,
) -> (Outcome, bool) {
    let Run {
        cause,
        req,
        attempt,
        guard,
    } = run;
    let started = Instant::now();
    let (current, images) = match read_and_publish(&engine, &deps, Some(&target)).await {
        Ok(d) => d,
        Err(e) => {
            // Not counted in /metrics: nothing was planned (drift checks fail here too).
            let reason = format!("reading the engine: {}", ErrorChain(&e));
            return (Outcome::transient(reason), false);
        }
    };
    // The planner's target adds the images and the kept volumes; readers see the target itself.
    let mut prepared = current::prepare_target(target.clone(), &current);
    if let Some(boot) = reboot::boot_time() {
        let held = reboot::hold_for_reboot(&mut prepared, &current, boot);
        if !held.is_empty() && !reboot::pending(&deps.runtime_dir, boot) {
            match reboot::touch(&deps.runtime_dir) {
                Ok(()) => info!(seq = req.seq, services:? = held, decision = "schedule_reboot",
                    reason = "requires-reboot services get new containers; they start after a reboot";
                    "Reboot has been scheduled to apply changes"),
                Err(e) => warn!(seq = req.seq, error:% = e, decision = "continue",
                    reason = "cannot write the reboot breadcrumb"; "Reboot breadcrumb failed"),
            }
        }
    }
    let mut worker = template;
    worker.use_resource(plan::Effects {
        engine: engine.clone(),
        store: deps.store.clone(),
        locks: deps.locks.clone(),
        device_uuid: deps.device_uuid.clone(),
        device_name: prepared.name.clone(),
        host_os: deps.host_os.clone(),
        host_runtime_dir: deps.host_runtime_dir.clone(),
        supervisor_api: deps.supervisor_api.clone(),
        force: req.force,
    });
    let worker = match worker.initial_state(current.clone()) {
        Ok(w) => w,
        Err(e) => {
            let reason = format!("model: {e}");
            return (counted(Outcome::permanent(reason), started), false);
        }
    };
    // The marker spans the planning itself: written right before it, dropped inside the
    // blocking task when it ends (also when this apply was interrupted meanwhile, or a panic
    // unwound through it). An abort leaves it for the next start.
    let marker = guard.and_then(|(path, key)| match Unfinished::begin(&path, &key) {
        Ok((m, _)) => Some(m),
        Err(e) => {
            warn!(path:% = path.display(), error:% = e, decision = "continue",
                reason = "cannot write the planning marker: a target whose planning crashes helios is not detected";
                "Planning unguarded");
            None
        }
    });
    let plan_started = Instant::now();
    // Planning is CPU work that grows with the device: keep it off the actors' thread.
    let planned = tokio::task::spawn_blocking(move || {
        let wf = worker.find_workflow(&prepared);
        drop(marker);
        (worker, wf)
    })
    .await;
    let (worker, found) = match planned {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("planning task: {e}");
            return (counted(Outcome::permanent(reason), started), true);
        }
    };
    let workflow = match found {
        Ok(Some(wf)) => wf,
        Ok(None) => {
            warn!(seq = req.seq, decision = "abort", reason = "no sequence of steps reaches the target";
                "No plan found");
            return (counted(Outcome::NoPlan, started), true);
        }
        Err(e) => {
            error!(seq = req.seq, error:% = e, decision = "abort", reason = "planning failed"; "Planning error");
            return (counted(Outcome::NoPlan, started), true);
        }
    };
    let plan_ms = plan_started.elapsed().as_micros() as f64 / 1000.0;
    if workflow.is_empty() {
        debug!(seq = req.seq, decision = "noop", reason = "the device is on target"; "Nothing to do");
        return (Outcome::Done, true);
    }
    let steps = messages::steps(&workflow);
    info!(seq = req.seq, source:% = req.source, attempt, steps = steps.len(), plan_ms,
        digest:% = format_args!("{:016x}", target_digest(&req.target)),
        cause:% = cause, decision = "apply", reason = cause.reason(); "Plan computed");
    for (i, s) in steps.iter().enumerate() {
        info!(seq = req.seq, n = i + 1, step:% = s, decision = "plan"; "Planned step");
    }
    let mut events = std::pin::pin!(worker.run_workflow(workflow));
    let outcome = loop {
        match events.next().await {
            Some(Ok(WorkerEvent::StateUpdated(s))) => {
                let doc =
                    current::render(&deps.device_uuid, &s, &images, Some(&target), &deps.locks);
                deps.state.update(|c| {
                    c.device = doc;
                    c.model = s.clone();
                });
            }
            Some(Ok(WorkerEvent::WorkflowFinished(WorkflowStatus::Success))) => {
                break Outcome::Done
            }
            Some(Ok(WorkerEvent::WorkflowFinished(WorkflowStatus::Aborted(errs)))) => {
                let reason = errs
                    .iter()
                    .map(|e| match e.source() {
                        Some(src) => ErrorChain(src.as_ref()).to_string(),
                        None => e.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let transient = errs.iter().all(error_is_transient);
                warn!(seq = req.seq, attempt, transient, error:% = reason, decision = "retry"; "Apply failed");
                break Outcome::Failed { reason, transient };
            }
            Some(Err(e)) => {
                error!(seq = req.seq, error:% = e, decision = "retry"; "Apply error");
                break Outcome::permanent(e.to_string());
            }
            None => break Outcome::permanent("workflow ended without a result".into()),
        }
    };
    // Re-read so the published state is the engine's, not the planner's belief.
    let _ = read_and_publish(&engine, &deps, Some(&target)).await;
    if matches!(outcome, Outcome::Done) {
        info!(seq = req.seq, duration_ms = started.elapsed().as_millis() as u64, decision = "done";
            "Target reached");
    }
    (counted(outcome, started), true)
}

/// Counts an apply in `/metrics`; one that found the device on target (a drift check, mostly)
/// returns before this and is not counted.
fn counted(outcome: Outcome, started: Instant) -> Outcome {
    let result = match outcome {
        Outcome::Done => ApplyResult::Done,
        Outcome::NoPlan => ApplyResult::NoPlan,
        Outcome::Failed { .. } | Outcome::Crashed(_) => ApplyResult::Failed,
    };
    METRICS.apply(result, started.elapsed());
    outcome
}

impl Resumable for SeekActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, ctx: &mut Context<Self>) {
        self.engine = None;
        self.applying = None;
        self.retry = None;
        self.drift_check = None;
        self.pending = None;
        self.target = None;
        // The watch stream yields the latest target first: that starts (or resumes) seeking,
        // or records it until the engine is there.
        ctx.add_stream(WatchStream::new(self.deps.targets.subscribe()));
        self.connect(ctx);
    }
}

crate::supervised_actor!(SeekActor);

impl StreamHandler<Result<bollard::models::EventMessage, EngineError>> for SeekActor {
    fn handle(
        &mut self,
        item: Result<bollard::models::EventMessage, EngineError>,
        ctx: &mut Context<Self>,
    ) {
        match item {
            Ok(ev) => {
                if self.applying.is_some() {
                    return;
                }
                debug!(kind:? = ev.typ, action:? = ev.action, decision = "debounce"; "Engine event");
                if let Some(h) = self.drift_check.take() {
                    ctx.cancel_future(h);
                }
                self.drift_check = Some(ctx.run_later(DRIFT_DEBOUNCE, |a, ctx| {
                    a.drift_check = None;
                    a.check_drift(ctx);
                }));
            }
            Err(e) => {
                self.restarts
                    .failed(format!("engine event stream failed: {}", ErrorChain(&e)));
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.restarts.failed("engine event stream ended");
        ctx.stop();
    }
}

impl StreamHandler<Option<Arc<TargetRequest>>> for SeekActor {
    fn handle(&mut self, item: Option<Arc<TargetRequest>>, ctx: &mut Context<Self>) {
        if let Some(t) = item {
            self.on_target(t, ctx);
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<Reapply> for SeekActor {
    type Result = ();

    fn handle(&mut self, msg: Reapply, ctx: &mut Context<Self>) {
        let Some(t) = self.target.clone() else {
            debug!(decision = "noop", reason = "no target yet"; "Re-apply requested");
            return;
        };
        let req = Arc::new(TargetRequest {
            force: msg.force,
            cancel: msg.cancel,
            ..(*t).clone()
        });
        info!(force = msg.force, cancel = msg.cancel, decision = "reapply", reason:% = msg.reason; "Re-applying the target");
        self.on_target(req, ctx);
    }
}

impl Handler<RunAction> for SeekActor {
    type Result = actix::AtomicResponse<Self, Result<ActionDone, ActionError>>;

    /// Runs exclusively (the mailbox and streams wait): an apply in progress is interrupted
    /// first, and the target is sought again afterwards.
    fn handle(&mut self, msg: RunAction, ctx: &mut Context<Self>) -> Self::Result {
        if self.interrupt_apply(ctx) {
            info!(app:% = msg.app_uuid, decision = "interrupt", reason = "device API action"; "Interrupting the running apply");
        }
        if let Some(h) = self.retry.take() {
            ctx.cancel_future(h);
        }
        let engine = self.engine.clone();
        let model = self.deps.state.get().model.clone();
        let locks = self.deps.locks.clone();
        let fut = async move {
            let engine =
                engine.ok_or_else(|| ActionError::Failed("the engine is not reachable".into()))?;
            actions::run(&engine, &locks, &model, &msg).await
        };
        actix::AtomicResponse::new(Box::pin(fut.into_actor(self).map(|res, act, ctx| {
            act.deps.locks.release_all();
            // Seek the target again: it re-creates what the action removed.
            act.resume(ctx);
            res
        })))
    }
}

impl Handler<CleanupVolumes> for SeekActor {
    type Result = actix::ResponseActFuture<Self, Result<usize, ActionError>>;

    fn handle(&mut self, msg: CleanupVolumes, _ctx: &mut Context<Self>) -> Self::Result {
        let engine = self.engine.clone();
        let target = self.deps.state.get().target.clone();
        Box::pin(
            async move {
                let engine = engine
                    .ok_or_else(|| ActionError::Failed("the engine is not reachable".into()))?;
                actions::cleanup_volumes(&engine, target.as_ref(), msg.apps.as_deref()).await
            }
            .into_actor(self),
        )
    }
}

impl Handler<MarkRejected> for SeekActor {
    type Result = ();

    fn handle(&mut self, msg: MarkRejected, _ctx: &mut Context<Self>) {
        warn!(reason:% = msg.reason, decision = "reject"; "Remote target rejected, nothing changes");
        if self.applying.is_none() {
            self.set_status(UpdateStatus::Rejected);
        }
    }
}

impl Handler<PreviewPlan> for SeekActor {
    type Result = ResponseActFuture<Self, Result<Vec<String>, PlanError>>;

    fn handle(&mut self, msg: PreviewPlan, _ctx: &mut Context<Self>) -> Self::Result {
        let template = self.template.clone();
        let current = self.deps.state.get().model.clone();
        Box::pin(
            async move {
                tokio::task::spawn_blocking(move || {
                    messages::preview(template, current, msg.target)
                })
                .await
                .map_err(|e| PlanError::Failed(format!("planning task: {e}")))?
            }
            .into_actor(self),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::error_is_transient;
    use crate::ports::engine::EngineError;
    use crate::ports::locks::LockError;
    use crate::seek::plan::StepError;

    fn workflow_error(e: StepError) -> mahler::error::Error {
        mahler::error::Error::runtime(e)
    }

    fn engine_status(status_code: u16) -> StepError {
        StepError::Engine(EngineError::Call {
            call: "pull image",
            source: bollard::errors::Error::DockerResponseServerError {
                status_code,
                message: "manifest unknown".into(),
            },
        })
    }

    /// Only failures of the release count toward `max_attempts`.
    #[test]
    fn environment_faults_do_not_count_toward_giving_up() {
        let transient = [
            engine_status(500),
            StepError::Engine(EngineError::Pull {
                image: "a".into(),
                message: "unexpected EOF".into(),
            }),
            StepError::Locked(LockError::Locked {
                app: "a".into(),
                path: "/tmp/updates.lock".into(),
            }),
        ];
        for e in transient {
            let shown = e.to_string();
            assert!(error_is_transient(&workflow_error(e)), "{shown}");
        }
        let counted = [
            engine_status(404),
            engine_status(400),
            StepError::Timeout("db did not reach ServiceHealthy".into()),
        ];
        for e in counted {
            let shown = e.to_string();
            assert!(!error_is_transient(&workflow_error(e)), "{shown}");
        }
        // An error of the planner itself (no step error inside) counts.
        assert!(!error_is_transient(&mahler::error::Error::runtime(
            "sensor conflict"
        )));
    }
}
