//! Reading the current state: engine objects (supervised containers, networks, volumes, images)
//! plus the store's app records become the planner's `Device`; and rendering that `Device` as
//! the current-state document of spec/helios-api-v3.md §4.4.
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map as JsonMap, Value};

use crate::model::device::{scoped_name, App, Device, DeviceTarget, Image, Network, Volume};
use crate::model::DeviceState;
use crate::ports::engine::EngineObjects;
use crate::ports::locks::Locks;
use crate::ports::oci;

/// App records kept in the store: id and name by app uuid.
pub type AppRecords = BTreeMap<String, (u32, Option<String>)>;

pub fn parse_records(v: Option<Value>) -> AppRecords {
    v.and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, r)| {
            let id = r
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0);
            let name = r.get("name").and_then(Value::as_str).map(str::to_string);
            (k, (id, name))
        })
        .collect()
}

/// References an engine image is known by: tags and digests.
fn references(img: &bollard::models::ImageSummary) -> impl Iterator<Item = &String> {
    img.repo_tags
        .iter()
        .chain(img.repo_digests.iter())
        .filter(|r| !r.starts_with("<none>"))
}

/// In front of a legacy supervisor: removes from `objs` the containers, networks and volumes
/// of apps helios does not own (`owned`: recorded by helios or in its target) and returns
/// those apps, so helios never stops or removes what the legacy supervisor runs.
pub fn drop_foreign(objs: &mut EngineObjects, owned: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let mut foreign = BTreeSet::new();
    let mut keep = |app: Option<String>| match app {
        Some(a) if owned(&a) => true,
        Some(a) => {
            foreign.insert(a);
            false
        }
        // Not an app object helios can read: it is not helios's either.
        None => false,
    };
    objs.containers
        .retain(|c| keep(oci::read_container(c).map(|r| r.app_uuid)));
    objs.networks
        .retain(|n| keep(oci::read_network(n).map(|(app, _, _)| app)));
    objs.volumes
        .retain(|v| keep(oci::read_volume(v).map(|(app, _, _)| app)));
    foreign.remove(oci::UNKNOWN_APP);
    foreign
}

/// The variable a supervisor-api container carries its key in.
pub const SUPERVISOR_API_KEY_VAR: &str = "BALENA_SUPERVISOR_API_KEY";

/// A container whose supervisor-API key was regenerated carries a key that is no longer its
/// own: its current config gets that variable (valued `<regenerated>`), so it equals no target
/// and the next apply recreates it with the new key (spec/device-api.md
/// `/v1/regenerate-api-key`: "the env difference causes the recreation").
pub fn mark_regenerated_keys(
    dev: &mut Device,
    objs: &EngineObjects,
    api: &crate::ports::apikeys::SupervisorApi,
) {
    for c in &objs.containers {
        let Some(rb) = oci::read_container(c) else {
            continue;
        };
        let env = c.config.as_ref().and_then(|cf| cf.env.as_ref());
        let Some(have) = env.and_then(|e| {
            e.iter()
                .find_map(|kv| kv.strip_prefix(SUPERVISOR_API_KEY_VAR)?.strip_prefix('='))
        }) else {
            continue;
        };
        let Ok(want) = api.keys.service_key(rb.app_id, &rb.service_name) else {
            continue;
        };
        if crate::ports::apikeys::constant_time_eq(have.as_bytes(), want.expose().as_bytes()) {
            continue;
        }
        let svc = dev
            .apps
            .get_mut(&rb.app_uuid)
            .and_then(|a| a.releases.get_mut(&rb.release))
            .and_then(|r| r.services.get_mut(&rb.service_name));
        if let Some(svc) = svc {
            svc.config
                .environment
                .insert(SUPERVISOR_API_KEY_VAR.into(), "<regenerated>".into());
        }
    }
}

/// Builds the planner's view of the device. Only images helios pulled, the target wants, or
/// a supervised container uses are part of it (so only those can be removed), and never one a
/// foreign container uses.
pub fn build_current(
    objs: &EngineObjects,
    records: &AppRecords,
    pulled: &BTreeSet<String>,
    wanted_images: &BTreeSet<String>,
    name: Option<String>,
) -> Device {
    let mut dev = Device {
        name,
        ..Default::default()
    };
    for (uuid, (id, name)) in records {
        dev.apps.insert(
            uuid.clone(),
            App {
                id: *id,
                name: name.clone(),
                ..Default::default()
            },
        );
    }
    let mut supervised_ids = BTreeSet::new();
    let mut used_refs = BTreeSet::new();
    for c in &objs.containers {
        let Some(rb) = oci::read_container(c) else {
            continue;
        };
        supervised_ids.insert(rb.image_id.clone());
        used_refs.insert(rb.image.clone());
        let app = dev.apps.entry(rb.app_uuid.clone()).or_insert_with(|| App {
            id: rb.app_id,
            name: rb.app_name.clone(),
            ..Default::default()
        });
        let rel = app.releases.entry(rb.release.clone()).or_default();
        rel.services.insert(
            rb.service_name.clone(),
            crate::model::device::Service {
                id: rb.service_id,
                image: rb.image,
                running: rb.running,
                config: rb.config,
                container: Some(rb.container),
            },
        );
    }
    for n in &objs.networks {
        if let Some((app, name, config)) = oci::read_network(n) {
            if let Some(a) = dev.apps.get_mut(&app) {
                a.networks.insert(name, Network { config });
            } else {
                // An orphan network (its app record is gone): keep it in the model under a
                // nameless app so the planner removes it.
                dev.apps
                    .entry(app)
                    .or_default()
                    .networks
                    .insert(name, Network { config });
            }
        }
    }
    for v in &objs.volumes {
        if let Some((app, name, config)) = oci::read_volume(v) {
            dev.apps
                .entry(app)
                .or_default()
                .volumes
                .insert(name, Volume { config });
        }
    }
    let foreign: BTreeSet<&String> = objs
        .images_in_use
        .iter()
        .filter(|id| !supervised_ids.contains(*id))
        .collect();
    for img in &objs.images {
        if foreign.contains(&img.id) {
            continue;
        }
        for r in references(img) {
            if pulled.contains(r) || wanted_images.contains(r) || used_refs.contains(r) {
                dev.images.insert(
                    r.clone(),
                    Image {
                        oci_id: Some(img.id.clone()),
                        download_progress: 100,
                    },
                );
            }
        }
    }
    dev
}

/// Prepares a target for the planner: adds the images its services need, and keeps the
/// volumes of apps that stay (volumes are only removed with their app, spec/behaviours.md §3.3).
pub fn prepare_target(mut tgt: DeviceTarget, current: &Device) -> DeviceTarget {
    let images: BTreeSet<String> = crate::seek::plan::target_images(&tgt).into_keys().collect();
    tgt.images = images
        .into_iter()
        .map(|i| (i, crate::model::device::ImageTarget {}))
        .collect();
    for (uuid, app) in tgt.apps.iter_mut() {
        if let Some(cur) = current.apps.get(uuid) {
            for (name, vol) in cur.volumes.iter() {
                if !app.volumes.contains_key(name) {
                    app.volumes.insert(
                        name.clone(),
                        crate::model::device::VolumeTarget {
                            config: vol.config.clone(),
                        },
                    );
                }
            }
        }
    }
    tgt
}

/// Engine images as the document lists them: every tagged image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineImages(pub BTreeMap<String, String>);

impl EngineImages {
    pub fn from_objects(objs: &EngineObjects) -> EngineImages {
        let mut m = BTreeMap::new();
        for img in &objs.images {
            for r in img.repo_tags.iter().filter(|r| !r.starts_with("<none>")) {
                m.insert(r.clone(), img.id.clone());
            }
        }
        EngineImages(m)
    }
}

/// Renders the current-state document (spec §4.4).
pub fn render(
    uuid: &str,
    dev: &Device,
    engine_images: &EngineImages,
    target: Option<&DeviceTarget>,
    locks: &Locks,
) -> DeviceState {
    let mut images: BTreeMap<String, Value> = engine_images
        .0
        .iter()
        .map(|(r, id)| (r.clone(), json!({"oci_id": id, "download_progress": 100})))
        .collect();
    for (r, img) in dev.images.iter() {
        images.insert(
            r.clone(),
            json!({"oci_id": img.oci_id, "download_progress": img.download_progress}),
        );
    }
    let mut apps = BTreeMap::new();
    for (uuid, app) in dev.apps.iter() {
        let tgt_app = target.and_then(|t| t.apps.get(uuid));
        let user_locks = locks.user_locks(uuid);
        let mut held: Vec<String> = locks
            .held(uuid)
            .into_iter()
            .chain(user_locks.iter().cloned())
            .map(|p| p.display().to_string())
            .collect();
        held.sort();
        let mut releases = JsonMap::new();
        for (rel_uuid, rel) in app.releases.iter() {
            let tgt_rel = tgt_app.and_then(|a| a.releases.get(rel_uuid));
            let installed =
                tgt_rel.is_none_or(|t| t.services.keys().all(|s| rel.services.contains_key(s)));
            let services: JsonMap<String, Value> = rel
                .services
                .iter()
                .map(|(name, s)| {
                    let mut o = JsonMap::new();
                    o.insert("id".into(), json!(s.id));
                    o.insert("image".into(), json!(s.image));
                    o.insert("installing".into(), json!(false));
                    let started = s.container.as_ref().is_some_and(|c| c.started);
                    o.insert("started".into(), json!(started));
                    if let Some(c) = &s.container {
                        o.insert(
                            "oci".into(),
                            json!({"name": c.name, "created": c.created, "status": c.status,
                                   "exit_code": c.exit_code, "health": c.health}),
                        );
                    }
                    o.insert("config".into(), s.config.document());
                    o.insert("depends_on".into(), json!(s.config.dependencies()));
                    (name.clone(), Value::Object(o))
                })
                .collect();
            let networks: JsonMap<String, Value> = app
                .networks
                .iter()
                .map(|(n, net)| {
                    (
                        n.clone(),
                        json!({"oci_name": scoped_name(n, uuid), "config": net.config}),
                    )
                })
                .collect();
            let volumes: JsonMap<String, Value> = app
                .volumes
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        json!({"oci_name": scoped_name(n, uuid), "config": v.config}),
                    )
                })
                .collect();
            releases.insert(
                rel_uuid.clone(),
                json!({"installed": installed, "services": services, "networks": networks, "volumes": volumes}),
            );
        }
        let mut o = JsonMap::new();
        o.insert("id".into(), json!(app.id));
        if let Some(n) = &app.name {
            o.insert("name".into(), json!(n));
        }
        o.insert("locked".into(), json!(!user_locks.is_empty()));
        o.insert("lockfiles".into(), json!(held));
        o.insert("releases".into(), Value::Object(releases));
        apps.insert(uuid.clone(), Value::Object(o));
    }
    DeviceState {
        uuid: uuid.to_string(),
        name: dev.name.clone(),
        images,
        apps,
        host: None,
        unconfirmed: false,
    }
}
