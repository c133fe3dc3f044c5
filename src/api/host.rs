//! Host routes: `POST /v1/reboot` and `POST /v1/shutdown` (spec/device-api.md §4), answered
//! with the legacy `{"Data", "Error"}` envelope; HostActor asks logind after the answer.
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use helios_actors::host::{Power, PowerError};
use helios_actors::ports::dbus::PowerAction;

use super::actions::{body, truthy};
use super::auth::Caller;
use super::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/reboot", web::post().to(reboot))
        .route("/v1/shutdown", web::post().to(shutdown));
}

async fn power(state: &ApiState, action: PowerAction, force: bool) -> HttpResponse {
    let res = state.host_power.send(Power { action, force }).await;
    match res {
        Ok(Ok(())) => HttpResponse::Accepted().json(json!({"Data": "OK", "Error": null})),
        Ok(Err(PowerError::Locked(m))) => HttpResponse::build(actix_web::http::StatusCode::LOCKED)
            .json(json!({"Data": "", "Error": m})),
        Ok(Err(PowerError::Unavailable(m))) => {
            HttpResponse::InternalServerError().json(json!({"Data": "", "Error": m}))
        }
        Err(_) => HttpResponse::InternalServerError()
            .json(json!({"Data": "", "Error": "the host actor is not running"})),
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
