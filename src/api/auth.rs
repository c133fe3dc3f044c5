//! Device API authentication (spec/device-api.md §2): the `apikey` query parameter or an
//! `Authorization: Bearer|ApiKey <key>` header, resolved to a scope. `/ping`, `/v1/healthy`
//! and `/v3/*` take no key; unmanaged devices take none either.
use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use helios_actors::ports::apikeys::Scope;

use super::error::ApiError;
use super::ApiState;

/// The authenticated caller of a `/v1` or `/v2` route.
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
}

/// The key presented with the request, if any.
pub fn presented_key(req: &HttpRequest) -> Option<String> {
    for pair in req.query_string().split('&') {
        if let Some(v) = pair.strip_prefix("apikey=") {
            return Some(v.to_string());
        }
    }
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, key) = h.trim().split_once(' ')?;
    let key = key.trim();
    let ok_scheme = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey");
    let ok_key = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (ok_scheme && ok_key).then(|| key.to_string())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<ApiState>>() else {
            return ready(Err(ApiError::Unavailable("API state missing".into())));
        };
        if !state.keys.required() {
            return ready(Ok(Caller {
                scope: Scope::Global,
            }));
        }
        let scope = presented_key(req).and_then(|k| state.keys.lookup(&k));
        ready(
            scope
                .map(|scope| Caller { scope })
                .ok_or(ApiError::Unauthorized),
        )
    }
}
