//! The labels helios puts on engine objects, how it names them, and whose an object is.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const SUPERVISED_LABEL: &str = "io.balena.supervised";
pub(super) const LEGACY_SUPERVISED_LABEL: &str = "io.resin.supervised";
pub const APP_UUID_LABEL: &str = "io.balena.app-uuid";
pub const APP_ID_LABEL: &str = "io.balena.app-id";
pub const APP_NAME_LABEL: &str = "io.balena.app-name";
pub const SERVICE_NAME_LABEL: &str = "io.balena.service-name";
pub const SERVICE_ID_LABEL: &str = "io.balena.service-id";
pub const CONFIG_LABEL: &str = "io.balena.private.config";
pub const DEPENDS_ON_LABEL: &str = "io.balena.private.depends-on";
/// Set on the read-back config of a container whose config label is missing or unreadable.
pub const UNREADABLE_CONFIG_LABEL: &str = "io.balena.private.config-unreadable";
pub const NETWORK_NAME_LABEL: &str = "io.balena.network-name";
pub const VOLUME_NAME_LABEL: &str = "io.balena.volume-name";
pub const IPAM_CONFIG_LABEL: &str = "io.balena.private.ipam.config";
pub const IPAM_OPTIONS_LABEL: &str = "io.balena.private.ipam.options";
pub const DRIVER_OPTS_LABEL: &str = "io.balena.private.driver-opts";

/// App uuid of a supervised container without an app-uuid label (spec §6.1).
pub const UNKNOWN_APP: &str = "10c401";
/// Release of a supervised container whose name is not `<service>_<release>` (spec §6.1).
pub const UNKNOWN_RELEASE: &str = "10ca12e1ea5e";

/// Where update locks and the hand-over breadcrumb live in every service container.
pub const LOCK_TARGETS: [&str; 2] = ["/tmp/balena", "/tmp/resin"];

/// `<host runtime dir>/update-locks/<app uuid>`: bound at `/tmp/balena` and `/tmp/resin` in
/// every container of the app. The caller creates it before creating a container.
pub fn update_lock_dir(host_runtime_dir: &Path, app_uuid: &str) -> PathBuf {
    host_runtime_dir.join("update-locks").join(app_uuid)
}

pub(super) fn is_supervised(labels: &HashMap<String, String>) -> bool {
    labels.contains_key(SUPERVISED_LABEL) || labels.contains_key(LEGACY_SUPERVISED_LABEL)
}

/// The engine name and labels of an object: (app uuid, logical name) from the labels, or
/// parsed from `<name>_<app uuid>`.
pub(super) fn owner(
    engine_name: &str,
    labels: &HashMap<String, String>,
    name_label: &str,
) -> Option<(String, String)> {
    let parsed = engine_name.rsplit_once('_');
    let app = labels
        .get(APP_UUID_LABEL)
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| parsed.map(|(_, a)| a.to_string()))?;
    let name = labels
        .get(name_label)
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| {
            engine_name
                .strip_suffix(&format!("_{app}"))
                .map(str::to_string)
        })?;
    Some((app, name))
}

pub(super) fn user_labels(
    labels: &HashMap<String, String>,
    name_label: &str,
) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !(k == SUPERVISED_LABEL
                || k == LEGACY_SUPERVISED_LABEL
                || k == APP_UUID_LABEL
                || k == name_label
                || k.starts_with("io.balena.private."))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
