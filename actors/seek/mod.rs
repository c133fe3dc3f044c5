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
//!
//! Files: the actor and its handlers (here), the apply loop (apply.rs), retries and giving up
//! (retry.rs), current state (current.rs), messages.rs, actions.rs, reboot.rs, the planner (plan/).
pub mod actions;
mod apply;
pub mod current;
pub mod messages;
pub mod plan;
pub mod reboot;
mod retry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    ActorContext, ActorFutureExt, AsyncContext, Context, Handler, ResponseActFuture, SpawnHandle,
    StreamHandler, WrapFuture,
};
use log::{debug, info, warn};
use mahler::worker::{Uninitialized, Worker};
use tokio_stream::wrappers::WatchStream;

use crate::bus::{CapsBus, StateBus, TargetBus, TargetRequest};
use crate::model::device::Device;
use crate::model::host::OsVersion;
use crate::model::{EngineInfo, UpdateStatus};
use crate::ports::engine::{Engine, EngineError, EngineSettings};
use crate::ports::locks::Locks;
use crate::ports::store::Store;
use crate::supervise::{Restarts, Resumable};
use crate::ErrorChain;

use retry::read_given_up;

pub use messages::{
    Action, ActionDone, ActionError, CleanupVolumes, MarkRejected, PlanError, PreviewPlan, Reapply,
    RunAction,
};
pub use retry::GIVEN_UP_KEY;

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
mod tests;
