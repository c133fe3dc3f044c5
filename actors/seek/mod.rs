//! SeekActor drives the engine from the current state to the target state.
//! Owns: the engine connection, its event stream, and the `engine` capability.
//! Handles: targets from the TargetBus (a watch stream), engine events.
//! Sends: the current state on the StateBus, capability changes on the CapsBus.
//! Restart: reconnects to the engine (waiting with backoff while it is missing) and re-reads the
//! current state from it; an engine event stream that breaks is a failure that restarts it.
use std::sync::Arc;
use std::time::Duration;

use actix::{ActorContext, ActorFutureExt, AsyncContext, Context, StreamHandler, WrapFuture};
use log::{debug, info, warn};
use tokio_stream::wrappers::WatchStream;

use crate::bus::{CapsBus, StateBus, TargetBus, TargetRequest};
use crate::model::EngineInfo;
use crate::ports::engine::{Engine, EngineError, EngineSettings};
use crate::supervise::{Restarts, Resumable};
use crate::ErrorChain;

#[derive(Debug, Clone, PartialEq)]
pub struct SeekSettings {
    /// Pause before re-planning after a failed apply.
    pub local_retry_interval: Duration,
}

const CONNECT_MIN: Duration = Duration::from_millis(500);
const CONNECT_MAX: Duration = Duration::from_secs(30);

pub struct SeekActor {
    settings: SeekSettings,
    engine_settings: EngineSettings,
    targets: TargetBus,
    state: StateBus,
    caps: CapsBus,
    restarts: Restarts,
    engine: Option<Engine>,
    connect_backoff: Duration,
    waiting_logged: bool,
}

impl SeekActor {
    pub fn new(
        settings: SeekSettings,
        engine_settings: EngineSettings,
        targets: TargetBus,
        state: StateBus,
        caps: CapsBus,
        restarts: Restarts,
    ) -> Self {
        SeekActor {
            settings,
            engine_settings,
            targets,
            state,
            caps,
            restarts,
            engine: None,
            connect_backoff: CONNECT_MIN,
            waiting_logged: false,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let settings = self.engine_settings.clone();
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
        let lost = self.caps.update(|c| c.engine = None);
        let delay = self.connect_backoff;
        if lost || !self.waiting_logged {
            warn!(capability = "engine", address:% = self.engine_settings, error:% = ErrorChain(&e),
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
        if self.caps.update(|c| c.engine = Some(info.clone())) {
            info!(capability = "engine", address:% = self.engine_settings, version:% = info.version,
                api_version:% = info.api_version, decision = "found"; "Capability found");
        }
        ctx.add_stream(engine.events());
        self.engine = Some(engine);
        self.refresh(ctx);
        ctx.add_stream(WatchStream::new(self.targets.subscribe()));
    }

    /// Re-reads the current state from the engine and publishes it.
    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let Some(engine) = self.engine.clone() else {
            return;
        };
        ctx.spawn(
            async move { engine.supervised_containers().await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(names) => {
                        debug!(containers = names.len(), decision = "read"; "Current state read from the engine");
                    }
                    Err(e) => {
                        act.restarts.failed(format!("reading the engine failed: {}", ErrorChain(&e)));
                        ctx.stop();
                    }
                }),
        );
    }
}

impl Resumable for SeekActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, ctx: &mut Context<Self>) {
        self.engine = None;
        let _ = (&self.settings, &self.state);
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
                debug!(kind:? = ev.typ, action:? = ev.action, decision = "refresh"; "Engine event");
                self.refresh(ctx);
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
    fn handle(&mut self, item: Option<Arc<TargetRequest>>, _ctx: &mut Context<Self>) {
        if let Some(t) = item {
            info!(seq = t.seq, source:% = t.source, decision = "defer",
                reason = "the planner is not implemented yet"; "Target received");
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}
