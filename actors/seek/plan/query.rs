//! Queries over the model (pure), shared by the jobs.
use std::collections::BTreeMap;

use crate::model::device::{App, AppTarget, Device, DeviceTarget, ServiceTarget};

/// Every image the target wants, with the services that want it.
pub fn target_images(tgt: &DeviceTarget) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (app_uuid, app) in tgt.apps.iter() {
        for rel in app.releases.values() {
            for (name, svc) in rel.services.iter() {
                out.entry(svc.image.clone())
                    .or_default()
                    .push((app_uuid.clone(), name.clone()));
            }
        }
    }
    out
}

pub(super) fn image_present(dev: &Device, image: &str) -> bool {
    dev.images
        .get(image)
        .is_some_and(|i| i.oci_id.is_some() && i.download_progress >= 100)
}

/// All images of the app's target release are on the engine.
pub(super) fn app_images_present(dev: &Device, tgt_app: Option<&AppTarget>) -> bool {
    tgt_app.is_none_or(|a| {
        a.releases
            .values()
            .flat_map(|r| r.services.values())
            .all(|s| image_present(dev, &s.image))
    })
}

/// The target release of an app and its service of that name, if any.
pub(super) fn target_service<'a>(
    tgt: &'a DeviceTarget,
    app: &str,
    svc: &str,
) -> Option<(&'a String, &'a ServiceTarget)> {
    tgt.apps.get(app).and_then(|a| {
        a.releases
            .iter()
            .find_map(|(r, rel)| rel.services.get(svc).map(|s| (r, s)))
    })
}

/// A container of this service name in another release of the app (the one being replaced).
pub(super) fn other_release_has(dev: &Device, app: &str, release: &str, svc: &str) -> bool {
    dev.apps.get(app).is_some_and(|a| {
        a.releases
            .iter()
            .any(|(r, rel)| r != release && rel.services.contains_key(svc))
    })
}

/// Networks or volumes the service uses that differ between current and target.
pub(super) fn resources_changing(
    dev: &Device,
    tgt: &DeviceTarget,
    app: &str,
    svc: &ServiceTarget,
) -> bool {
    let (Some(cur), Some(want)) = (dev.apps.get(app), tgt.apps.get(app)) else {
        return false;
    };
    svc.config
        .network_names()
        .iter()
        .any(|n| cur.networks.get(n).map(|x| &x.config) != want.networks.get(n).map(|x| &x.config))
        || svc.config.volume_names().iter().any(|v| {
            cur.volumes.get(v).map(|x| &x.config) != want.volumes.get(v).map(|x| &x.config)
        })
}

pub(super) fn uses_network(app: &App, net: &str) -> bool {
    app.releases
        .values()
        .flat_map(|r| r.services.values())
        .any(|s| s.config.network_names().iter().any(|n| n == net))
}

pub(super) fn uses_volume(app: &App, vol: &str) -> bool {
    app.releases
        .values()
        .flat_map(|r| r.services.values())
        .any(|s| s.config.volume_names().iter().any(|v| v == vol))
}

pub(super) fn image_in_use(dev: &Device, image: &str) -> bool {
    dev.apps
        .values()
        .flat_map(|a| a.releases.values())
        .flat_map(|r| r.services.values())
        .any(|s| s.image == image)
}
