//! Network and volume jobs: create, remove, and recreate (first freeing them of their containers).
use mahler::extract::{Args, Res, System, SystemTarget, Target, View};
use mahler::task::{enforce, with_io, Handler, Task, IO};

use crate::model::device::{scoped_name, Device, DeviceTarget, Network, Service, Volume};
use crate::ports::oci;

use super::effects::{step, Effects, StepError};
use super::query::{app_images_present, uses_network, uses_volume};
use super::services::{kill_container, remove_container};

pub(super) fn create_network(
    net: View<Option<Network>>,
    Args((app, name)): Args<(String, String)>,
    Target(tgt): Target<Network>,
    fx: Res<Effects>,
) -> IO<Network, StepError> {
    enforce!(net.is_none(), "network {name} exists");
    let net = net.create(Network { config: tgt.config });
    with_io(net, move |net| async move {
        if let Some(fx) = fx.as_ref() {
            step("create network", &app, "", &name, async {
                let body = oci::network_create_body(&app, &name, &net.config);
                Ok(fx.engine.create_network(body).await?)
            })
            .await?;
        }
        Ok(net)
    })
}

pub(super) fn remove_network(
    mut net: View<Option<Network>>,
    Args((app, name)): Args<(String, String)>,
    System(dev): System<Device>,
    fx: Res<Effects>,
) -> IO<Option<Network>, StepError> {
    enforce!(net.is_some(), "network {name} is gone");
    enforce!(
        !dev.apps.get(&app).is_some_and(|a| uses_network(a, &name)),
        "network {name} is still used"
    );
    net.take();
    with_io(net, move |net| async move {
        if let Some(fx) = fx.as_ref() {
            step("remove network", &app, "", &name, async {
                Ok(fx.engine.remove_network(&scoped_name(&name, &app)).await?)
            })
            .await?;
        }
        Ok(net)
    })
}

/// Config changed: remove it (once unused) and create it again.
pub(super) fn recreate_network(
    net: View<Network>,
    Target(tgt): Target<Network>,
    Args((app, name)): Args<(String, String)>,
    System(dev): System<Device>,
    SystemTarget(device_tgt): SystemTarget<Device>,
) -> Vec<Task> {
    if net.config == tgt.config {
        return vec![];
    }
    let users = users_of(&dev, &app, |s| s.config.network_names().contains(&name));
    if !users.is_empty() {
        return remove_users(&dev, &device_tgt, &app, users);
    }
    vec![remove_network.into_task(), create_network.with_target(tgt)]
}

/// The containers of `app` (release, service) whose service `uses` a network or volume.
fn users_of(dev: &Device, app: &str, uses: impl Fn(&Service) -> bool) -> Vec<(String, String)> {
    dev.apps
        .get(app)
        .map(|a| {
            a.releases
                .iter()
                .flat_map(|(r, rel)| rel.services.iter().map(move |(n, s)| (r, n, s)))
                .filter(|(_, _, s)| uses(s))
                .map(|(r, n, _)| (r.clone(), n.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// A network or volume that must be recreated is held by containers: remove them first (the
/// create jobs make them again on the new one). A service whose own state already matches
/// the target is never visited by the service jobs, so only this can free the resource. As
/// download-then-kill: nothing is removed before every image of the app is present.
fn remove_users(
    dev: &Device,
    tgt: &DeviceTarget,
    app: &str,
    users: Vec<(String, String)>,
) -> Vec<Task> {
    if !app_images_present(dev, tgt.apps.get(app)) {
        return vec![];
    }
    let mut tasks = vec![];
    for (rel, svc) in users {
        let running = dev
            .apps
            .get(app)
            .and_then(|a| a.releases.get(&rel))
            .and_then(|r| r.services.get(&svc))
            .is_some_and(|s| s.running);
        if running {
            tasks.push(kill_container.with_arg("rel", &rel).with_arg("svc", &svc));
        }
        tasks.push(remove_container.with_arg("rel", &rel).with_arg("svc", &svc));
    }
    tasks
}

pub(super) fn create_volume(
    vol: View<Option<Volume>>,
    Args((app, name)): Args<(String, String)>,
    Target(tgt): Target<Volume>,
    fx: Res<Effects>,
) -> IO<Volume, StepError> {
    enforce!(vol.is_none(), "volume {name} exists");
    let vol = vol.create(Volume { config: tgt.config });
    with_io(vol, move |vol| async move {
        if let Some(fx) = fx.as_ref() {
            step("create volume", &app, "", &name, async {
                let body = oci::volume_create_body(&app, &name, &vol.config);
                Ok(fx.engine.create_volume(body).await?)
            })
            .await?;
        }
        Ok(vol)
    })
}

pub(super) fn remove_volume(
    mut vol: View<Option<Volume>>,
    Args((app, name)): Args<(String, String)>,
    System(dev): System<Device>,
    fx: Res<Effects>,
) -> IO<Option<Volume>, StepError> {
    enforce!(vol.is_some(), "volume {name} is gone");
    enforce!(
        !dev.apps.get(&app).is_some_and(|a| uses_volume(a, &name)),
        "volume {name} is still used"
    );
    vol.take();
    with_io(vol, move |vol| async move {
        if let Some(fx) = fx.as_ref() {
            step("remove volume", &app, "", &name, async {
                Ok(fx.engine.remove_volume(&scoped_name(&name, &app)).await?)
            })
            .await?;
        }
        Ok(vol)
    })
}

pub(super) fn recreate_volume(
    vol: View<Volume>,
    Target(tgt): Target<Volume>,
    Args((app, name)): Args<(String, String)>,
    System(dev): System<Device>,
    SystemTarget(device_tgt): SystemTarget<Device>,
) -> Vec<Task> {
    if vol.config == tgt.config {
        return vec![];
    }
    let users = users_of(&dev, &app, |s| s.config.volume_names().contains(&name));
    if !users.is_empty() {
        return remove_users(&dev, &device_tgt, &app, users);
    }
    vec![remove_volume.into_task(), create_volume.with_target(tgt)]
}
