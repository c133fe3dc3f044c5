//! The apply loop: a new target applies now, interrupts the running apply or queues; one apply
//! reads the engine, plans off the actors' thread and runs the workflow; drift checks and resumes.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use actix::{ActorContext, ActorFutureExt, AsyncContext, Context, WrapFuture};
use futures::StreamExt;
use log::{debug, error, info, warn};
use mahler::worker::{Uninitialized, Worker, WorkerEvent, WorkflowStatus};

use crate::bus::TargetRequest;
use crate::metrics::{ApplyResult, METRICS};
use crate::model::device::{Device, DeviceTarget};
use crate::model::UpdateStatus;
use crate::ports::engine::{Engine, EngineError};
use crate::ports::unfinished::{self, Unfinished, REPEATED};
use crate::ErrorChain;

use super::retry::{error_is_transient, Outcome};
use super::{current, messages, plan, reboot, SeekActor, SeekDeps};

/// Why an apply started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
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
pub(super) fn target_digest(target: &serde_json::Value) -> u64 {
    unfinished::digest(target)
}

impl SeekActor {
    /// A new target: apply now, interrupt the running apply, or queue behind it. A target that
    /// was given up is not retried unless it changed or `force` asks.
    pub(super) fn on_target(&mut self, req: Arc<TargetRequest>, ctx: &mut Context<Self>) {
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
    pub(super) fn interrupt_apply(&mut self, ctx: &mut Context<Self>) -> bool {
        let Some(h) = self.applying.take() else {
            return false;
        };
        ctx.cancel_future(h);
        if let Some(t) = self.apply_started.take() {
            METRICS.apply(ApplyResult::Interrupted, t.elapsed());
        }
        true
    }

    pub(super) fn start_apply(
        &mut self,
        req: Arc<TargetRequest>,
        cause: Cause,
        ctx: &mut Context<Self>,
    ) {
        if let Some(h) = self.retry.take() {
            ctx.cancel_future(h);
        }
        let target: DeviceTarget = match serde_json::from_value((*req.target).clone()) {
            Ok(t) => t,
            Err(e) => {
                error!(seq = req.seq, error:% = e, decision = "reject",
                    reason = "stored target does not fit the model"; "Target rejected");
                self.status = UpdateStatus::Rejected;
                self.deps.state.update(|c| {
                    c.seq = req.seq;
                    c.status = UpdateStatus::Rejected;
                });
                self.target = Some(req);
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
        // Sequence and status in one publish: a reader must never see the new target's
        // sequence with the previous apply's `done`.
        self.status = UpdateStatus::ApplyingChanges;
        self.deps.state.update(|c| {
            c.seq = req.seq;
            c.status = UpdateStatus::ApplyingChanges;
        });
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

    /// On target with the reboot breadcrumb newer than the boot: reboot, taking every update
    /// lock with the apply's `force` (spec/behaviours.md §13.5). Asked once per process: after
    /// the reboot a new process starts.
    pub(super) fn reboot_if_scheduled(&mut self, ctx: &mut Context<Self>) {
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

    /// Seeks the current target again, unless it was given up (then only re-reads the engine).
    pub(super) fn resume(&mut self, ctx: &mut Context<Self>) {
        match self.target.clone() {
            Some(t) if self.given_up.is_none() => self.start_apply(t, Cause::Target, ctx),
            _ => self.check_drift(ctx),
        }
    }

    /// Re-reads the engine and re-applies the target if the device drifted from it.
    pub(super) fn check_drift(&mut self, ctx: &mut Context<Self>) {
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
