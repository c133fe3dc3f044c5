//! Who may call the local API (spec/device-api.md §2, README "Local API"). The listener is the
//! first gate: actix-web has no peer address for a unix-socket connection, whose 0660 file mode
//! already decides who may connect; anything on TCP must present a key.
//! * `/ping`, `/v1/healthy`, `/v3/status`: no key ever (healthchecks).
//! * `/v3/*` and `/metrics` ([`require_global`], wrapped around those routes): the global key
//!   on TCP (a service-scoped key gets 403), nothing on the socket.
//! * `/v1`, `/v2` and unknown paths ([`Caller`]): a valid key on TCP, also unmanaged (a
//!   deliberate difference from spec §2.1); on the socket only when managed (spec §2.1).
//!
//! The key is the `apikey` query parameter or an `Authorization: Bearer|ApiKey <key>` header,
//! compared in constant time with every key (`ports/apikeys.rs`); it gives its scope: the global
//! key every app, a service key (`io.balena.features.supervisor-api`) only its own app, plus the
//! device-wide endpoints. Also here: `POST /v1/regenerate-api-key`.
use std::future::{ready, Ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use log::{info, warn};

use helios_actors::ports::apikeys::Scope;
use helios_actors::ErrorChain;

use super::error::ApiError;
use super::ApiState;

/// The authenticated caller of a `/v1` or `/v2` route. Where no key is required (the unix
/// socket of an unmanaged device) every caller has the global scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub scope: Scope,
}

impl Caller {
    /// Whether the caller may act on this app.
    pub fn can_access(&self, app_id: u32) -> bool {
        match self.scope {
            Scope::Global => true,
            Scope::App(a) => a == app_id,
        }
    }

    /// Whether the caller may take user update locks by force from a device-wide trigger
    /// (`POST /v1/update`): the global key, or the socket where no key is required.
    pub fn may_force(&self) -> bool {
        self.scope == Scope::Global
    }
}

/// Whether the request came in on a unix socket (actix-web gives it no peer address).
pub fn on_socket(req: &HttpRequest) -> bool {
    req.peer_addr().is_none()
}

/// The key presented with the request, if any: the `apikey` query parameter (exactly this
/// name; it wins even when empty), else `Authorization: <Bearer|ApiKey> <key>` with a
/// case-insensitive scheme, one space, and a key of `[A-Za-z0-9_]+` with nothing after it.
pub fn presented_key(req: &HttpRequest) -> Option<String> {
    if let Some(v) = req
        .query_string()
        .split('&')
        .find_map(|pair| pair.strip_prefix("apikey="))
    {
        return Some(v.to_string());
    }
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, key) = h.split_once(' ')?;
    let ok_scheme = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey");
    let ok_key = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (ok_scheme && ok_key).then(|| key.to_string())
}

/// The caller of a device API route, or 401 (logged with the path, never the query).
pub fn caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    let Some(state) = req.app_data::<web::Data<ApiState>>() else {
        return Err(ApiError::Unavailable("API state missing".into()));
    };
    if on_socket(req) && !state.keys.required() {
        return Ok(Caller {
            scope: Scope::Global,
        });
    }
    match presented_key(req).and_then(|k| state.keys.lookup(&k)) {
        Some(scope) => Ok(Caller { scope }),
        None => {
            info!(path:% = req.path(), socket = on_socket(req), decision = "refuse",
                reason = "no valid API key"; "Request refused");
            Err(ApiError::Unauthorized)
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(caller(req))
    }
}

/// Middleware around `/v3` and `/metrics`: on TCP only the global key passes (no or an unknown
/// key: 401; a service-scoped key: 403); on the unix socket no key is needed.
pub async fn require_global(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let refused = if on_socket(req.request()) {
        None
    } else {
        match caller(req.request()) {
            Ok(Caller {
                scope: Scope::Global,
            }) => None,
            Ok(Caller { scope }) => {
                info!(path:% = req.path(), scope:% = scope, decision = "refuse",
                    reason = "needs the global API key"; "Request refused");
                Some(ApiError::Text {
                    status: 403,
                    message: "Forbidden: this endpoint needs the device's global API key".into(),
                })
            }
            Err(e) => Some(e),
        }
    };
    match refused {
        Some(e) => Ok(req.into_response(e.error_response()).map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

/// `POST /v1/regenerate-api-key`: replaces the key the request was made with by a new key of
/// the same scope (the global key is saved to the config file and reported as `api_secret`);
/// `200` with the new key as text. Without a key of ours (possible only when keys are not
/// required) or when the new key cannot be saved: 503 envelope, the old key stays.
pub async fn regenerate_api_key(
    req: HttpRequest,
    _caller: Caller,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let failed = |message: &str| ApiError::Failed {
        status: 503,
        message: message.to_string(),
    };
    let Some(old) = presented_key(&req) else {
        return Err(failed("no API key to regenerate"));
    };
    let keys = state.keys.clone();
    // Saving writes the config file or flushes the store: off the worker thread.
    let res = web::block(move || keys.regenerate(&old))
        .await
        .map_err(|_| failed("key regeneration was interrupted"))?;
    match res {
        Ok(Some(new)) => Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(new.expose().to_string())),
        Ok(None) => Err(failed("unknown API key")),
        Err(e) => {
            warn!(error:% = ErrorChain(&e), decision = "keep",
                reason = "the new key could not be saved"; "Device API key not regenerated");
            Err(failed(&e.to_string()))
        }
    }
}
