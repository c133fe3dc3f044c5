//! Device API authentication (spec/device-api.md §2): the `apikey` query parameter or an
//! `Authorization: Bearer|ApiKey <key>` header, resolved to a scope by the [`Caller`] extractor,
//! and `POST /v1/regenerate-api-key`. `/ping`, `/v1/healthy` and `/v3/*` take no key; neither
//! does anything when keys are not required (unmanaged without a configured key).
//!
//! Keys are required when the device is managed or a key is configured (an unmanaged device
//! without a key takes none: our reading of device-api.md §2.1 for a device that has no
//! cloud). The presented key is compared in constant time with every key
//! (`ports/apikeys.rs`) and gives its scope: the global key every app, a service key
//! (`io.balena.features.supervisor-api`) only its own app, plus the device-wide endpoints.
use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest, HttpResponse};
use log::warn;

use helios_actors::ports::apikeys::Scope;
use helios_actors::ErrorChain;

use super::error::ApiError;
use super::ApiState;

/// The authenticated caller of a `/v1` or `/v2` route. Without required keys every caller has
/// the global scope.
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
