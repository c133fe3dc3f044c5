//! ProxyActor decides how requests between the legacy supervisor, the remote and user
//! containers are routed (the HTTP layer streams the bodies; they never enter a mailbox).
//! Owns: the legacy supervisor settings.
//! Handles: nothing yet (routing arrives with the proxy issue).
//! Sends: nothing yet.
//! Restart: idle when no legacy supervisor is configured.
use actix::Context;
use log::info;

use crate::supervise::{Restarts, Resumable};

pub struct ProxyActor {
    legacy_endpoint: Option<String>,
    restarts: Restarts,
}

impl ProxyActor {
    pub fn new(legacy_endpoint: Option<String>, restarts: Restarts) -> Self {
        ProxyActor {
            legacy_endpoint,
            restarts,
        }
    }
}

impl Resumable for ProxyActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, _ctx: &mut Context<Self>) {
        match &self.legacy_endpoint {
            None => info!(actor = "proxy", decision = "idle",
                reason = "no legacy supervisor configured"; "Proxy idle"),
            Some(e) => info!(actor = "proxy", legacy:% = e, decision = "idle",
                reason = "proxying is not implemented yet"; "Proxy idle"),
        }
    }
}

crate::supervised_actor!(ProxyActor);
