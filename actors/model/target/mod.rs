//! App target wire types (spec/helios-api-v3.md §4.5, target-state-v3.md §2.2–2.4) and the
//! one validation + normalisation path from them to the model's `App`, shared by remote and
//! local targets: whatever it rejects is rejected whole, before anything is created.
//!
//! Decisions where the specs are silent:
//! * bind sources: an allow-listed path or anything below it, compared by path components
//!   after dropping empty ones (`/sys/`, `//sys` → `/sys`); `.` and `..` components and
//!   relative paths are rejected; `/proc` only whole (nothing below it: `/proc/1/root` is the
//!   host's `/`). A textual rule, decided without looking at the host (helios may not share
//!   the engine's mount namespace, and links can change before the engine mounts): it keeps
//!   the rest of the host's filesystem out, it does not make an allowed bind harmless (a
//!   writable `/proc`, `/sys` or docker socket is root on the host, the release author's
//!   choice like `privileged`), nor follow links that a container allowed to write below an
//!   allow-listed path planted there;
//! * a volume whose `driver_opts.o` asks for a `bind`/`rbind` is a host bind too: its `device`
//!   follows the same allow-list, except in apps of class `app` (balena's own apps, like the
//!   supervisor app of target-state-v3.md §2 that binds `/tmp`);
//! * devices: host paths below `/dev` without `.` or `..` components;
//! * a `null` composition value means "not set"; unknown composition keys are ignored;
//! * `restart`: YAML's `no` may arrive as `false`; an unrecognised policy means `always`
//!   (behaviours.md §4.4);
//! * durations: compose strings (`1m30s`); a bare number means seconds;
//! * tmpfs `mode`: a string or number written in octal (`1777`), as in compose files;
//! * environment: list entries without `=` and `null` map values are dropped (there is no
//!   shell environment to take them from);
//! * `io.resin.*` labels are renamed `io.balena.*` (an `io.balena.*` label wins);
//! * names (release, service, network, volume, app uuid) must be engine-name safe; release
//!   and app uuids must not contain `_` (engine names are parsed at the last `_`).
//!
//! Files: wire.rs (the serde shapes), service.rs (a service and its composition), scalars.rs
//! (strings, numbers, sizes, durations), mounts.rs, host_access.rs (bind and device
//! allow-lists), ports.rs, resources.rs (the release's networks and volumes), image.rs.
mod host_access;
mod image;
mod mounts;
mod ports;
mod resources;
mod scalars;
mod service;
mod wire;

use std::collections::BTreeSet;

use mahler::state::Map;
use serde_json::Value;

use super::device::{App, Network, Release, Volume};

pub use host_access::{bind_source, is_device_path, BIND_ALLOW_LIST};
pub use image::normalise_image;
pub use ports::{parse_port, PortBudget, MAX_PORT_MAPPINGS};
pub use scalars::{parse_bytes, shell_split};
pub use wire::{AppTarget, ReleaseTarget, ServiceTarget};

use host_access::check_volume_bind;
use resources::{network_config, volume_config};
use service::{check_dependencies, service_from_target};

/// A target that cannot be applied; `field` is a path such as
/// `releases.<rel>.services.web.composition.volumes[1]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

pub(super) fn err(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Validates an app target and normalises it into the model: one release keyed by its uuid
/// with its services, and the release's networks (plus an implied `default`) and volumes as
/// the app's. Its ports count against a budget of their own ([`MAX_PORT_MAPPINGS`]).
pub fn app_from_target(app_uuid: &str, t: AppTarget) -> Result<App, ValidationError> {
    app_from_target_within(app_uuid, t, &mut PortBudget::default())
}

/// [`app_from_target`] with the port budget shared by the apps of one document: what this app
/// publishes is taken from `ports` (on success only).
pub fn app_from_target_within(
    app_uuid: &str,
    t: AppTarget,
    ports: &mut PortBudget,
) -> Result<App, ValidationError> {
    let mut budget = *ports;
    check_uuid(app_uuid, "uuid")?;
    if let Some(name) = &t.name {
        if name.len() > 255 {
            return Err(err("name", "longer than 255 characters"));
        }
    }
    if t.releases.len() > 1 {
        return Err(err(
            "releases",
            format!("at most one release per app, got {}", t.releases.len()),
        ));
    }
    let mut app = App {
        id: t.id,
        name: t.name,
        ..Default::default()
    };
    for (rel, r) in t.releases {
        let rel_path = format!("releases.{rel}");
        check_uuid(&rel, &rel_path)?;

        let mut volumes = Map::new();
        for (name, v) in &r.volumes {
            let path = format!("{rel_path}.volumes.{name}");
            check_name(name, &path)?;
            let config = volume_config(v, &path)?;
            if t.class.as_deref() != Some("app") {
                check_volume_bind(&config, &path)?;
            }
            volumes.insert(name.clone(), Volume { config });
        }
        let mut networks = Map::new();
        for (name, v) in &r.networks {
            let path = format!("{rel_path}.networks.{name}");
            check_name(name, &path)?;
            let config = network_config(v, &path)?;
            networks.insert(name.clone(), Network { config });
        }
        let declared = Declared {
            volumes: volumes.keys().cloned().collect(),
            networks: networks.keys().cloned().collect(),
        };

        let mut services = Map::new();
        for (name, s) in &r.services {
            let path = format!("{rel_path}.services.{name}");
            check_name(name, &path)?;
            let svc = service_from_target(s, &path, &declared, &mut budget)?;
            services.insert(name.clone(), svc);
        }
        check_dependencies(&services, &rel_path)?;

        let needs_default = services
            .values()
            .any(|s| s.config.networks.contains_key("default"));
        if needs_default && !networks.contains_key("default") {
            networks.insert(
                "default".to_string(),
                Network {
                    config: network_config(&Value::Null, "")?,
                },
            );
        }
        app.networks = networks;
        app.volumes = volumes;
        app.releases.insert(rel, Release { services });
    }
    *ports = budget;
    Ok(app)
}

/// What a release declares, for the services' references.
pub(super) struct Declared {
    pub(super) volumes: BTreeSet<String>,
    pub(super) networks: BTreeSet<String>,
}

fn check_uuid(v: &str, field: &str) -> Result<(), ValidationError> {
    check_name(v, field)?;
    if v.contains('_') {
        return Err(err(field, format!("{v:?} must not contain '_'")));
    }
    Ok(())
}

/// Engine-name safe: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 255 characters.
fn check_name(v: &str, field: &str) -> Result<(), ValidationError> {
    let ok = v.len() <= 255
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!(
                "{v:?} is not a valid name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 255 characters)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests;
