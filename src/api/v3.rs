//! `/ping` and the `/v3` routes (spec/helios-api-v3.md §4).
use actix_web::{web, HttpResponse, Responder};
use serde_json::json;

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
    HttpResponse::Ok().json(json!({ "status": cur.status }))
}

/// `GET /v3/version` → version, git commit and build time.
pub async fn version() -> impl Responder {
    HttpResponse::Ok().json(crate::version::info())
}

/// `GET /v3/capabilities` → what the host offers, as last probed.
pub async fn capabilities(state: web::Data<ApiState>) -> impl Responder {
    HttpResponse::Ok().json(state.caps.get())
}
