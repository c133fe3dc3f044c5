//! SeekActor's API: the messages it handles, and the plan preview.
use actix::Message;
use mahler::worker::{Uninitialized, Worker, Workflow};

use crate::model::device::{Device, DeviceTarget};

/// Sent by the API (`POST /v1/update` in unmanaged mode) and PollActor (304 after
/// `/v1/update`): apply the current target again, with these flags.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Reapply {
    pub force: bool,
    pub cancel: bool,
    pub reason: &'static str,
}

/// Sent by PollActor when a remote document could not be understood at all: the status
/// becomes `rejected`; nothing running changes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct MarkRejected {
    pub reason: String,
}

/// Sent by the API (`POST /v3/device/apps/{uuid}/plan`): the steps an apply of this target
/// would run from the current state, without running them.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<String>, PlanError>")]
pub struct PreviewPlan {
    pub target: DeviceTarget,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no sequence of steps reaches the target")]
    NotFound,
    #[error("planning failed: {0}")]
    Failed(String),
}

/// The steps of a workflow, in order, one description each.
pub fn steps(wf: &Workflow) -> Vec<String> {
    wf.to_string()
        .lines()
        .map(|l| {
            l.trim_start_matches([' ', '+', '~', '-'])
                .trim()
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// Plans `target` from `current` without IO.
pub fn preview(
    template: Worker<Device, Uninitialized>,
    current: Device,
    target: DeviceTarget,
) -> Result<Vec<String>, PlanError> {
    let target = super::current::prepare_target(target, &current);
    let worker = template
        .initial_state(current)
        .map_err(|e| PlanError::Failed(e.to_string()))?;
    match worker.find_workflow(&target) {
        Ok(Some(wf)) => Ok(steps(&wf)),
        Ok(None) => Err(PlanError::NotFound),
        Err(e) => Err(PlanError::Failed(e.to_string())),
    }
}

/// What a device API action does to an app (spec/device-api.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop and remove the app's containers, then apply the target (new containers).
    RestartApp,
    /// As restart, and also remove the app's volumes (created empty again).
    PurgeApp,
    /// Stop and remove one service's container, then apply the target.
    RestartService(String),
    /// Stop one service's container, keep it.
    StopService(String),
    /// Start one service's container (the apply creates it if missing).
    StartService(String),
}

/// Sent by the API (`/v1/restart`, `/v2/applications/:appId/restart-service`, ...): run an
/// action on an app now, interrupting any apply; the target is re-applied afterwards (except
/// after a stop).
#[derive(Debug, Message)]
#[rtype(result = "Result<ActionDone, ActionError>")]
pub struct RunAction {
    pub app_uuid: String,
    pub action: Action,
    pub force: bool,
}

/// The container the action worked on, when it was one service's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActionDone {
    pub container_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

/// Sent by the API (`GET /v2/cleanup-volumes`): remove helios' volumes that no container mounts
/// and that the target does not keep. Answers how many were removed.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, ActionError>")]
pub struct CleanupVolumes {
    /// Only volumes of these apps (the caller's scope); None = every app.
    pub apps: Option<Vec<String>>,
}
