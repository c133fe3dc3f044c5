//! Host routes: `POST /v1/reboot` and `POST /v1/shutdown` (spec/device-api.md §4), answered
//! with the legacy `{"Data", "Error"}` envelope; HostActor asks logind after the answer.
use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use helios_actors::host::{Power, PowerError};
use helios_actors::ports::dbus::PowerAction;

use super::auth::Caller;
use super::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/reboot", web::post().to(reboot))
        .route("/v1/shutdown", web::post().to(shutdown));
}

fn force(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("force").cloned())
        .is_some_and(|f| {
            f == Value::Bool(true)
                || f == json!(1)
                || f.as_str()
                    .is_some_and(|s| matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "on"))
        })
}

async fn power(state: &ApiState, action: PowerAction, body: &[u8]) -> HttpResponse {
    let res = state
        .host_power
        .send(Power {
            action,
            force: force(body),
        })
        .await;
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

async fn reboot(state: web::Data<ApiState>, _caller: Caller, body: web::Bytes) -> HttpResponse {
    power(&state, PowerAction::Reboot, &body).await
}

async fn shutdown(state: web::Data<ApiState>, _caller: Caller, body: web::Bytes) -> HttpResponse {
    power(&state, PowerAction::PowerOff, &body).await
}
