//! How an apply ended and what follows: a retry after the interval, or, after `max_attempts`
//! counted failures, giving the target up (recorded in the store so a restart skips it too).
use actix::{AsyncContext, Context};
use log::{debug, error, info, warn};

use crate::model::UpdateStatus;
use crate::ports::store::{Durability, Store};
use crate::ErrorChain;

use super::apply::{target_digest, Cause};
use super::{plan, SeekActor};

/// Store key of the target Seek gave up on: `{"digest": "<16 hex>", "attempts": n}`.
pub const GIVEN_UP_KEY: &str = crate::ports::store::keys::GIVEN_UP;

pub(super) fn read_given_up(store: &Store) -> Option<(u64, u32)> {
    let v = store.get_json(GIVEN_UP_KEY).ok().flatten()?;
    let digest = u64::from_str_radix(v.get("digest")?.as_str()?, 16).ok()?;
    let attempts = v.get("attempts")?.as_u64()?;
    Some((digest, u32::try_from(attempts).unwrap_or(u32::MAX)))
}

/// How an apply ended.
pub(super) enum Outcome {
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
    pub(super) fn transient(reason: String) -> Outcome {
        Outcome::Failed {
            reason,
            transient: true,
        }
    }

    pub(super) fn permanent(reason: String) -> Outcome {
        Outcome::Failed {
            reason,
            transient: false,
        }
    }
}

/// Whether a workflow error is a fault of the environment (see [`plan::StepError::is_transient`]).
pub(super) fn error_is_transient(e: &mahler::error::Error) -> bool {
    e.source()
        .and_then(|b| b.downcast_ref::<plan::StepError>())
        .is_some_and(|s| s.is_transient())
}

impl SeekActor {
    pub(super) fn finished(&mut self, outcome: Outcome, ctx: &mut Context<Self>) {
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
    pub(super) fn forget_given_up(&mut self) {
        if self.given_up_stored.take().is_some() {
            if let Err(e) = self.deps.store.remove(GIVEN_UP_KEY) {
                warn!(error:% = ErrorChain(&e), decision = "continue",
                    reason = "a stale give-up stays stored; it only matches the same target"; "Give-up not removed");
            }
        }
    }

    pub(super) fn schedule_retry(&mut self, ctx: &mut Context<Self>) {
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
}
