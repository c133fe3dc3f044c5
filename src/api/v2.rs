//! The supervisor `/v2` device API (spec/device-api.md §3–§4): the read-only views of apps and
//! the device, device tags, and the local-mode endpoints helios answers without a local mode.
//! Also the [`View`] the `/v1` and `/v2` handlers share: the current state, the target and the
//! apply status read once per request, with app lookups by the legacy numeric app id.
//!
//! What helios does not know is answered as `null`: the numeric release and image ids (the
//! model keeps release uuids and image references only). `GET /v2/applications/:appId/state`
//! therefore keys services by service id instead of image id.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use log::{info, warn};
use serde_json::{json, Map, Value};

use helios_actors::model::device::{Device, DeviceTarget};
use helios_actors::model::{CurrentState, RemoteInfo, UpdateStatus};
use helios_actors::ErrorChain;

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2/applications/state", web::get().to(applications_state))
        .route(
            "/v2/applications/{app_id}/state",
            web::get().to(application_state),
        )
        .route("/v2/state/status", web::get().to(state_status))
        .route("/v2/version", web::get().to(version))
        .route("/v2/containerId", web::get().to(container_id))
        .route("/v2/device/name", web::get().to(device_name))
        .route("/v2/device/tags", web::get().to(get_tags))
        .route("/v2/device/tags", web::patch().to(patch_tags))
        .route("/v2/device/vpn", web::get().to(vpn))
        .route("/v2/cleanup-volumes", web::get().to(cleanup_volumes))
        .route("/v2/local/target-state", web::get().to(get_local_target))
        .route("/v2/local/target-state", web::post().to(post_local_target))
        .route("/v2/local/device-info", web::get().to(device_info));
}

/// The spec's JSON failure envelope.
pub(super) fn failed(status: u16, message: impl Into<String>) -> ApiError {
    ApiError::Failed {
        status,
        message: message.into(),
    }
}

/// A legacy numeric app id from the path; None if it is not one.
pub(crate) fn parse_app_id(raw: &str) -> Option<u32> {
    let raw = raw.trim();
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// What a request sees: the current state, the newest target and the apply status.
pub(super) struct View {
    pub cur: Arc<CurrentState>,
    /// The newest target on the TargetBus (what was asked for), else the one being sought.
    pub target: Option<DeviceTarget>,
    /// The status `/v3/status` would show.
    pub status: UpdateStatus,
}

impl View {
    pub fn read(state: &ApiState) -> View {
        let cur = state.state.get();
        let latest = state.targets.latest();
        let status = cur.status_for(latest.as_ref().map(|t| t.seq));
        let target = latest
            .and_then(|t| serde_json::from_value::<DeviceTarget>((*t.target).clone()).ok())
            .or_else(|| cur.target.clone());
        View {
            cur,
            target,
            status,
        }
    }

    pub fn model(&self) -> &Device {
        &self.cur.model
    }

    /// An apply cycle is running, waiting to retry, or was cut short: the target is not
    /// reached yet.
    pub fn pending(&self) -> bool {
        matches!(
            self.status,
            UpdateStatus::ApplyingChanges | UpdateStatus::Aborted | UpdateStatus::Interrupted
        )
    }

    /// Every app uuid on the device or in the target.
    pub fn app_uuids(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.model().apps.keys().cloned().collect();
        if let Some(t) = &self.target {
            all.extend(t.apps.keys().cloned());
        }
        all
    }

    /// The legacy numeric id of an app (the current state's, else the target's).
    pub fn app_id(&self, uuid: &str) -> Option<u32> {
        self.model()
            .apps
            .get(uuid)
            .map(|a| a.id)
            .or_else(|| self.target.as_ref()?.apps.get(uuid).map(|a| a.id))
    }

    /// The uuid of the app with this legacy id, on the device or in the target.
    pub fn uuid_of(&self, id: u32) -> Option<String> {
        self.app_uuids()
            .into_iter()
            .find(|u| self.app_id(u) == Some(id))
    }

    /// The app with the lowest legacy id the caller may see ("the first app" of the legacy
    /// single-app endpoints).
    pub fn first_app(&self, caller: &Caller) -> Option<(u32, String)> {
        self.app_uuids()
            .into_iter()
            .filter_map(|u| Some((self.app_id(&u)?, u)))
            .filter(|(id, _)| caller.can_access(*id))
            .min()
    }

    /// The app's target release.
    pub fn target_commit(&self, uuid: &str) -> Option<String> {
        self.target
            .as_ref()?
            .apps
            .get(uuid)?
            .releases
            .keys()
            .next()
            .cloned()
    }

    /// The release the app runs: its only release, or during an update the one being replaced.
    pub fn current_commit(&self, uuid: &str) -> Option<String> {
        let app = self.model().apps.get(uuid)?;
        let target = self.target_commit(uuid);
        match app.releases.len() {
            0 => None,
            1 => app.releases.keys().next().cloned(),
            _ => app
                .releases
                .keys()
                .find(|r| Some(*r) != target.as_ref())
                .cloned(),
        }
    }

    /// The report's `apps` section (state-report-v3.md §3) for every app of the device and the
    /// target: release update statuses and service statuses.
    pub fn report(&self, remote: &RemoteInfo) -> Value {
        let remote = RemoteInfo {
            authorized: self.app_uuids(),
            rejected: remote.rejected.clone(),
            ..Default::default()
        };
        helios_actors::report::body::apps(
            self.model(),
            self.target.as_ref(),
            &remote,
            self.cur.status,
            None,
        )
    }
}

/// `GET /v2/applications/state` → the apps of the target by name, with the target release's
/// update status and service statuses; out-of-scope apps are left out.
async fn applications_state(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let view = View::read(&state);
    let report = view.report(&state.remote.get());
    let mut out = Map::new();
    let Some(target) = &view.target else {
        return Ok(HttpResponse::Ok().json(out));
    };
    for (uuid, app) in target.apps.iter() {
        if !caller.can_access(app.id) {
            continue;
        }
        let commit = view.target_commit(uuid);
        let release = commit
            .as_ref()
            .and_then(|c| report.get(uuid)?.get("releases")?.get(c));
        let mut services = Map::new();
        if let Some(svcs) = release
            .and_then(|r| r.get("services"))
            .and_then(Value::as_object)
        {
            for (name, s) in svcs {
                services.insert(
                    name.clone(),
                    json!({
                        "status": s["status"],
                        "image": s["image"],
                        "downloadProgress": s.get("download_progress").cloned().unwrap_or(Value::Null),
                        "releaseId": Value::Null,
                    }),
                );
            }
        }
        let update_status = release
            .and_then(|r| r.get("update_status"))
            .cloned()
            .unwrap_or_else(|| json!("done"));
        let key = app.name.clone().unwrap_or_else(|| uuid.clone());
        out.insert(
            key,
            json!({
                "appId": app.id,
                "appUuid": uuid,
                "commit": commit,
                "updateStatus": update_status,
                "services": services,
            }),
        );
    }
    Ok(HttpResponse::Ok().json(out))
}

/// `GET /v2/applications/{appId}/state` → the legacy per-app state: 400 for a bad id, 409 for
/// an app that is not there or not the caller's.
async fn application_state(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let raw = path.into_inner();
    let id =
        parse_app_id(&raw).ok_or_else(|| failed(400, format!("Invalid application ID: {raw}")))?;
    let view = View::read(&state);
    let missing = || failed(409, format!("Application ID does not exist: {id}"));
    if !caller.can_access(id) {
        return Err(missing());
    }
    let uuid = view.uuid_of(id).ok_or_else(missing)?;
    let report = view.report(&state.remote.get());
    let target = view.target_commit(&uuid);
    let releases = report
        .get(&uuid)
        .and_then(|a| a.get("releases"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    // The release being replaced first, so that the target release's entry decides unless
    // both run (hand-over).
    let mut order: Vec<&String> = releases
        .keys()
        .filter(|r| Some(*r) != target.as_ref())
        .collect();
    order.extend(releases.keys().filter(|r| Some(*r) == target.as_ref()));
    let service_id = |rel: &str, name: &str| -> Option<u32> {
        let cur = view
            .model()
            .apps
            .get(&uuid)
            .and_then(|a| a.releases.get(rel))
            .and_then(|r| r.services.get(name))
            .map(|s| s.id);
        cur.or_else(|| {
            view.target
                .as_ref()?
                .apps
                .get(&uuid)?
                .releases
                .get(rel)?
                .services
                .get(name)
                .map(|s| s.id)
        })
    };
    let mut services = Map::new();
    for rel in order {
        let Some(svcs) = releases[rel].get("services").and_then(Value::as_object) else {
            continue;
        };
        for (name, s) in svcs {
            let key = service_id(rel, name)
                .map(|i| i.to_string())
                .unwrap_or_else(|| name.clone());
            let status = s["status"].as_str().unwrap_or("").to_string();
            let entry = json!({
                "status": status,
                "releaseId": Value::Null,
                "download_progress": s.get("download_progress").cloned().unwrap_or(Value::Null),
            });
            match services.get_mut(&key) {
                Some(prev) if status == "Awaiting handover" || prev["status"] == "Handing over" => {
                    prev["status"] = json!("Handing over");
                }
                _ => {
                    services.insert(key, entry);
                }
            }
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "commit": view.current_commit(&uuid),
        "local": { id.to_string(): { "services": services } },
    })))
}

/// `GET /v2/state/status` → the legacy summary of the first app the caller may see.
async fn state_status(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let view = View::read(&state);
    let model = view.model();
    let downloading: Vec<u32> = model
        .images
        .values()
        .filter(|i| i.download_progress < 100)
        .map(|i| u32::from(i.download_progress))
        .collect();
    let overall = if downloading.is_empty() {
        Value::Null
    } else {
        json!(downloading.iter().sum::<u32>() / downloading.len() as u32)
    };
    let mut out = json!({
        "status": "success",
        "appState": if view.pending() { "applying" } else { "applied" },
        "overallDownloadProgress": overall,
        "containers": [],
        "images": [],
    });
    let Some((app_id, uuid)) = view.first_app(&caller) else {
        return Ok(HttpResponse::Ok().json(out));
    };
    let report = view.report(&state.remote.get());
    let status_of = |rel: &str, name: &str| -> Value {
        report
            .get(&uuid)
            .and_then(|a| a.get("releases")?.get(rel)?.get("services")?.get(name))
            .map(|s| s["status"].clone())
            .unwrap_or(Value::Null)
    };
    let mut containers = vec![];
    let mut images: BTreeMap<String, Value> = BTreeMap::new();
    let mut add_image = |image: &str, service: &str| {
        if images.contains_key(image) {
            return;
        }
        let img = model.images.get(image);
        let present = img.is_some_and(|i| i.oci_id.is_some() && i.download_progress >= 100);
        images.insert(
            image.to_string(),
            json!({
                "name": image,
                "appId": app_id,
                "serviceName": service,
                "imageId": Value::Null,
                "dockerImageId": img.and_then(|i| i.oci_id.clone()),
                "status": if present { "Downloaded" } else { "Downloading" },
                "downloadProgress": if present {
                    Value::Null
                } else {
                    json!(img.map(|i| i.download_progress).unwrap_or(0))
                },
            }),
        );
    };
    if let Some(app) = model.apps.get(&uuid) {
        for (rel, r) in app.releases.iter() {
            for (name, s) in r.services.iter() {
                add_image(&s.image, name);
                let Some(c) = &s.container else { continue };
                containers.push(json!({
                    "status": status_of(rel, name),
                    "serviceName": name,
                    "appId": app_id,
                    "imageId": Value::Null,
                    "serviceId": s.id,
                    "containerId": c.id,
                    "createdAt": c.created,
                }));
            }
        }
    }
    if let Some(app) = view.target.as_ref().and_then(|t| t.apps.get(&uuid)) {
        for r in app.releases.values() {
            for (name, s) in r.services.iter() {
                add_image(&s.image, name);
            }
        }
    }
    out["containers"] = json!(containers);
    out["images"] = json!(images.into_values().collect::<Vec<_>>());
    if let Some(c) = view.current_commit(&uuid) {
        out["release"] = json!(c);
    }
    Ok(HttpResponse::Ok().json(out))
}

/// `GET /v2/version` → helios' version.
async fn version(_caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "success", "version": crate::version::VERSION}))
}

/// `GET /v2/containerId[?serviceName=|?service=]` → the caller's service containers, or one.
async fn container_id(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<BTreeMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let view = View::read(&state);
    let mut services: BTreeMap<String, String> = BTreeMap::new();
    for (uuid, app) in view.model().apps.iter() {
        if !caller.can_access(app.id) {
            continue;
        }
        // The target release last: its container wins when a service runs in two releases.
        let target = view.target_commit(uuid);
        let mut rels: Vec<_> = app.releases.iter().collect();
        rels.sort_by_key(|(rel, _)| Some(*rel) == target.as_ref());
        for (_, r) in rels {
            for (name, s) in r.services.iter() {
                if let Some(c) = &s.container {
                    services.insert(name.clone(), c.id.clone());
                }
            }
        }
    }
    let wanted = query.get("serviceName").or_else(|| query.get("service"));
    match wanted {
        None => Ok(HttpResponse::Ok().json(json!({"status": "success", "services": services}))),
        Some(name) => match services.get(name) {
            Some(id) => {
                Ok(HttpResponse::Ok().json(json!({"status": "success", "containerId": id})))
            }
            None => Err(failed(503, "Could not find service with that name")),
        },
    }
}

/// `GET /v2/device/name` → the name from the target, else `local`.
async fn device_name(state: web::Data<ApiState>, _caller: Caller) -> HttpResponse {
    let view = View::read(&state);
    let name = view
        .target
        .as_ref()
        .and_then(|t| t.name.clone())
        .or_else(|| view.model().name.clone())
        .unwrap_or_else(|| "local".to_string());
    HttpResponse::Ok().json(json!({"status": "success", "deviceName": name}))
}

/// `GET /v2/device/tags` → the device's tags as the cloud has them (ReportActor asks it);
/// 500 when unmanaged, offline or the answer is unusable.
async fn get_tags(state: web::Data<ApiState>, _caller: Caller) -> Result<HttpResponse, ApiError> {
    let Some(report) = &state.report else {
        return Err(failed(
            500,
            "Device tags cannot be read: the device is not managed by a cloud",
        ));
    };
    let tags = match report.send(helios_actors::report::GetTags).await {
        Ok(Ok(tags)) => tags,
        Ok(Err(e)) => {
            let e = helios_actors::ErrorChain(&e);
            return Err(failed(500, format!("Device tags cannot be read: {e}")));
        }
        Err(e) => return Err(failed(500, format!("Device tags cannot be read: {e}"))),
    };
    let tags: Vec<Value> = tags
        .into_iter()
        .map(|t| json!({"id": t.id, "name": t.tag_key, "value": t.value}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"status": "success", "tags": tags})))
}

const TAGS_SHAPE: &str = "Invalid tags body, must be an object like {[tagKey: string]: string}";

/// Validates a `PATCH /v2/device/tags` body (an empty body is an empty object).
pub(crate) fn parse_tags(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let Ok(Value::Object(tags)) = serde_json::from_slice::<Value>(body) else {
        return Err(TAGS_SHAPE.into());
    };
    if tags.values().any(|v| !v.is_string()) {
        return Err(TAGS_SHAPE.into());
    }
    if tags.keys().any(|k| k.chars().any(char::is_whitespace)) {
        return Err("Tag keys cannot contain whitespace".into());
    }
    Ok(tags)
}

/// `PATCH /v2/device/tags` → 202: the tags are merged into the pending ones in the store;
/// ReportActor pushes them to the cloud (works offline; pending tags survive restarts).
async fn patch_tags(
    state: web::Data<ApiState>,
    _caller: Caller,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let tags = parse_tags(&body).map_err(|m| failed(400, m))?;
    let store = state.store.clone();
    let count = tags.len();
    let stored = web::block(move || helios_actors::report::tags::queue(&store, tags))
        .await
        .map_err(|e| failed(500, format!("tags not stored: {e}")))?;
    match stored {
        Ok(()) => {
            info!(tags = count, decision = "queue", reason = "PATCH /v2/device/tags"; "Device tags stored");
            if let Some(r) = &state.report {
                r.do_send(helios_actors::report::TagsQueued);
            }
            Ok(HttpResponse::Accepted().json(json!({"status": "success"})))
        }
        // Logged where refused; 507: nothing stored, retry once the cloud took the pending ones.
        Err(e @ helios_actors::report::tags::TagsError::Full { .. }) => {
            Err(failed(507, e.to_string()))
        }
        Err(e) => {
            warn!(error:% = ErrorChain(&e), decision = "reject"; "Device tags not stored");
            Err(failed(500, format!("tags not stored: {e}")))
        }
    }
}

/// Where openvpn marks the tunnel up (balenaOS).
const VPN_ACTIVE: &str = "/run/openvpn/vpn_status/active";

/// `GET /v2/device/vpn` → helios does not control a VPN; `connected` follows the host file.
async fn vpn(_caller: Caller) -> HttpResponse {
    let connected = std::path::Path::new(VPN_ACTIVE).exists();
    HttpResponse::Ok().json(json!({
        "status": "success",
        "vpn": {"enabled": false, "connected": connected},
    }))
}

/// `GET /v2/cleanup-volumes`: removes helios' volumes that no container mounts and the target
/// does not keep (only of the apps in the caller's scope).
async fn cleanup_volumes(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let apps = match caller.scope {
        helios_actors::ports::apikeys::Scope::Global => None,
        helios_actors::ports::apikeys::Scope::App(id) => Some(
            state
                .state
                .get()
                .model
                .apps
                .iter()
                .filter(|(_, a)| a.id == id)
                .map(|(u, _)| u.clone())
                .collect(),
        ),
    };
    let res = state
        .seek_cleanup
        .send(helios_actors::seek::CleanupVolumes { apps })
        .await
        .map_err(|_| failed(503, "the apply loop is not running"))?;
    match res {
        Ok(_) => Ok(HttpResponse::Ok().json(json!({"status": "success"}))),
        Err(e) => Err(failed(503, e.to_string())),
    }
}

/// `GET /v2/local/target-state` → the target in the legacy local shape (apps by numeric id).
/// A listing, so out-of-scope apps are filtered out (spec §2.3): a service key sees only its
/// own app, not the other apps' environment.
async fn get_local_target(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let view = View::read(&state);
    let mut apps = Map::new();
    if let Some(t) = &view.target {
        for (uuid, app) in t.apps.iter().filter(|(_, a)| caller.can_access(a.id)) {
            let commit = view.target_commit(uuid);
            let mut services = vec![];
            for r in app.releases.values() {
                for (name, s) in r.services.iter() {
                    let mut v = serde_json::to_value(s)
                        .map_err(|e| failed(503, format!("target not serialisable: {e}")))?;
                    if let Value::Object(m) = &mut v {
                        m.insert("serviceName".into(), json!(name));
                        m.insert("serviceId".into(), json!(s.id));
                        m.insert("appId".into(), json!(app.id));
                        m.insert("appUuid".into(), json!(uuid));
                        m.insert("commit".into(), json!(commit));
                        m.insert("releaseId".into(), Value::Null);
                    }
                    services.push(v);
                }
            }
            let networks = serde_json::to_value(&app.networks)
                .map_err(|e| failed(503, format!("target not serialisable: {e}")))?;
            let volumes = serde_json::to_value(&app.volumes)
                .map_err(|e| failed(503, format!("target not serialisable: {e}")))?;
            apps.insert(
                app.id.to_string(),
                json!({
                    "appId": app.id,
                    "appUuid": uuid,
                    "name": app.name,
                    "commit": commit,
                    "releaseId": Value::Null,
                    "services": services,
                    "networks": networks,
                    "volumes": volumes,
                }),
            );
        }
    }
    let name = view
        .target
        .as_ref()
        .and_then(|t| t.name.clone())
        .or_else(|| view.model().name.clone())
        .unwrap_or_else(|| "local".to_string());
    Ok(HttpResponse::Ok().json(json!({
        "status": "success",
        "state": {"local": {"name": name, "config": {}, "apps": apps}},
    })))
}

/// `POST /v2/local/target-state` → 400: helios has no local mode.
async fn post_local_target(_caller: Caller) -> Result<HttpResponse, ApiError> {
    Err(failed(
        400,
        "Target state can only set when device is in local mode",
    ))
}

/// balena's architecture name (device-type `arch`) for a Rust target architecture.
pub(super) fn balena_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "i386",
        "arm" => "armv7hf",
        other => other,
    }
}

/// `GET /v2/local/device-info` → 500: helios is not told the device type.
/// `GET /v2/local/device-info`: the architecture and the device type, when helios knows it
/// (configured, or balenaOS's boot partition); 500 in the envelope otherwise.
async fn device_info(
    state: web::Data<ApiState>,
    _caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let arch = balena_arch(std::env::consts::ARCH);
    match &state.device_type {
        Some(t) => Ok(HttpResponse::Ok().json(json!({
            "status": "success",
            "info": {"arch": arch, "deviceType": t},
        }))),
        None => Err(failed(
            500,
            format!(
                "Device type is not known to helios (arch {arch}): set provisioning.device_type"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_are_plain_integers() {
        assert_eq!(parse_app_id("12"), Some(12));
        assert_eq!(parse_app_id("0"), Some(0));
        for bad in ["", "x", "1x", "-1", "1.5", "99999999999"] {
            assert_eq!(parse_app_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn tags_bodies_are_validated() {
        assert_eq!(parse_tags(b"").unwrap().len(), 0);
        assert_eq!(parse_tags(br#"{"a": "1", "b": ""}"#).unwrap().len(), 2);
        for bad in [
            &b"[]"[..],
            b"\"x\"",
            b"{",
            br#"{"a": 1}"#,
            br#"{"a": null}"#,
        ] {
            assert_eq!(parse_tags(bad).unwrap_err(), TAGS_SHAPE);
        }
        assert_eq!(
            parse_tags(br#"{"a b": "1"}"#).unwrap_err(),
            "Tag keys cannot contain whitespace"
        );
    }

    #[test]
    fn arch_names_are_balenas() {
        assert_eq!(balena_arch("aarch64"), "aarch64");
        assert_eq!(balena_arch("x86_64"), "amd64");
        assert_eq!(balena_arch("arm"), "armv7hf");
    }
}
