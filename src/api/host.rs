//! Host routes (spec/device-api.md §4): `POST /v1/reboot` and `POST /v1/shutdown`, answered
//! with the legacy `{"Data", "Error"}` envelope (HostActor asks logind after the answer), and
//! `GET/PATCH /v1/device/host-config`.
use actix_web::{web, HttpRequest, HttpResponse};
use log::warn;
use serde_json::{json, Value};

use helios_actors::host::{GetHostConfig, HostError, PatchHostConfig, Power};
use helios_actors::ports::dbus::PowerAction;

use super::actions::{body, truthy};
use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/reboot", web::post().to(reboot))
        .route("/v1/shutdown", web::post().to(shutdown))
        .route("/v1/device/host-config", web::get().to(get_host_config))
        .route("/v1/device/host-config", web::patch().to(patch_host_config));
}

const NO_HOST_ACTOR: &str = "the host actor is not running";

/// `GET /v1/device/host-config` → `{"network": {"hostname", "proxy"?}}`; errors 503 in the
/// JSON envelope.
async fn get_host_config(
    state: web::Data<ApiState>,
    _caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let failed = |message: String| ApiError::Failed {
        status: 503,
        message,
    };
    let cfg = match state.host_config.send(GetHostConfig).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) => return Err(failed(NO_HOST_ACTOR.into())),
    };
    let mut network = json!({"hostname": cfg.hostname});
    if let Some(p) = cfg.proxy {
        network["proxy"] = Value::Object(p);
    }
    Ok(HttpResponse::Ok().json(json!({"network": network})))
}

/// `PATCH /v1/device/host-config` with `{"network": {"hostname"?, "proxy"?}, "force"?}`:
/// 200 `OK`, or a text error: 400 bad input, 423 locked, 503 anything else.
async fn patch_host_config(
    state: web::Data<ApiState>,
    _caller: Caller,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let text = |status: u16, message: String| ApiError::Text { status, message };
    let is_json = !req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_json
        && !matches!(
            serde_json::from_slice::<Value>(&bytes),
            Ok(Value::Object(_))
        )
    {
        return Err(text(400, "the body must be a JSON object".into()));
    }
    let b = body(&req, &bytes);
    let force = truthy(b.get("force"));
    let Some(network) = b.get("network") else {
        warn!(decision = "ignore", reason = "the body has no network key"; "Host config patch without network");
        return Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("OK"));
    };
    let Some(network) = network.as_object() else {
        return Err(text(400, "network must be an object".into()));
    };
    let hostname = match network.get("hostname") {
        None => None,
        Some(Value::String(h)) => Some(h.clone()),
        Some(_) => return Err(text(400, "network.hostname must be a string".into())),
    };
    let proxy = match network.get("proxy") {
        None => None,
        Some(Value::Object(p)) => Some(p.clone()),
        Some(_) => return Err(text(400, "network.proxy must be an object".into())),
    };
    let msg = PatchHostConfig {
        hostname,
        proxy,
        force,
    };
    match state.host_config_patch.send(msg).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("OK")),
        Ok(Err(HostError::Invalid(m))) => Err(text(400, m)),
        Ok(Err(HostError::Locked(m))) => Err(text(423, m)),
        Ok(Err(HostError::Unavailable(m) | HostError::Failed(m))) => Err(text(503, m)),
        Err(_) => Err(text(503, NO_HOST_ACTOR.into())),
    }
}

async fn power(state: &ApiState, action: PowerAction, force: bool) -> HttpResponse {
    let res = state.host_power.send(Power { action, force }).await;
    match res {
        Ok(Ok(())) => HttpResponse::Accepted().json(json!({"Data": "OK", "Error": null})),
        Ok(Err(HostError::Locked(m))) => HttpResponse::build(actix_web::http::StatusCode::LOCKED)
            .json(json!({"Data": "", "Error": m})),
        Ok(Err(HostError::Unavailable(m) | HostError::Invalid(m) | HostError::Failed(m))) => {
            HttpResponse::InternalServerError().json(json!({"Data": "", "Error": m}))
        }
        Err(_) => {
            HttpResponse::InternalServerError().json(json!({"Data": "", "Error": NO_HOST_ACTOR}))
        }
    }
}

/// `{"force": <truthy>}` in a JSON or form body.
fn force(req: &HttpRequest, bytes: &[u8]) -> bool {
    truthy(body(req, bytes).get("force"))
}

async fn reboot(
    state: web::Data<ApiState>,
    _caller: Caller,
    req: HttpRequest,
    bytes: web::Bytes,
) -> HttpResponse {
    power(&state, PowerAction::Reboot, force(&req, &bytes)).await
}

async fn shutdown(
    state: web::Data<ApiState>,
    _caller: Caller,
    req: HttpRequest,
    bytes: web::Bytes,
) -> HttpResponse {
    power(&state, PowerAction::PowerOff, force(&req, &bytes)).await
}
