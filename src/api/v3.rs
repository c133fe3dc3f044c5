//! `/ping`, `/v1/update` and the `/v3` routes (spec/helios-api-v3.md §4).
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use log::{info, warn};
use serde_json::json;

use helios_actors::bus::{TargetRequest, TargetSource};
use helios_actors::model::device::{AppTarget, Device, DeviceTarget};
use helios_actors::model::target;
use helios_actors::poll::TriggerPoll;
use helios_actors::ports::store::StoreError;
use helios_actors::seek::{PlanError, PreviewPlan, Reapply};

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;

/// `GET /ping` → 200 `OK`.
pub async fn ping() -> impl Responder {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("OK")
}

/// `GET /v3/status` → `{"status": "<update status>"}` (§4.3).
pub async fn status(state: web::Data<ApiState>) -> impl Responder {
    let cur = state.state.get();
    let latest = state.targets.latest().map(|t| t.seq);
    HttpResponse::Ok().json(json!({ "status": cur.status_for(latest) }))
}

/// `GET /v3/version` → version, git commit and build time.
pub async fn version() -> impl Responder {
    HttpResponse::Ok().json(crate::version::info())
}

/// `GET /v3/capabilities` → what the host offers, as last probed.
pub async fn capabilities(state: web::Data<ApiState>) -> impl Responder {
    HttpResponse::Ok().json(state.caps.get())
}

/// `GET /v3/device` → the current-state Device document (§4.4).
pub async fn device(state: web::Data<ApiState>) -> impl Responder {
    let cur = state.state.get();
    HttpResponse::Ok().json(cur.device_document().as_ref())
}

/// `GET /v3/device/apps/{uuid}` → one app of the document, or 404.
pub async fn device_app(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let cur = state.state.get();
    let app = cur
        .device
        .apps
        .get(path.as_str())
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(app))
}

/// `force` and `cancel` query flags: literally `true`/`false`, default false.
fn flags(req: &HttpRequest) -> Result<(bool, bool), ApiError> {
    let mut force = false;
    let mut cancel = false;
    for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "force" => &mut force,
            "cancel" => &mut cancel,
            _ => continue,
        };
        *slot = match v {
            "true" => true,
            "false" => false,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {k}: expected true or false, got {other:?}"
                )))
            }
        };
    }
    Ok((force, cancel))
}

/// Parses and validates an app target body (415, 400, 422 as §4.2 says).
fn app_target(req: &HttpRequest, uuid: &str, body: &[u8]) -> Result<AppTarget, ApiError> {
    let json_ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_ct {
        return Err(ApiError::UnsupportedMediaType);
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    let wire: target::AppTarget = serde_json::from_value(value).map_err(|e| {
        ApiError::Unprocessable(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        ))
    })?;
    let app = target::app_from_target(uuid, wire)
        .map_err(|e| ApiError::Unprocessable(format!("invalid app target: {e}")))?;
    to_target(&app)
}

fn to_target<T: serde::Serialize, U: serde::de::DeserializeOwned>(v: &T) -> Result<U, ApiError> {
    serde_json::to_value(v)
        .and_then(serde_json::from_value)
        .map_err(|e| ApiError::Unavailable(format!("model conversion failed: {e}")))
}

/// The device target a local change starts from: the latest target, or (before any) the
/// current state.
fn base_target(state: &ApiState) -> Result<DeviceTarget, ApiError> {
    base_of(state, state.targets.latest().as_deref())
}

fn base_of(state: &ApiState, latest: Option<&TargetRequest>) -> Result<DeviceTarget, ApiError> {
    match latest {
        Some(t) => serde_json::from_value((*t.target).clone())
            .map_err(|e| ApiError::Unavailable(format!("stored target unreadable: {e}"))),
        None => {
            let model: Device = state.state.get().model.clone();
            to_target(&model)
        }
    }
}

/// Why a local edit published nothing.
enum EditError {
    Api(ApiError),
    Store(StoreError),
}

impl From<StoreError> for EditError {
    fn from(e: StoreError) -> EditError {
        EditError::Store(e)
    }
}

/// Changes the latest target with `change` and publishes the result, serialised with every
/// other publish (two concurrent edits of different apps both land).
fn edit_target(
    state: &ApiState,
    force: bool,
    cancel: bool,
    change: impl FnOnce(&mut DeviceTarget) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let res = state
        .targets
        .publish_edit(TargetSource::Local, force, cancel, |latest| {
            let mut target = base_of(state, latest).map_err(EditError::Api)?;
            change(&mut target).map_err(EditError::Api)?;
            serde_json::to_value(&target).map_err(|e| {
                EditError::Api(ApiError::Unavailable(format!(
                    "target not serialisable: {e}"
                )))
            })
        });
    match res {
        Ok(_) => Ok(()),
        Err(EditError::Api(e)) => Err(e),
        Err(EditError::Store(e)) => {
            warn!(error:% = helios_actors::ErrorChain(&e), decision = "reject",
                reason = "store unavailable"; "Local target not stored");
            Err(ApiError::Unavailable(format!(
                "target could not be stored: {e}"
            )))
        }
    }
}

/// `POST /v3/device/apps/{uuid}?force=&cancel=` → 202: the app's target is stored and queued.
pub async fn post_app(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (force, cancel) = flags(&req)?;
    let uuid = path.into_inner();
    let app = app_target(&req, &uuid, &body)?;
    edit_target(&state, force, cancel, |target| {
        target.apps.insert(uuid.clone(), app);
        Ok(())
    })?;
    info!(app:% = uuid, force, cancel, decision = "accept", reason = "local app target"; "App target accepted");
    Ok(HttpResponse::Accepted().finish())
}

/// `DELETE /v3/device/apps/{uuid}?force=&cancel=` → 202: the app's removal is queued.
pub async fn delete_app(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (force, cancel) = flags(&req)?;
    let uuid = path.into_inner();
    let on_device = state.state.get().model.apps.contains_key(&uuid);
    edit_target(&state, force, cancel, |target| {
        if target.apps.remove(&uuid).is_none() && !on_device {
            return Err(ApiError::NotFound);
        }
        Ok(())
    })?;
    info!(app:% = uuid, force, cancel, decision = "accept", reason = "local app removal"; "App removal accepted");
    Ok(HttpResponse::Accepted().finish())
}

/// `POST /v3/device/apps/{uuid}/plan` → the steps an apply of this app target would run.
pub async fn plan_app(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let uuid = path.into_inner();
    let app = app_target(&req, &uuid, &body)?;
    let mut target = base_target(&state)?;
    target.apps.insert(uuid, app);
    let steps = state
        .seek_plan
        .send(PreviewPlan { target })
        .await
        .map_err(|_| ApiError::Unavailable("the apply loop is not running".into()))?;
    match steps {
        Ok(steps) => Ok(HttpResponse::Ok().json(json!({ "steps": steps }))),
        Err(e @ PlanError::NotFound) => Err(ApiError::Conflict(e.to_string())),
        Err(e @ PlanError::Failed(_)) => Err(ApiError::Unprocessable(e.to_string())),
    }
}

/// An empty or unreadable body means force=false, cancel=true.
fn update_body(body: &[u8]) -> UpdateBody {
    let fallback = UpdateBody {
        force: false,
        cancel: true,
    };
    if body.is_empty() {
        return fallback;
    }
    serde_json::from_slice(body).unwrap_or(fallback)
}

#[derive(serde::Deserialize, Default)]
struct UpdateBody {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    cancel: bool,
}

/// `POST /v1/update` → 202 (as upstream helios answers): poll now, or in unmanaged mode
/// re-apply the current target. An empty or unreadable body means force=false, cancel=true.
/// Any key may trigger it; `force` (which takes user update locks) only from a caller allowed
/// to force: the global key, or the unix socket where no key is required. Others' `force` is
/// dropped with a log line and the update proceeds unforced (so is the legacy supervisor's
/// trigger in proxy mode).
pub async fn v1_update(
    state: web::Data<ApiState>,
    req: HttpRequest,
    caller: Result<Caller, ApiError>,
    client: Option<web::Data<super::proxy::ProxyClient>>,
    body: web::Bytes,
) -> HttpResponse {
    let caller = match caller {
        Ok(c) => c,
        // In front of a legacy supervisor, a key helios does not know may be one of its own
        // (the cloud's API proxy holds its global key): it decides, force included.
        Err(e) if state.proxy.is_some() && super::auth::presented_key(&req).is_some() => {
            let want = update_body(&body);
            let Some((answer, accepted)) =
                super::proxy::legacy_update(&req, body, &state, client).await
            else {
                return actix_web::ResponseError::error_response(&e);
            };
            if accepted {
                info!(path:% = req.path(), decision = "poll", upstream = "legacy",
                    reason = "the legacy supervisor accepted the key"; "Update trigger passed on");
                if let Some(poll) = &state.poll {
                    poll.do_send(TriggerPoll {
                        force: false,
                        cancel: want.cancel,
                    });
                }
            } else {
                info!(path:% = req.path(), status = answer.status().as_u16(), decision = "refuse",
                    upstream = "legacy", reason = "neither helios nor the legacy supervisor knows the key";
                    "Update trigger refused");
            }
            return answer;
        }
        Err(e) => return actix_web::ResponseError::error_response(&e),
    };
    let mut b = update_body(&body);
    if b.force && !caller.may_force() {
        info!(path:% = req.path(), scope:% = caller.scope, decision = "ignore-force",
            reason = "only the global key may force an update past user locks"; "Update force ignored");
        b.force = false;
    }
    match &state.poll {
        Some(poll) => poll.do_send(TriggerPoll {
            force: b.force,
            cancel: b.cancel,
        }),
        None => state.seek_reapply.do_send(Reapply {
            force: b.force,
            cancel: b.cancel,
            reason: "POST /v1/update (unmanaged)",
        }),
    }
    HttpResponse::Accepted().finish()
}
