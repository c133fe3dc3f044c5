//! Device API actions on an app or one service (spec/device-api.md §4): restart, purge, stop,
//! start. They act on the engine directly, holding the app's update lock (423 when a user
//! holds it, unless `force`); SeekActor then seeks the target again, which re-creates what an
//! action removed.
//!
//! They run inside SeekActor as an `AtomicResponse`: its mailbox and streams wait, an apply in
//! progress is cancelled first (counted `interrupted`), a scheduled retry is dropped, and once
//! the action ends the locks are released and the target is sought again (or, for a target
//! given up, the engine only re-read). Restart removes the app's containers (or the one
//! service's) and the new apply creates new ones; purge removes the containers, then the
//! app's volumes, which the apply creates again empty; stop stops the container (10 s); start
//! starts it and takes no lock. A stopped service stays stopped: the model counts a container
//! that ran and exited as running, so the planner leaves it to the engine's restart policy.
//!
//! Volume cleanup (`CleanupVolumes`) removes supervised volumes that no container mounts and
//! the target does not declare; volumes helios did not create are never touched (unlike the
//! legacy supervisor).
use log::info;

use super::messages::{Action, ActionDone, ActionError, RunAction};
use crate::model::device::{container_name, scoped_name, App, Device};
use crate::ports::engine::Engine;
use crate::ports::locks::{LockError, Locks};

fn failed(e: impl std::fmt::Display) -> ActionError {
    ActionError::Failed(e.to_string())
}

fn lock(locks: &Locks, app: &str, force: bool) -> Result<(), ActionError> {
    locks.take(app, force).map_err(|e| match e {
        LockError::Locked { .. } => ActionError::Locked(e.to_string()),
        other => failed(other),
    })
}

/// Containers of the app as (service, container name, container id).
fn containers(app: &App) -> Vec<(String, String, String)> {
    app.releases
        .iter()
        .flat_map(|(rel, r)| {
            r.services.iter().map(move |(svc, s)| {
                (
                    svc.clone(),
                    container_name(svc, rel),
                    s.container
                        .as_ref()
                        .map(|c| c.id.clone())
                        .unwrap_or_default(),
                )
            })
        })
        .collect()
}

pub async fn run(
    engine: &Engine,
    locks: &Locks,
    model: &Device,
    msg: &RunAction,
) -> Result<ActionDone, ActionError> {
    let app = model.apps.get(&msg.app_uuid).ok_or_else(|| {
        ActionError::NotFound(format!("app {} is not on the device", msg.app_uuid))
    })?;
    let all = containers(app);
    let one = |svc: &str| {
        all.iter()
            .find(|(s, _, _)| s == svc)
            .cloned()
            .ok_or_else(|| {
                ActionError::NotFound(
                    "Service not found, a container must exist for this endpoint to work".into(),
                )
            })
    };
    info!(app:% = msg.app_uuid, action:? = msg.action, force = msg.force, decision = "act",
        reason = "device API request"; "Running a device API action");
    match &msg.action {
        Action::RestartApp | Action::PurgeApp => {
            lock(locks, &msg.app_uuid, msg.force)?;
            for (_, name, _) in &all {
                engine.remove_container(name).await.map_err(failed)?;
            }
            if msg.action == Action::PurgeApp {
                for vol in app.volumes.keys() {
                    engine
                        .remove_volume(&scoped_name(vol, &msg.app_uuid))
                        .await
                        .map_err(failed)?;
                }
                info!(app:% = msg.app_uuid, volumes = app.volumes.len(), decision = "purge"; "Purged data");
            }
            Ok(ActionDone::default())
        }
        Action::RestartService(svc) => {
            let (_, name, id) = one(svc)?;
            lock(locks, &msg.app_uuid, msg.force)?;
            engine.remove_container(&name).await.map_err(failed)?;
            Ok(ActionDone {
                container_id: Some(id),
            })
        }
        Action::StopService(svc) => {
            let (_, name, id) = one(svc)?;
            lock(locks, &msg.app_uuid, msg.force)?;
            engine.stop(&name, 10).await.map_err(failed)?;
            Ok(ActionDone {
                container_id: Some(id),
            })
        }
        Action::StartService(svc) => {
            let (_, name, id) = one(svc)?;
            engine.start(&name).await.map_err(failed)?;
            Ok(ActionDone {
                container_id: Some(id),
            })
        }
    }
}

/// Removes supervised volumes that no container mounts and the target does not declare.
/// Unlike the legacy supervisor, volumes helios did not create are never touched.
pub async fn cleanup_volumes(
    engine: &Engine,
    target: Option<&crate::model::device::DeviceTarget>,
    apps: Option<&[String]>,
) -> Result<usize, ActionError> {
    let objs = engine.read_objects().await.map_err(failed)?;
    let mounted: std::collections::BTreeSet<String> = objs
        .containers
        .iter()
        .flat_map(|c| c.mounts.clone().unwrap_or_default())
        .filter_map(|m| m.name)
        .collect();
    let mut removed = 0;
    for v in &objs.volumes {
        let Some((app, name, _)) = crate::ports::oci::read_volume(v) else {
            continue;
        };
        if apps.is_some_and(|a| !a.contains(&app)) {
            continue;
        }
        let kept = target
            .and_then(|t| t.apps.get(&app))
            .is_some_and(|a| a.volumes.contains_key(&name));
        let engine_name = scoped_name(&name, &app);
        if kept || mounted.contains(&engine_name) {
            continue;
        }
        engine.remove_volume(&engine_name).await.map_err(failed)?;
        info!(app:% = app, object:% = engine_name, decision = "remove", reason = "unused volume cleanup"; "Volume removed");
        removed += 1;
    }
    Ok(removed)
}
