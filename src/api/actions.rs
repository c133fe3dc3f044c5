//! Device API actions (spec/device-api.md §4): `/v1/restart`, `/v1/purge`,
//! `/v1/apps/:appId/stop|start`, `/v2/applications/:appId/restart|purge`, and
//! `/v2/applications/:appId/restart-service|stop-service|start-service`. Each resolves the
//! legacy numeric app id, checks the caller's scope, and asks SeekActor to run the action.
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use helios_actors::seek::{Action, ActionError, RunAction};

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/restart", web::post().to(v1_restart))
        .route("/v1/purge", web::post().to(v1_purge))
        .route("/v1/apps/{app_id}/stop", web::post().to(v1_stop))
        .route("/v1/apps/{app_id}/start", web::post().to(v1_start))
        .route(
            "/v2/applications/{app_id}/restart",
            web::post().to(v2_restart),
        )
        .route("/v2/applications/{app_id}/purge", web::post().to(v2_purge))
        .route(
            "/v2/applications/{app_id}/restart-service",
            web::post().to(v2_restart_service),
        )
        .route(
            "/v2/applications/{app_id}/stop-service",
            web::post().to(v2_stop_service),
        )
        .route(
            "/v2/applications/{app_id}/start-service",
            web::post().to(v2_start_service),
        );
}

/// A JSON or form body as a map; an empty or unreadable body is an empty map.
pub(super) fn body(req: &HttpRequest, bytes: &[u8]) -> Map<String, Value> {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    body_of(content_type, bytes)
}

/// [`body`] given the content type.
pub(crate) fn body_of(content_type: Option<&str>, bytes: &[u8]) -> Map<String, Value> {
    let form = content_type.is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        return String::from_utf8_lossy(bytes)
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
    }
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

/// The spec's "truthy": true, "true", 1, "1", "on".
pub(crate) fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "on"),
        _ => false,
    }
}

fn int(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The app uuid of a legacy app id, from the device's current state.
fn app_uuid(state: &ApiState, app_id: u32) -> Option<String> {
    state
        .state
        .get()
        .model
        .apps
        .iter()
        .find(|(_, a)| a.id == app_id)
        .map(|(u, _)| u.clone())
}

fn envelope(status: u16, message: impl Into<String>) -> ApiError {
    ApiError::Failed {
        status,
        message: message.into(),
    }
}

async fn run(
    state: &ApiState,
    app_uuid: String,
    action: Action,
    force: bool,
) -> Result<Option<String>, ApiError> {
    let res = state
        .seek_action
        .send(RunAction {
            app_uuid,
            action,
            force,
        })
        .await
        .map_err(|_| envelope(503, "the apply loop is not running"))?;
    match res {
        Ok(done) => Ok(done.container_id),
        Err(ActionError::Locked(m)) => Err(envelope(423, m)),
        Err(ActionError::NotFound(m)) => Err(ApiError::Text {
            status: 404,
            message: m,
        }),
        Err(ActionError::Failed(m)) => Err(envelope(503, m)),
    }
}

/// Resolves and checks an app id: (uuid) or the endpoint's error.
fn resolve(
    state: &ApiState,
    caller: &Caller,
    app_id: Option<u32>,
    missing: ApiError,
    out_of_scope: ApiError,
) -> Result<String, ApiError> {
    let id = app_id.ok_or(missing)?;
    if !caller.can_access(id) {
        return Err(out_of_scope);
    }
    app_uuid(state, id).ok_or_else(|| {
        envelope(
            503,
            format!("Application with ID {id} is not in the current state"),
        )
    })
}

async fn app_action(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    bytes: web::Bytes,
    app_id: Option<u32>,
    action: Action,
    missing: &str,
) -> Result<bool, ApiError> {
    let b = body(&req, &bytes);
    let app_id = app_id.or_else(|| int(b.get("appId")));
    let uuid = resolve(
        &state,
        &caller,
        app_id,
        ApiError::Text {
            status: 400,
            message: missing.into(),
        },
        envelope(401, "Unauthorized"),
    )?;
    run(&state, uuid, action, truthy(b.get("force"))).await?;
    Ok(true)
}

async fn v1_restart(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    app_action(
        state,
        caller,
        req,
        bytes,
        None,
        Action::RestartApp,
        "Missing app id",
    )
    .await?;
    Ok(HttpResponse::Ok().content_type("text/plain").body("OK"))
}

async fn v1_purge(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    app_action(
        state,
        caller,
        req,
        bytes,
        None,
        Action::PurgeApp,
        "Invalid or missing appId",
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({"Data": "OK", "Error": ""})))
}

async fn v2_restart(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path.parse().map_err(|_| envelope(400, "Missing app id"))?;
    app_action(
        state,
        caller,
        req,
        bytes,
        Some(id),
        Action::RestartApp,
        "Missing app id",
    )
    .await?;
    Ok(HttpResponse::Ok().content_type("text/plain").body("OK"))
}

async fn v2_purge(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path.parse().map_err(|_| envelope(400, "Missing app id"))?;
    app_action(
        state,
        caller,
        req,
        bytes,
        Some(id),
        Action::PurgeApp,
        "Missing app id",
    )
    .await?;
    Ok(HttpResponse::Ok().content_type("text/plain").body("OK"))
}

/// The service a v2 service action names (`serviceName` or `imageId`), with its checks.
fn service_of(state: &ApiState, uuid: &str, b: &Map<String, Value>) -> Result<String, ApiError> {
    let cur = state.state.get();
    let app = cur.model.apps.get(uuid).ok_or_else(|| ApiError::Text {
        status: 404,
        message: "App not found: an app needs to be installed for this endpoint to work".into(),
    })?;
    let name = match (b.get("serviceName").and_then(Value::as_str), int(b.get("imageId"))) {
        (Some(n), _) => n.to_string(),
        (None, Some(image_id)) => app
            .releases
            .values()
            .flat_map(|r| r.services.iter())
            .find(|(_, s)| s.id == image_id)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| ApiError::Text {
                status: 404,
                message: "Service not found, a container must exist for this endpoint to work"
                    .into(),
            })?,
        (None, None) => {
            return Err(ApiError::Text {
                status: 400,
                message: "serviceName or imageId parameters were not provided or the app is multi-container. Use the v2 service action endpoints.".into(),
            })
        }
    };
    let in_target = cur
        .target
        .as_ref()
        .and_then(|t| t.apps.get(uuid))
        .is_none_or(|a| a.releases.values().any(|r| r.services.contains_key(&name)));
    if !in_target {
        return Err(ApiError::Text {
            status: 404,
            message: "Service does not exist in target release".into(),
        });
    }
    Ok(name)
}

async fn service_action(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
    make: fn(String) -> Action,
) -> Result<HttpResponse, ApiError> {
    let id = path.parse().map_err(|_| envelope(400, "Invalid app id"))?;
    let b = body(&req, &bytes);
    let uuid = resolve(
        &state,
        &caller,
        Some(id),
        envelope(400, "Invalid app id"),
        envelope(401, "Unauthorized"),
    )
    .map_err(|e| match e {
        ApiError::Failed { status: 503, .. } => ApiError::Text {
            status: 404,
            message: "App not found: an app needs to be installed for this endpoint to work".into(),
        },
        other => other,
    })?;
    let svc = service_of(&state, &uuid, &b)?;
    run(&state, uuid, make(svc), truthy(b.get("force"))).await?;
    Ok(HttpResponse::Ok().content_type("text/plain").body("OK"))
}

async fn v2_restart_service(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    service_action(state, caller, req, path, bytes, Action::RestartService).await
}

async fn v2_stop_service(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    service_action(state, caller, req, path, bytes, Action::StopService).await
}

async fn v2_start_service(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    service_action(state, caller, req, path, bytes, Action::StartService).await
}

/// `/v1/apps/:appId/stop|start`: single-container apps only.
async fn v1_single(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
    make: fn(String) -> Action,
) -> Result<HttpResponse, ApiError> {
    let id: u32 = path.parse().map_err(|_| ApiError::Text {
        status: 400,
        message: "Invalid app id".into(),
    })?;
    if !caller.can_access(id) {
        return Err(ApiError::Text {
            status: 401,
            message: "Unauthorized".into(),
        });
    }
    let not_found = || ApiError::Text {
        status: 400,
        message: "App not found: an app needs to be installed for this endpoint to work".into(),
    };
    let uuid = app_uuid(&state, id).ok_or_else(not_found)?;
    let cur = state.state.get();
    let app = cur.model.apps.get(&uuid).ok_or_else(not_found)?;
    let services: Vec<&String> = app
        .releases
        .values()
        .flat_map(|r| r.services.keys())
        .collect();
    let svc = match services.as_slice() {
        [] => return Err(not_found()),
        [one] => (*one).clone(),
        _ => {
            return Err(ApiError::Text {
                status: 400,
                message: "serviceName or imageId parameters were not provided or the app is multi-container. Use the v2 service action endpoints.".into(),
            })
        }
    };
    let b = body(&req, &bytes);
    let id = run(&state, uuid, make(svc), truthy(b.get("force"))).await?;
    Ok(HttpResponse::Ok().json(json!({"containerId": id})))
}

async fn v1_stop(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    v1_single(state, caller, req, path, bytes, Action::StopService).await
}

async fn v1_start(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    v1_single(state, caller, req, path, bytes, Action::StartService).await
}
