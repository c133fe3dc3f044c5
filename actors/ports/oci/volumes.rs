//! Volumes: the create body and the read-back.
use std::collections::HashMap;

use bollard::models::VolumeCreateRequest;

use super::labels::{
    is_supervised, owner, user_labels, APP_UUID_LABEL, SUPERVISED_LABEL, VOLUME_NAME_LABEL,
};
use crate::model::compose::VolumeConfig;
use crate::model::device::scoped_name;

/// Volume create body: engine name `<name>_<app uuid>`, driver (default `local`), options and
/// labels.
pub fn volume_create_body(app_uuid: &str, name: &str, cfg: &VolumeConfig) -> VolumeCreateRequest {
    let mut labels: HashMap<String, String> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(SUPERVISED_LABEL.into(), String::new());
    labels.insert(VOLUME_NAME_LABEL.into(), name.into());
    labels.insert(APP_UUID_LABEL.into(), app_uuid.into());
    VolumeCreateRequest {
        name: Some(scoped_name(name, app_uuid)),
        driver: Some(cfg.driver.clone().unwrap_or_else(|| "local".to_string())),
        driver_opts: Some(
            cfg.driver_opts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        labels: Some(labels),
        ..Default::default()
    }
}

/// Reads a supervised volume back: (app uuid, logical name, config). None for others.
pub fn read_volume(v: &bollard::models::Volume) -> Option<(String, String, VolumeConfig)> {
    if !is_supervised(&v.labels) {
        return None;
    }
    let (app, name) = owner(&v.name, &v.labels, VOLUME_NAME_LABEL)?;
    Some((
        app,
        name,
        VolumeConfig {
            driver: Some(v.driver.clone()),
            driver_opts: v
                .options
                .iter()
                .map(|(k, val)| (k.clone(), val.clone()))
                .collect(),
            labels: user_labels(&v.labels, VOLUME_NAME_LABEL),
        },
    ))
}
