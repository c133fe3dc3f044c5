//! The planner: mahler jobs over the `Device` model. The pure part of each task decides what
//! may happen (the update strategies, `depends_on`, locks, "download before kill" all live in
//! its preconditions); only the `with_io` effects touch the engine, the store or the lock files.
//! Without a [`Effects`] resource the effects do nothing, so plans can be computed and tested
//! without IO.
//!
//! Update strategies (the `io.balena.update.strategy` label) are preconditions:
//! - `download-then-kill` (the default) removes the old container only once every image of
//!   the app's target release is present;
//! - `kill-then-download` and `delete-then-download` pull only after the old container is gone
//!   (the latter also after the unused images are removed);
//! - `hand-over` creates and starts the new container first, waits for
//!   `/tmp/balena/handover-complete` (the app's lock dir as the containers see it) or the
//!   hand-over timeout, then removes the old one. A new service the target wants stopped, or
//!   one whose network or volume must be recreated while the old container holds it, cannot
//!   take over: it goes as download-then-kill (found by the planner property tests).
//!
//! A release change recreates every container, config identical or not (the name holds the release;
//! upstream renames instead); within a release a changed config or image, or a changed network or
//! volume of the service, removes the container for the create job to make again (with
//! download-then-kill once the app's images are present). A network or volume whose config changes
//! is recreated by its own job, which first removes the containers holding it (once the app's
//! images are present), also those whose own config is unchanged, which no service job would visit;
//! and a container is created only on networks and volumes that have their target config, and after
//! its `network_mode: service:<name>` peer exists.
//!
//! Starting waits for `depends_on`: the dependency runs with its target config (a
//! precondition), and `service_healthy` / `service_completed_successfully` are waited for in
//! the effect, bounded (5 minutes, then the step fails and counts toward giving up). A
//! container starts only once every image of its app is present. Stopping or removing a
//! container takes the app's update lock first (ports/locks.rs); a user lock fails the step
//! (the app shows `locked: true`, the apply retries without counting it) unless `force`.
//! Starting or creating takes no lock.
//!
//! Images: only those helios pulled (recorded under `images` in the store, after the pull
//! finished), those the target wants and those of supervised containers are in the model, so
//! only those are ever removed, and only when no supervised container uses them; an image a
//! foreign container uses is never removed (seek/current.rs).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mahler::extract::{Args, Res, System, SystemTarget, Target, View};
use mahler::job::{create, delete, none, update};
use mahler::task::{enforce, with_io, Handler, Task, IO};
use mahler::worker::{Uninitialized, Worker};

use crate::model::compose::{Condition, UpdateStrategy};
use crate::model::device::{
    container_name, scoped_name, App, AppTarget, Device, DeviceTarget, Image, Network, Release,
    Service, ServiceTarget, Volume,
};
use crate::model::host::OsVersion;
use crate::ports::engine::{Engine, EngineError};
use crate::ports::locks::{LockError, Locks};
use crate::ports::oci;
use crate::ports::store::{Durability, Store, StoreError};

/// What effects need: the engine, the store, the lock files, and the facts injected into
/// containers. Registered per apply (it carries that apply's `force`).
pub struct Effects {
    pub engine: Engine,
    pub store: Store,
    pub locks: Arc<Locks>,
    pub device_uuid: String,
    pub device_name: Option<String>,
    pub host_os: Option<OsVersion>,
    pub host_runtime_dir: PathBuf,
    /// Keys and address for containers with the supervisor-api feature.
    pub supervisor_api: crate::ports::apikeys::SupervisorApi,
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Timeout(String),
}

impl StepError {
    /// A fault of the environment rather than of the release (the engine or registry
    /// unreachable, a user update lock, a full disk): retried without counting toward
    /// `seek.max_attempts`.
    pub fn is_transient(&self) -> bool {
        match self {
            StepError::Engine(e) => e.is_transient(),
            StepError::Locked(_) => true,
            StepError::Store(e) => e.is_transient(),
            StepError::Timeout(_) => false,
        }
    }
}

/// Store key of the app records (id and name of every app, also those without containers).
pub const APPS_KEY: &str = "apps";
/// Store key of the images helios pulled (only those are removed when unused).
pub const IMAGES_KEY: &str = "images";

/// Runs one step's effect with a start line, and an end or failure line with its duration.
async fn step<T, F>(
    what: &'static str,
    app: &str,
    release: &str,
    object: &str,
    f: F,
) -> Result<T, StepError>
where
    F: std::future::Future<Output = Result<T, StepError>>,
{
    let start = Instant::now();
    info!(step = what, app:% = app, release:% = release, object:% = object, decision = "run"; "Step started");
    let r = f.await;
    let ms = start.elapsed().as_millis() as u64;
    match &r {
        Ok(_) => info!(step = what, app:% = app, release:% = release, object:% = object,
            duration_ms = ms, decision = "done"; "Step finished"),
        Err(e) => {
            warn!(step = what, app:% = app, release:% = release, object:% = object,
                duration_ms = ms, error:% = crate::ErrorChain(e), decision = "fail"; "Step failed");
            crate::metrics::METRICS.step_failed(what);
        }
    }
    r
}

// ---- queries over the model (pure) ----

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

fn image_present(dev: &Device, image: &str) -> bool {
    dev.images
        .get(image)
        .is_some_and(|i| i.oci_id.is_some() && i.download_progress >= 100)
}

/// All images of the app's target release are on the engine.
fn app_images_present(dev: &Device, tgt_app: Option<&AppTarget>) -> bool {
    tgt_app.is_none_or(|a| {
        a.releases
            .values()
            .flat_map(|r| r.services.values())
            .all(|s| image_present(dev, &s.image))
    })
}

/// The target release of an app and its service of that name, if any.
fn target_service<'a>(
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
fn other_release_has(dev: &Device, app: &str, release: &str, svc: &str) -> bool {
    dev.apps.get(app).is_some_and(|a| {
        a.releases
            .iter()
            .any(|(r, rel)| r != release && rel.services.contains_key(svc))
    })
}

/// Networks or volumes the service uses that differ between current and target.
fn resources_changing(dev: &Device, tgt: &DeviceTarget, app: &str, svc: &ServiceTarget) -> bool {
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

fn uses_network(app: &App, net: &str) -> bool {
    app.releases
        .values()
        .flat_map(|r| r.services.values())
        .any(|s| s.config.network_names().iter().any(|n| n == net))
}

fn uses_volume(app: &App, vol: &str) -> bool {
    app.releases
        .values()
        .flat_map(|r| r.services.values())
        .any(|s| s.config.volume_names().iter().any(|v| v == vol))
}

fn image_in_use(dev: &Device, image: &str) -> bool {
    dev.apps
        .values()
        .flat_map(|a| a.releases.values())
        .flat_map(|r| r.services.values())
        .any(|s| s.image == image)
}

// ---- images ----

fn pull_image(
    img: View<Option<Image>>,
    Args(image): Args<String>,
    System(dev): System<Device>,
    SystemTarget(tgt): SystemTarget<Device>,
    fx: Res<Effects>,
) -> IO<Image, StepError> {
    enforce!(img.is_none(), "image {image} is already present");
    let wanted = target_images(&tgt);
    for (app, svc) in wanted.get(&image).into_iter().flatten() {
        if let Some((rel, s)) = target_service(&tgt, app, svc) {
            let strategy = s.config.update_strategy();
            if matches!(
                strategy,
                UpdateStrategy::KillThenDownload | UpdateStrategy::DeleteThenDownload
            ) {
                enforce!(
                    !other_release_has(&dev, app, rel, svc),
                    "{strategy:?}: the old container of {svc} goes first"
                );
            }
            if strategy == UpdateStrategy::DeleteThenDownload {
                let removable = dev
                    .images
                    .keys()
                    .any(|i| !wanted.contains_key(i) && !image_in_use(&dev, i));
                enforce!(!removable, "delete-then-download: unused images go first");
            }
        }
    }
    // What the planner sees: the image is there afterwards.
    let img = img.create(Image {
        oci_id: Some(String::new()),
        download_progress: 100,
    });
    with_io(img, move |mut img| async move {
        let Some(fx) = fx.as_ref() else {
            return Ok(img);
        };
        img.oci_id = None;
        img.download_progress = 0;
        img.flush().await.ok();
        let id = step("pull", "", "", &image, async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let pull = fx.engine.pull(&image, move |p| {
                let _ = tx.send(p);
            });
            tokio::pin!(pull);
            loop {
                tokio::select! {
                    r = &mut pull => break r.map_err(StepError::from),
                    Some(p) = rx.recv() => {
                        img.download_progress = p.min(99);
                        img.flush().await.ok();
                    }
                }
            }
        })
        .await?;
        img.oci_id = Some(id);
        img.download_progress = 100;
        let mut pulled: Vec<String> = fx
            .store
            .get_json(IMAGES_KEY)?
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        if !pulled.contains(&image) {
            pulled.push(image.clone());
            fx.store
                .put_json(IMAGES_KEY, &serde_json::json!(pulled), Durability::Flush)?;
        }
        Ok(img)
    })
}

fn remove_image(
    mut img: View<Option<Image>>,
    Args(image): Args<String>,
    System(dev): System<Device>,
    fx: Res<Effects>,
) -> IO<Option<Image>, StepError> {
    enforce!(img.is_some(), "image {image} is not there");
    enforce!(!image_in_use(&dev, &image), "image {image} is still used");
    img.take();
    with_io(img, move |img| async move {
        if let Some(fx) = fx.as_ref() {
            step("remove image", "", "", &image, async {
                fx.engine.remove_image(&image).await?;
                let pulled: Vec<String> = fx
                    .store
                    .get_json(IMAGES_KEY)?
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default();
                let left: Vec<String> = pulled.into_iter().filter(|i| *i != image).collect();
                fx.store
                    .put_json(IMAGES_KEY, &serde_json::json!(left), Durability::Flush)?;
                Ok(())
            })
            .await?;
        }
        Ok(img)
    })
}

// ---- apps (bookkeeping in the store) ----

fn save_app_record(
    fx: &Effects,
    uuid: &str,
    app: Option<(u32, Option<String>)>,
) -> Result<(), StepError> {
    let mut records = fx
        .store
        .get_json(APPS_KEY)?
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    match app {
        Some((id, name)) => {
            records.insert(
                uuid.to_string(),
                serde_json::json!({"id": id, "name": name}),
            );
        }
        None => {
            records.remove(uuid);
        }
    }
    fx.store.put_json(
        APPS_KEY,
        &serde_json::Value::Object(records),
        Durability::Flush,
    )?;
    Ok(())
}

fn create_app(
    app: View<Option<App>>,
    Args(uuid): Args<String>,
    Target(tgt): Target<App>,
    fx: Res<Effects>,
) -> IO<App, StepError> {
    enforce!(app.is_none(), "app {uuid} exists");
    let app = app.create(App {
        id: tgt.id,
        name: tgt.name.clone(),
        ..Default::default()
    });
    with_io(app, move |app| async move {
        if let Some(fx) = fx.as_ref() {
            save_app_record(fx, &uuid, Some((app.id, app.name.clone())))?;
        }
        Ok(app)
    })
}

fn update_app(
    mut app: View<App>,
    Args(uuid): Args<String>,
    Target(tgt): Target<App>,
    fx: Res<Effects>,
) -> IO<App, StepError> {
    enforce!(
        app.id != tgt.id || app.name != tgt.name,
        "app {uuid} metadata unchanged"
    );
    app.id = tgt.id;
    app.name = tgt.name.clone();
    with_io(app, move |app| async move {
        if let Some(fx) = fx.as_ref() {
            save_app_record(fx, &uuid, Some((app.id, app.name.clone())))?;
        }
        Ok(app)
    })
}

fn remove_app(
    mut app: View<Option<App>>,
    Args(uuid): Args<String>,
    fx: Res<Effects>,
) -> IO<Option<App>, StepError> {
    let Some(a) = app.as_ref() else {
        return IO::abort("app is gone");
    };
    enforce!(
        a.releases.is_empty() && a.networks.is_empty() && a.volumes.is_empty(),
        "app {uuid} still has objects"
    );
    app.take();
    with_io(app, move |app| async move {
        if let Some(fx) = fx.as_ref() {
            save_app_record(fx, &uuid, None)?;
            fx.locks.release(&uuid);
        }
        Ok(app)
    })
}

// ---- networks and volumes ----

fn create_network(
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

fn remove_network(
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
fn recreate_network(
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

fn create_volume(
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

fn remove_volume(
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

fn recreate_volume(
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

// ---- releases ----

fn create_release(rel: View<Option<Release>>) -> IO<Release, StepError> {
    enforce!(rel.is_none(), "release exists");
    let rel = rel.create(Release::default());
    with_io(rel, |rel| async move { Ok(rel) })
}

fn remove_release(mut rel: View<Option<Release>>) -> IO<Option<Release>, StepError> {
    enforce!(
        rel.as_ref().is_some_and(|r| r.services.is_empty()),
        "release still has services"
    );
    rel.take();
    with_io(rel, |rel| async move { Ok(rel) })
}

// ---- services ----

fn create_container(
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

fn start_container(
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

fn stop_container(
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
fn kill_container(
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

fn remove_container(
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
fn wait_handover(
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
fn kill_service(
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
fn recreate_service(
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

/// The worker template: every job at its route, with descriptions that say what and why.
pub fn worker() -> Worker<Device, Uninitialized> {
    Worker::new()
        .jobs(
            "/images/{image}",
            [
                create(pull_image).with_description(|Args(i): Args<String>| {
                    format!("pull image '{i}' (wanted by the target)")
                }),
                delete(remove_image).with_description(|Args(i): Args<String>| {
                    format!("remove image '{i}' (no longer used)")
                }),
            ],
        )
        .jobs(
            "/apps/{app}",
            [
                create(create_app).with_description(|Args(a): Args<String>| {
                    format!("record app '{a}' (new in the target)")
                }),
                update(update_app).with_description(|Args(a): Args<String>| {
                    format!("update app '{a}' metadata (id or name changed)")
                }),
                delete(remove_app).with_description(|Args(a): Args<String>| {
                    format!("forget app '{a}' (gone from the target)")
                }),
            ],
        )
        .jobs(
            "/apps/{app}/networks/{net}",
            [
                create(create_network).with_description(|Args((a, n)): Args<(String, String)>| {
                    format!(
                        "create network '{}' (declared by the target)",
                        scoped_name(&n, &a)
                    )
                }),
                delete(remove_network).with_description(|Args((a, n)): Args<(String, String)>| {
                    format!("remove network '{}' (gone or changed)", scoped_name(&n, &a))
                }),
                update(recreate_network),
            ],
        )
        .jobs(
            "/apps/{app}/volumes/{vol}",
            [
                create(create_volume).with_description(|Args((a, v)): Args<(String, String)>| {
                    format!(
                        "create volume '{}' (declared by the target)",
                        scoped_name(&v, &a)
                    )
                }),
                delete(remove_volume).with_description(|Args((a, v)): Args<(String, String)>| {
                    format!(
                        "remove volume '{}' (app removed or volume changed)",
                        scoped_name(&v, &a)
                    )
                }),
                update(recreate_volume),
            ],
        )
        .jobs(
            "/apps/{app}/releases/{rel}",
            [
                create(create_release).with_description(|Args((a, r)): Args<(String, String)>| {
                    format!("begin release '{r}' of app '{a}' (new target release)")
                }),
                delete(remove_release).with_description(|Args((a, r)): Args<(String, String)>| {
                    format!("end release '{r}' of app '{a}' (replaced or removed)")
                }),
            ],
        )
        .jobs(
            "/apps/{app}/releases/{rel}/services/{svc}",
            [
                create(create_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "create container '{}' (service '{s}' of the target release)",
                            container_name(&s, &r)
                        )
                    },
                ),
                update(start_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "start container '{}' (target wants it running)",
                            container_name(&s, &r)
                        )
                    },
                ),
                update(stop_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "stop container '{}' (target wants it stopped)",
                            container_name(&s, &r)
                        )
                    },
                ),
                update(recreate_service),
                delete(kill_service),
                none(kill_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!("stop container '{}' (to remove it)", container_name(&s, &r))
                    },
                ),
                none(remove_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "remove container '{}' (replaced, changed or gone)",
                            container_name(&s, &r)
                        )
                    },
                ),
                none(wait_handover).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "wait for the hand-over of '{}' (hand-over strategy)",
                            container_name(&s, &r)
                        )
                    },
                ),
            ],
        )
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
