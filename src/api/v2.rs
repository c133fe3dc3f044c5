//! The supervisor `/v2` device API (spec/device-api.md §3–§4).
use actix_web::web;

pub fn routes(_cfg: &mut web::ServiceConfig) {}
