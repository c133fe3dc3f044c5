//! Restart bookkeeping shared by every supervised actor: exponential backoff between restarts,
//! and escalation (process exit) when an actor restarts too often within a window.
//!
//! actix's `Supervisor` restarts an actor as soon as it stops; it does not restart one whose
//! handler panicked. So handlers turn failures into `ctx.stop()` with a log line, the actor's
//! `Supervised::restarting` calls [`Restarts::record`], and `started` waits the returned delay
//! before it resumes work. Escalation goes to `src/` through a [`FatalSender`], which stops the
//! whole process with a documented exit code so systemd or the engine restarts it.
//!
//! Every actor implements [`Resumable`] (`restarts()`, `begin()`) and `supervised_actor!`
//! writes its `Actor`/`Supervised` impls: `restarting()` records the restart (backoff from
//! `supervision.backoff_initial_ms`, doubling to `backoff_max_ms`) and `started()` waits that
//! delay before `begin()`, which (re)starts the actor's streams, timers and probes. The actor
//! struct survives its restarts, so whatever `begin()` does not reset carries over. More than
//! `supervision.max_restarts` restarts within `restart_window_ms` escalate: a [`Fatal`] goes to
//! `startup.rs`, which ends the process with exit code 3.
//!
//! A missing dependency is not a failure: SeekActor waits for the engine with its own backoff
//! (the `engine` capability is lost, the API keeps answering), HostActor probes the bus the
//! same way. A broken stream is one (SeekActor's engine events: it restarts and reconnects).
//!
//! Release builds abort on panic (`panic = "abort"` in Cargo.toml's release profile): a panic
//! anywhere is a process crash, which systemd (`Restart=always`) or the engine (`restart: always`)
//! answers by starting helios again, and crashes are what the store and the apply loop are built to
//! survive (`scripts/crash`). The only thing a restart cannot fix is a crash that repeats at every
//! start; the two steps that could do that run under unfinished-work markers (ports/unfinished.rs).
//! Test and debug builds unwind instead.
use std::collections::VecDeque;
use std::time::Duration;

use log::{error, info, warn};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// More restarts than this within `window` escalate.
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_restarts: 10,
            window: Duration::from_secs(300),
        }
    }
}

/// Why the process must end: an actor exhausted its restart budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Fatal {
    pub actor: &'static str,
    pub reason: String,
}

pub type FatalSender = mpsc::UnboundedSender<Fatal>;

/// Restart history of one actor. Lives in the actor struct, which the Supervisor keeps across
/// restarts.
#[derive(Debug)]
pub struct Restarts {
    actor: &'static str,
    policy: RestartPolicy,
    history: VecDeque<Instant>,
    fatal: FatalSender,
    pending: Duration,
    last_reason: String,
}

impl Restarts {
    pub fn new(actor: &'static str, policy: RestartPolicy, fatal: FatalSender) -> Self {
        Restarts {
            actor,
            policy,
            history: VecDeque::new(),
            fatal,
            pending: Duration::ZERO,
            last_reason: String::new(),
        }
    }

    /// Remember why the actor is about to stop (logged with the restart).
    pub fn failed(&mut self, reason: impl Into<String>) {
        self.last_reason = reason.into();
        warn!(actor = self.actor, reason:% = self.last_reason, decision = "restart"; "Actor failed, stopping it for a restart");
    }

    /// Called from `Supervised::restarting`: records the restart and computes the backoff, or
    /// escalates when the budget is spent.
    pub fn record(&mut self) {
        let now = Instant::now();
        while self
            .history
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.history.pop_front();
        }
        self.history.push_back(now);
        let recent = self.history.len() as u32;
        if recent > self.policy.max_restarts {
            error!(actor = self.actor, restarts = recent, window_ms = self.policy.window.as_millis() as u64,
                reason:% = self.last_reason, decision = "escalate"; "Actor restarts too often, ending the process");
            let _ = self.fatal.send(Fatal {
                actor: self.actor,
                reason: format!(
                    "{recent} restarts within {:?}; last: {}",
                    self.policy.window, self.last_reason
                ),
            });
        }
        let exp = recent.saturating_sub(1).min(20);
        let delay = self
            .policy
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.policy.backoff_max);
        self.pending = delay;
        info!(actor = self.actor, attempt = recent, delay_ms = delay.as_millis() as u64,
            decision = "restart"; "Actor restarting after backoff");
    }

    /// The delay `started` must wait before resuming work (zero on the first start).
    pub fn take_delay(&mut self) -> Duration {
        std::mem::take(&mut self.pending)
    }

    pub fn count(&self) -> usize {
        self.history.len()
    }
}

/// An actor that resumes its work after the restart backoff. `supervised_actor!` implements
/// `Actor` and `Supervised` for it in terms of these two methods.
pub trait Resumable: actix::Actor<Context = actix::Context<Self>> {
    fn restarts(&mut self) -> &mut Restarts;
    /// Starts (or restarts) the actor's work: streams, timers, first probes.
    fn begin(&mut self, ctx: &mut actix::Context<Self>);
}

/// `started` for a [`Resumable`]: begins now, or after the pending restart backoff.
pub fn begin_after_backoff<A: Resumable>(act: &mut A, ctx: &mut actix::Context<A>) {
    use actix::AsyncContext;
    let delay = act.restarts().take_delay();
    if delay.is_zero() {
        act.begin(ctx);
    } else {
        ctx.run_later(delay, |a, ctx| a.begin(ctx));
    }
}

/// Implements `Actor` and `Supervised` for a [`Resumable`] actor.
#[macro_export]
macro_rules! supervised_actor {
    ($t:ty) => {
        impl actix::Actor for $t {
            type Context = actix::Context<Self>;
            fn started(&mut self, ctx: &mut Self::Context) {
                $crate::supervise::begin_after_backoff(self, ctx);
            }
        }
        impl actix::Supervised for $t {
            fn restarting(&mut self, _ctx: &mut Self::Context) {
                $crate::supervise::Resumable::restarts(self).record();
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            max_restarts: 3,
            window: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn backoff_doubles_caps_and_escalates() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut r = Restarts::new("test", policy(), tx);
        assert_eq!(r.take_delay(), Duration::ZERO);
        let mut delays = vec![];
        for _ in 0..3 {
            r.failed("boom");
            r.record();
            delays.push(r.take_delay());
        }
        assert_eq!(
            delays,
            [100, 200, 350].map(Duration::from_millis).to_vec(),
            "doubling from the initial backoff, capped"
        );
        assert!(rx.try_recv().is_err(), "3 restarts are within the budget");
        r.failed("boom again");
        r.record();
        let fatal = rx.try_recv().expect("the 4th restart escalates");
        assert_eq!(fatal.actor, "test");
        assert!(fatal.reason.contains("boom again"), "{}", fatal.reason);
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_outside_the_window_are_forgotten() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut r = Restarts::new("test", policy(), tx);
        for _ in 0..3 {
            r.record();
        }
        tokio::time::sleep(Duration::from_secs(61)).await;
        r.record();
        assert_eq!(r.count(), 1);
        assert_eq!(
            r.take_delay(),
            Duration::from_millis(100),
            "backoff starts over"
        );
        assert!(rx.try_recv().is_err());
    }
}
