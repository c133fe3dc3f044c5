//! ReportActor reads the current-state bus and reports the device state to the remote.
//! Owns: the last report sent.
//! Handles: nothing yet (reporting arrives with the remote issue).
//! Sends: nothing yet.
//! Restart: idle when the device is unmanaged.
use actix::Context;
use log::info;

use crate::supervise::{Restarts, Resumable};

pub struct ReportActor {
    managed: bool,
    restarts: Restarts,
}

impl ReportActor {
    pub fn new(managed: bool, restarts: Restarts) -> Self {
        ReportActor { managed, restarts }
    }
}

impl Resumable for ReportActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, _ctx: &mut Context<Self>) {
        let reason = if self.managed {
            "state reporting is not implemented yet"
        } else {
            "unmanaged: no remote to report to"
        };
        info!(actor = "report", decision = "idle", reason; "Report idle");
    }
}

crate::supervised_actor!(ReportActor);
