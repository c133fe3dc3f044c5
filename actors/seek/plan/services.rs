//! Service jobs: create, start, stop, kill and remove containers, hand-over, and recreation.
use std::time::{Duration, Instant};

use log::info;
use mahler::extract::{Args, Res, System, SystemTarget, Target, View};
use mahler::task::{enforce, with_io, Handler, Task, IO};

use crate::model::compose::{Condition, UpdateStrategy};
use crate::model::device::{container_name, Device, Service};
use crate::ports::engine::Engine;
use crate::ports::oci;
use crate::ports::store::Store;

use super::effects::{step, Effects, StepError};
use super::query::{
    app_images_present, image_present, other_release_has, resources_changing, target_service,
};
use super::APPS_KEY;

pub(super) fn create_container(
    svc: View<Option<Service>>,
    Args((app, release, name)): Args<(String, String, String)>,
    Target(tgt): Target<Service>,
    System(dev): System<Device>,
    SystemTarget(device_tgt): SystemTarget<Device>,
    fx: Res<Effects>,
) -> IO<Service, StepError> {
    enforce!(svc.is_none(), "{name} exists");
    enforce!(
        image_present(&dev, &tgt.image),
        "image {} not present yet",
        tgt.image
    );
    let cur_app = dev.apps.get(&app);
    let tgt_app = device_tgt.apps.get(&app);
    for n in tgt.config.network_names() {
        enforce!(
            cur_app.and_then(|a| a.networks.get(&n)).map(|x| &x.config)
                == tgt_app.and_then(|a| a.networks.get(&n)).map(|x| &x.config),
            "network {n} not ready"
        );
    }
    // A volume that is to be recreated is not ready either: a container created on the old
    // one would hold it and block its recreation (as for networks above).
    for v in tgt.config.volume_names() {
        enforce!(
            cur_app.and_then(|a| a.volumes.get(&v)).is_some_and(|x| {
                tgt_app
                    .and_then(|a| a.volumes.get(&v))
                    .is_none_or(|t| t.config == x.config)
            }),
            "volume {v} not ready"
        );
    }
    if let Some(other) = tgt
        .config
        .network_mode
        .as_deref()
        .and_then(|m| m.strip_prefix("service:"))
    {
        enforce!(
            cur_app
                .and_then(|a| a.releases.get(&release))
                .is_some_and(|r| r.services.contains_key(other)),
            "network_mode service:{other} waits for {other}"
        );
    }
    if tgt.config.update_strategy() != UpdateStrategy::HandOver {
        enforce!(
            !other_release_has(&dev, &app, &release, &name),
            "the old container of {name} goes first"
        );
    }
    let svc = svc.create(Service {
        id: tgt.id,
        image: tgt.image.clone(),
        running: false,
        config: tgt.config.clone(),
        container: None,
    });
    with_io(svc, move |mut svc| async move {
        let Some(fx) = fx.as_ref() else {
            return Ok(svc);
        };
        let cname = container_name(&name, &release);
        let inspect = step("create", &app, &release, &name, async {
            fx.locks.ensure_dir(&app)?;
            let (app_id, app_name) = {
                let a = tgt_app_meta(&fx.store, &app);
                (a.0, a.1)
            };
            let extra_env = fx
                .supervisor_api
                .container_env(app_id, &name, &svc.config)?;
            let ctx = oci::ServiceContext {
                app_uuid: &app,
                app_id,
                app_name: app_name.as_deref(),
                service_name: &name,
                service_id: svc.id,
                release: &release,
                device_uuid: &fx.device_uuid,
                device_name: fx.device_name.as_deref(),
                host_os: fx.host_os.as_ref(),
                host_runtime_dir: &fx.host_runtime_dir,
                image: &svc.image,
                extra_env: &extra_env,
            };
            let (body, connect) = oci::container_create_body(&ctx, &svc.config);
            // A leftover of an interrupted create with the same name: replace it.
            fx.engine.remove_container(&cname).await?;
            Ok(fx.engine.create_container(&cname, body, connect).await?)
        })
        .await?;
        if let Some(rb) = oci::read_container(&inspect) {
            svc.container = Some(rb.container);
        }
        Ok(svc)
    })
}

/// App id and name as recorded in the store (the record is written before any container).
fn tgt_app_meta(store: &Store, app: &str) -> (u32, Option<String>) {
    store
        .get_json(APPS_KEY)
        .ok()
        .flatten()
        .and_then(|v| v.get(app).cloned())
        .map(|r| {
            (
                r.get("id")
                    .and_then(|i| i.as_u64())
                    .and_then(|i| u32::try_from(i).ok())
                    .unwrap_or(0),
                r.get("name").and_then(|n| n.as_str()).map(str::to_string),
            )
        })
        .unwrap_or((0, None))
}

pub(super) fn start_container(
    mut svc: View<Service>,
    Args((app, release, name)): Args<(String, String, String)>,
    Target(tgt): Target<Service>,
    System(dev): System<Device>,
    SystemTarget(device_tgt): SystemTarget<Device>,
    fx: Res<Effects>,
) -> IO<Service, StepError> {
    enforce!(tgt.running && !svc.running, "{name}: nothing to start");
    enforce!(
        svc.config == tgt.config && svc.image == tgt.image,
        "{name} must be recreated first"
    );
    enforce!(
        app_images_present(&dev, device_tgt.apps.get(&app)),
        "{name} starts once every image of the app is present"
    );
    let rel = dev.apps.get(&app).and_then(|a| a.releases.get(&release));
    let tgt_rel = device_tgt
        .apps
        .get(&app)
        .and_then(|a| a.releases.get(&release));
    let mut waits = vec![];
    for (dep, cond) in tgt.config.dependencies() {
        let cur = rel.and_then(|r| r.services.get(&dep));
        let want = tgt_rel.and_then(|r| r.services.get(&dep));
        enforce!(
            cur.is_some_and(
                |c| c.running && want.is_some_and(|w| w.config == c.config && w.image == c.image)
            ),
            "{name} waits for {dep} to start"
        );
        if cond != Condition::ServiceStarted {
            waits.push((container_name(&dep, &release), cond));
        }
    }
    svc.running = true;
    with_io(svc, move |mut svc| async move {
        let Some(fx) = fx.as_ref() else {
            return Ok(svc);
        };
        let cname = container_name(&name, &release);
        let inspect = step("start", &app, &release, &name, async {
            for (dep, cond) in &waits {
                wait_condition(&fx.engine, dep, *cond).await?;
            }
            fx.engine.start(&cname).await?;
            Ok(fx.engine.inspect(&cname).await?)
        })
        .await?;
        if let Some(rb) = oci::read_container(&inspect) {
            svc.container = Some(rb.container);
        }
        Ok(svc)
    })
}

/// Waits (bounded) until a dependency is healthy or has completed successfully.
async fn wait_condition(
    engine: &Engine,
    container: &str,
    cond: Condition,
) -> Result<(), StepError> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let i = engine.inspect(container).await?;
        let state = i.state.unwrap_or_default();
        let ok = match cond {
            Condition::ServiceStarted => true,
            Condition::ServiceHealthy => state
                .health
                .and_then(|h| h.status)
                .is_some_and(|s| s == bollard::models::HealthStatusEnum::HEALTHY),
            Condition::ServiceCompletedSuccessfully => {
                state.running != Some(true)
                    && state.exit_code == Some(0)
                    && state
                        .finished_at
                        .as_deref()
                        .is_some_and(|f| !f.starts_with("0001"))
            }
        };
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StepError::Timeout(format!(
                "{container} did not reach {cond:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) fn stop_container(
    mut svc: View<Service>,
    Args((app, release, name)): Args<(String, String, String)>,
    Target(tgt): Target<Service>,
    fx: Res<Effects>,
) -> IO<Service, StepError> {
    enforce!(!tgt.running && svc.running, "{name}: nothing to stop");
    enforce!(
        svc.config == tgt.config && svc.image == tgt.image,
        "{name} is recreated instead"
    );
    svc.running = false;
    with_io(svc, move |mut svc| async move {
        if let Some(fx) = fx.as_ref() {
            let cname = container_name(&name, &release);
            let inspect = step("stop", &app, &release, &name, async {
                fx.locks.take(&app, fx.force)?;
                fx.engine.stop(&cname, stop_timeout(&svc)).await?;
                Ok(fx.engine.inspect(&cname).await?)
            })
            .await?;
            if let Some(rb) = oci::read_container(&inspect) {
                svc.container = Some(rb.container);
            }
        }
        Ok(svc)
    })
}

fn stop_timeout(svc: &Service) -> i32 {
    svc.config.stop_request_secs()
}

/// Stops a container (part of removing it). Takes the app's update lock.
pub(super) fn kill_container(
    mut svc: View<Service>,
    Args((app, release, name)): Args<(String, String, String)>,
    fx: Res<Effects>,
) -> IO<Service, StepError> {
    enforce!(svc.running, "{name} is not running");
    svc.running = false;
    with_io(svc, move |svc| async move {
        if let Some(fx) = fx.as_ref() {
            step("kill", &app, &release, &name, async {
                fx.locks.take(&app, fx.force)?;
                Ok(fx
                    .engine
                    .stop(&container_name(&name, &release), stop_timeout(&svc))
                    .await?)
            })
            .await?;
        }
        Ok(svc)
    })
}

pub(super) fn remove_container(
    mut svc: View<Option<Service>>,
    Args((app, release, name)): Args<(String, String, String)>,
    fx: Res<Effects>,
) -> IO<Option<Service>, StepError> {
    enforce!(
        svc.as_ref().is_some_and(|s| !s.running),
        "{name} must be stopped first"
    );
    svc.take();
    with_io(svc, move |svc| async move {
        if let Some(fx) = fx.as_ref() {
            step("remove", &app, &release, &name, async {
                fx.locks.take(&app, fx.force)?;
                Ok(fx
                    .engine
                    .remove_container(&container_name(&name, &release))
                    .await?)
            })
            .await?;
        }
        Ok(svc)
    })
}

/// Hand-over: wait until the new service says it has taken over (it creates
/// `/tmp/balena/handover-complete`) or the timeout passes.
pub(super) fn wait_handover(
    svc: View<Service>,
    Args((app, release, name)): Args<(String, String, String)>,
    SystemTarget(tgt): SystemTarget<Device>,
    fx: Res<Effects>,
) -> IO<Service, StepError> {
    let timeout = target_service(&tgt, &app, &name)
        .map(|(_, s)| s.config.handover_timeout())
        .unwrap_or(Duration::from_secs(60));
    with_io(svc, move |svc| async move {
        if let Some(fx) = fx.as_ref() {
            step("wait hand-over", &app, &release, &name, async {
                let file = fx.locks.dir(&app).join("handover-complete");
                let deadline = Instant::now() + timeout;
                loop {
                    if file.exists() {
                        let _ = std::fs::remove_file(&file);
                        info!(app:% = app, service:% = name, decision = "handover",
                            reason = "handover-complete signalled"; "Hand-over complete");
                        break;
                    }
                    if Instant::now() >= deadline {
                        info!(app:% = app, service:% = name, decision = "handover",
                            reason = "timeout"; "Hand-over timed out");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(())
            })
            .await?;
        }
        Ok(svc)
    })
}

/// A service that is gone from the target (or replaced by a new release): stop and remove it,
/// when its update strategy allows.
pub(super) fn kill_service(
    svc: View<Service>,
    Args((app, release, name)): Args<(String, String, String)>,
    System(dev): System<Device>,
    SystemTarget(tgt): SystemTarget<Device>,
) -> Vec<Task> {
    let mut tasks = vec![];
    if let Some((new_rel, new)) = target_service(&tgt, &app, &name).filter(|(r, _)| **r != release)
    {
        match new.config.update_strategy() {
            UpdateStrategy::DownloadThenKill => {
                if !app_images_present(&dev, tgt.apps.get(&app)) {
                    return vec![];
                }
            }
            // A new service that is not to run cannot take over, and one whose network or
            // volume must be recreated cannot start beside the old container that holds it:
            // as download-then-kill.
            UpdateStrategy::HandOver
                if !new.running || resources_changing(&dev, &tgt, &app, new) =>
            {
                if !app_images_present(&dev, tgt.apps.get(&app)) {
                    return vec![];
                }
            }
            UpdateStrategy::HandOver => {
                let started = dev
                    .apps
                    .get(&app)
                    .and_then(|a| a.releases.get(new_rel))
                    .and_then(|r| r.services.get(&name))
                    .is_some_and(|s| s.running);
                if !started {
                    return vec![];
                }
                if svc.running {
                    tasks.push(wait_handover.into_task());
                }
            }
            UpdateStrategy::KillThenDownload | UpdateStrategy::DeleteThenDownload => {}
        }
    }
    if svc.running {
        tasks.push(kill_container.into_task());
    }
    tasks.push(remove_container.into_task());
    tasks
}

/// Same release, different configuration (or a network/volume it uses changes): remove the
/// container; the create job makes the new one.
pub(super) fn recreate_service(
    svc: View<Service>,
    Args((app, _release, _name)): Args<(String, String, String)>,
    Target(tgt): Target<Service>,
    System(dev): System<Device>,
    SystemTarget(device_tgt): SystemTarget<Device>,
) -> Vec<Task> {
    let differs = svc.config != tgt.config || svc.image != tgt.image;
    if !differs && !resources_changing(&dev, &device_tgt, &app, &tgt) {
        return vec![];
    }
    if tgt.config.update_strategy() == UpdateStrategy::DownloadThenKill
        && !app_images_present(&dev, device_tgt.apps.get(&app))
    {
        return vec![];
    }
    let mut tasks = vec![];
    if svc.running {
        tasks.push(kill_container.into_task());
    }
    tasks.push(remove_container.into_task());
    tasks
}
