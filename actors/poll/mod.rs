//! PollActor talks to the remote: registration, then polling the target state.
//! Owns: the remote settings and the poll schedule.
//! Handles: nothing yet (TriggerPoll arrives with the remote issue).
//! Sends: targets on the TargetBus.
//! Restart: re-reads its settings; idle when the device is unmanaged.
use std::time::Duration;

use actix::Context;
use log::{info, warn};

use crate::supervise::{Restarts, Resumable};

pub mod register;

/// How to reach the remote (spec/helios-api-v3.md §2.1, §5).
#[derive(Clone, PartialEq)]
pub struct RemoteSettings {
    pub endpoint: String,
    /// None until registered.
    pub api_key: Option<String>,
    pub uuid: String,
    pub request_timeout: Duration,
    pub poll_interval: Duration,
    pub poll_min_interval: Duration,
    pub poll_max_jitter: Duration,
}

impl std::fmt::Debug for RemoteSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSettings")
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("uuid", &self.uuid)
            .field("request_timeout", &self.request_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("poll_min_interval", &self.poll_min_interval)
            .field("poll_max_jitter", &self.poll_max_jitter)
            .finish()
    }
}

pub struct PollActor {
    remote: Option<RemoteSettings>,
    restarts: Restarts,
}

impl PollActor {
    pub fn new(remote: Option<RemoteSettings>, restarts: Restarts) -> Self {
        PollActor { remote, restarts }
    }
}

impl Resumable for PollActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, _ctx: &mut Context<Self>) {
        match &self.remote {
            None => info!(actor = "poll", decision = "idle",
                reason = "unmanaged: no remote configured"; "Poll idle"),
            Some(r) => warn!(actor = "poll", endpoint:% = r.endpoint, decision = "idle",
                reason = "remote polling is not implemented yet"; "Poll idle"),
        }
    }
}

crate::supervised_actor!(PollActor);
