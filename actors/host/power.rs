//! Power: reboot or power off through logind, holding every app's update lock.
use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use log::{info, warn};

use crate::ErrorChain;

use super::{HostActor, HostError, Power};

/// How long after answering the API the reboot or power-off is asked for.
const POWER_DELAY: Duration = Duration::from_secs(1);

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
