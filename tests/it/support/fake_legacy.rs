//! A fake legacy balenaSupervisor device API, written from spec/helios-proxy.md §5 and
//! spec/device-api.md: it records every request it receives (method, path, query, headers,
//! body size and a checksum; the first 64 KiB of the body), answers `POST /v1/update` and
//! `GET /v2/state/status`, and has routes to exercise a proxy: an echo with a chosen status,
//! a streamed upload that only counts, a streamed download of any size, a slow answer and a
//! connection closed unanswered. actix-web on 127.0.0.1:0 in a thread with its own System.
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::json;

use super::fake_cloud::reset;
use super::serve::{serve, Served};

/// Bytes of a request body kept for assertions.
const KEEP: usize = 64 << 10;

/// One request as the fake legacy supervisor saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Lower-case names, as received.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// Sum of the body bytes (mod 2^64): a cheap check that every byte arrived.
    pub body_sum: u64,
    /// The first 64 KiB of the body.
    pub body: Vec<u8>,
    /// When the request (and its whole body) had arrived.
    pub at: std::time::SystemTime,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// `POST /v1/update` answers this status this many times, then 204.
    update_fail: Option<(u16, usize)>,
    /// When set, `POST /v1/update` needs one of these keys (`Bearer` or `apikey=`), else 401,
    /// as the legacy supervisor checks its own keys.
    update_keys: Option<Vec<String>>,
}

type Shared = Arc<Mutex<State>>;

/// The fake legacy supervisor. Stopped on drop.
pub struct FakeLegacy {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    state: Shared,
    _served: Served,
}

/// A deterministic byte pattern for downloads: byte i is `i % 251`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// The checksum of `n` pattern bytes (what a full download must add up to).
pub fn pattern_sum(n: u64) -> u64 {
    (0..n).fold(0u64, |s, i| s.wrapping_add(u64::from(pattern_byte(i))))
}

impl FakeLegacy {
    pub fn start() -> FakeLegacy {
        let state: Shared = Arc::default();
        let shared = state.clone();
        let served = serve("fake-legacy", move |cfg| {
            let state = shared.clone();
            cfg.default_service(web::to(move |req: HttpRequest, body: web::Payload| {
                handle(state.clone(), req, body)
            }));
        });
        FakeLegacy {
            url: served.url.clone(),
            state,
            _served: served,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }

    /// Requests to `path`.
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// `POST /v1/update` accepts only these keys from now on (401 otherwise).
    pub fn require_update_keys(&self, keys: &[&str]) {
        self.state().update_keys = Some(keys.iter().map(|k| k.to_string()).collect());
    }

    /// The next `n` `POST /v1/update` get `status`.
    pub fn fail_updates(&self, n: usize, status: u16) {
        self.state().update_fail = Some((status, n));
    }
}

fn query(req: &HttpRequest, key: &str) -> Option<u64> {
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()?
        .get(key)?
        .parse()
        .ok()
}

async fn handle(state: Shared, req: HttpRequest, mut payload: web::Payload) -> HttpResponse {
    let path = req.path().to_string();
    if path == "/reset" {
        reset(&req);
        return HttpResponse::InternalServerError().finish();
    }
    if path == "/slow" {
        let ms = query(&req, "ms").unwrap_or(5000);
        actix_web::rt::time::sleep(Duration::from_millis(ms)).await;
    }
    let (mut len, mut sum, mut kept) = (0u64, 0u64, Vec::new());
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else { break };
        len += chunk.len() as u64;
        sum = chunk.iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
        let room = KEEP.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    let received = Received {
        method: req.method().to_string(),
        path: path.clone(),
        query: req.query_string().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body_len: len,
        body_sum: sum,
        body: kept,
        at: std::time::SystemTime::now(),
    };
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.received.push(received);
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/v1/update")
            if st.update_keys.as_ref().is_some_and(|keys| {
                let bearer = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                let query = req
                    .query_string()
                    .split('&')
                    .find_map(|p| p.strip_prefix("apikey="));
                !keys.iter().any(|k| Some(k.as_str()) == bearer.or(query))
            }) =>
        {
            HttpResponse::Unauthorized().body("Unauthorized")
        }
        ("POST", "/v1/update") => match st.update_fail.as_mut() {
            Some((status, n)) if *n > 0 => {
                *n -= 1;
                HttpResponse::build(actix_web::http::StatusCode::from_u16(*status).unwrap())
                    .finish()
            }
            _ => HttpResponse::NoContent().finish(),
        },
        ("GET", "/v2/state/status") => HttpResponse::Ok().json(json!({
            "status": "success", "appState": "applied", "overallDownloadProgress": null,
            "containers": [], "images": [], "release": null})),
        (_, "/download") => {
            let n = query(&req, "bytes").unwrap_or(0);
            let chunk = 64u64 << 10;
            let body = futures::stream::iter((0..n.div_ceil(chunk)).map(move |c| {
                let start = c * chunk;
                let end = (start + chunk).min(n);
                Ok::<_, std::io::Error>(web::Bytes::from(
                    (start..end).map(pattern_byte).collect::<Vec<u8>>(),
                ))
            }));
            HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(actix_web::body::SizedStream::new(n, body))
        }
        _ => {
            let status = query(&req, "status").unwrap_or(200) as u16;
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .insert_header(("X-Legacy", "fake"))
                .insert_header(("Set-Cookie", "a=1"))
                .json(json!({"method": req.method().as_str(), "path": path,
                    "bytes": len, "sum": sum}))
        }
    }
}
