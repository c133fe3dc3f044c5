//! The actor's side of host OS updates: the host part of every target evaluated, waited for and
//! installed (the records, the decision and the install steps are hup.rs's).
use std::sync::Arc;
use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, StreamHandler, WrapFuture};
use log::{debug, error, info, warn};

use crate::bus::TargetRequest;
use crate::model::host::{HostPhase, HostState, HostTarget};
use crate::ports::engine::Engine;
use crate::ports::store::Durability;
use crate::ErrorChain;

use super::{hup, HostActor};

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
    pub(super) fn evaluate(&mut self, ctx: &mut Context<Self>) {
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
