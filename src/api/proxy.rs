//! The proxy's HTTP side (spec/helios-proxy.md §5, spec/helios-api-v3.md §8.1): asks the
//! routing snapshot ProxyActor publishes where a request goes, then streams it there and the
//! answer back (awc both ways, no buffering), or answers the legacy supervisor's target poll
//! from the legacy copy. The two routes helios answers as the legacy supervisor's (its target
//! copy, its state report) need the device's cloud key, not just its `User-Agent`. Only its
//! state report is read whole (bounded), to take its `apps` out (spec/state-report-v3.md §3.5);
//! they are merged into helios's own report once the API accepted the rest.
//!
//! Streaming: request and answer bodies are never buffered (but that report); sizes are kept
//! with `Content-Length` when known, chunked bodies stay chunked, hop-by-hop headers (and those
//! `Connection` names), `Host` and `Content-Length` are not copied, nothing is decompressed,
//! redirects are not followed. Each API worker has its own awc client (awc is `!Send`), with
//! the cloud port's TLS roots and `remote.extra_ca`.
//!
//! Upstream failures answer JSON `{"error", "upstream"}`, one WARN line each: 504 when the
//! upstream's answer has not started within the request timeout (`remote.request_timeout_ms`,
//! 59 s unmanaged; it also bounds sending the request body), 502 when it cannot be reached,
//! resets or does not speak HTTP, 400 for a bad URL. A body that stalls after its answer
//! started is not timed out (log follows must stay open). Before ProxyActor has published its
//! routing the answer is 503 + `Retry-After: 1`. Every request streamed to the legacy
//! supervisor sets its `legacy_answering` capability (an HTTP answer or not).
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderMap, HeaderName};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use log::{debug, info, warn};
use serde_json::{json, Value};

use helios_actors::proxy::{authenticate, presented_key, LegacyAuth, Route, RoutingBus};

use super::ApiState;

/// What the proxy handler needs besides the buses (present only in proxy mode).
#[derive(Clone)]
pub struct ProxyState {
    pub routing: RoutingBus,
    /// Until the upstream's response head arrives (the request body included); the response
    /// body then streams without a deadline (log follows, large downloads).
    pub timeout: Duration,
    /// Largest legacy state report read whole.
    pub max_report_bytes: usize,
    pub extra_ca: Option<PathBuf>,
}

/// The awc client of one API worker (awc is `!Send`: each worker builds its own).
pub struct ProxyClient(awc::Client);

impl ProxyClient {
    pub fn new(s: &ProxyState) -> ProxyClient {
        let builder = awc::Client::builder()
            .no_default_headers()
            .disable_redirects()
            .timeout(s.timeout);
        let connector = awc::Connector::new().timeout(s.timeout.min(Duration::from_secs(10)));
        let client = match helios_actors::ports::cloud::tls_config(s.extra_ca.as_deref()) {
            Ok(tls) => builder
                .connector(connector.rustls_0_23(Arc::new(tls)))
                .finish(),
            Err(e) => {
                warn!(error:% = e, decision = "continue",
                    reason = "https upstreams will fail; the extra CA is checked by the poller too"; "Proxy TLS not set up");
                builder.connector(connector).finish()
            }
        };
        ProxyClient(client)
    }
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus `Host`
/// (the upstream's own) and `Content-Length` (set from the body being streamed).
fn forwarded(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    // Also drop what the `Connection` header names as hop-by-hop.
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for (k, v) in from {
        if forwarded(k) && !named.iter().any(|n| n == k.as_str()) {
            to.append(k.clone(), v.clone());
        }
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A JSON error answered by the proxy itself.
fn error(status: StatusCode, upstream: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": message, "upstream": upstream}))
}

fn unavailable(retry_after: u32, message: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((header::RETRY_AFTER, retry_after.to_string()))
        .json(json!({"error": message}))
}

/// The default service in proxy mode: every request helios does not answer itself.
pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
    client: Option<web::Data<ProxyClient>>,
) -> HttpResponse {
    let (Some(p), Some(client)) = (state.proxy.as_ref(), client) else {
        return HttpResponse::NotFound().finish();
    };
    let Some(routing) = p.routing.get() else {
        return unavailable(1, "the proxy is starting");
    };
    let ua = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let route = routing.route(req.method().as_str(), req.path(), ua);
    if route.acts_for_legacy() {
        if let Some(refused) = refuse_unproven(&req, &state, routing.remote.is_none()) {
            return refused;
        }
    }
    match route {
        Route::LegacyTarget(None) => {
            debug!(path:% = req.path(), decision = "withhold",
                reason = "no legacy target yet or helios is applying"; "Legacy target poll answered 503");
            unavailable(15, "no target for the legacy supervisor yet")
        }
        Route::LegacyTarget(Some(t)) => {
            let matches = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|e| e.trim() == t.etag || e.trim() == "*"));
            debug!(path:% = req.path(), decision = "serve", unchanged = matches; "Legacy target poll answered");
            if matches {
                HttpResponse::NotModified()
                    .insert_header((header::ETAG, t.etag.clone()))
                    .finish()
            } else {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .insert_header((header::ETAG, t.etag.clone()))
                    .body(t.body.clone())
            }
        }
        Route::Unmanaged => unavailable(600, "the device is not managed: no remote API"),
        Route::Remote { base } => stream(&client.0, &req, payload, &base, "remote").await,
        Route::Legacy { base } => stream(&client.0, &req, payload, &base, "legacy").await,
        Route::LegacyReport { remote } => {
            let body = match payload.to_bytes_limited(p.max_report_bytes).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, "remote", &e.to_string()),
                Err(_) => {
                    warn!(path:% = req.path(), decision = "reject", reason = "legacy report too large"; "Proxy request refused");
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "remote",
                        "state report too large",
                    );
                }
            };
            let (body, apps) = take_legacy_apps(&routing, body);
            let answer = send(&client.0, &req, &remote, "remote", Body::Bytes(body)).await;
            if let Some(apps) = apps {
                merge_legacy_apps(&state, answer.status(), apps);
            }
            answer
        }
    }
}

/// Refuses a request that claims to be the legacy supervisor's (`User-Agent: Supervisor/`)
/// on a route helios answers as its, unless it presents the device's cloud key (`apikey=` or
/// `Authorization: Bearer`, as the legacy supervisor sends it): 401, one log line without the
/// key. While helios does not know the key yet, 503 with a `Retry-After`.
fn refuse_unproven(req: &HttpRequest, state: &ApiState, unmanaged: bool) -> Option<HttpResponse> {
    let device_key = state.remote.read(|r| r.api_key.clone());
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let presented = presented_key(req.query_string(), authorization);
    let auth = authenticate(presented, device_key.as_ref());
    match auth {
        LegacyAuth::Device => None,
        LegacyAuth::Unknown => {
            debug!(method:% = req.method(), path:% = req.path(), decision = "withhold",
                reason = auth.reason(); "Legacy supervisor request answered 503");
            Some(if unmanaged {
                unavailable(600, "the device is not managed: no remote API")
            } else {
                unavailable(15, "the device key is not known yet")
            })
        }
        LegacyAuth::Missing | LegacyAuth::Wrong => {
            warn!(method:% = req.method(), path:% = req.path(), peer:? = req.peer_addr(),
                decision = "refuse", reason = auth.reason(); "Legacy supervisor claim refused");
            Some(HttpResponse::Unauthorized().json(json!({
                "error": "the legacy supervisor's routes need the device API key"})))
        }
    }
}

/// Hands the legacy supervisor's reported apps to helios's reporter once the API accepted the
/// report they came with (a refused report changes nothing; its status goes back unchanged).
fn merge_legacy_apps(state: &ApiState, status: StatusCode, apps: serde_json::Map<String, Value>) {
    if !status.is_success() {
        info!(status = status.as_u16(), apps = apps.len(), decision = "drop",
            reason = "the API did not accept the legacy report"; "Legacy report apps not merged");
        return;
    }
    let changed = state.remote.update(|r| r.legacy_apps = apps);
    debug!(decision = "merge", changed, reason = "helios reports every app, whole"; "Legacy report apps taken");
}

/// Takes `apps` out of the legacy supervisor's state report: the body to forward (the rest
/// of the report, unchanged) and the apps it runs, for helios's reporter (which sends them
/// with its own, whole). A body that is not a report object passes unchanged, with no apps.
fn take_legacy_apps(
    routing: &helios_actors::proxy::Routing,
    body: web::Bytes,
) -> (web::Bytes, Option<serde_json::Map<String, Value>>) {
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(&body) else {
        return (body, None);
    };
    let mut found = None;
    for (uuid, dev) in doc.iter_mut() {
        let Some(apps) = dev.as_object_mut().and_then(|d| d.remove("apps")) else {
            continue;
        };
        if *uuid == routing.uuid {
            found = apps.as_object().cloned();
        }
    }
    let Some(apps) = found else {
        return (body, None);
    };
    let ours: serde_json::Map<String, Value> = apps
        .into_iter()
        .filter(|(k, _)| routing.legacy_apps.contains(k))
        .collect();
    let body =
        web::Bytes::from(serde_json::to_vec(&Value::Object(doc)).expect("a JSON value serialises"));
    (body, Some(ours))
}

/// The `legacy_answering` capability follows every request proxied to the legacy supervisor:
/// an HTTP answer is found, a failure to get one is lost (one line per change).
fn note_answering(req: &HttpRequest, upstream: &str, err: Option<&awc::error::SendRequestError>) {
    if upstream != "legacy" {
        return;
    }
    let Some(state) = req.app_data::<web::Data<ApiState>>() else {
        return;
    };
    let answering = err.is_none();
    if state.caps.update(|c| c.legacy_answering = Some(answering)) {
        match err {
            None => {
                log::info!(capability = "legacy_supervisor", answering, decision = "found"; "Capability found")
            }
            Some(e) => {
                warn!(capability = "legacy_supervisor", answering, error:% = e, decision = "lost"; "Capability lost")
            }
        }
    }
}

/// `POST /v1/update` in proxy mode with a key helios does not know: the legacy supervisor's keys
/// (the cloud's API proxy and its containers use those) are its to check, so the request goes
/// to it unchanged. Its answer is returned, and whether it accepted the key (a 2xx): only then
/// does helios poll too. None when the proxy has no routing yet.
pub async fn legacy_update(
    req: &HttpRequest,
    body: web::Bytes,
    state: &ApiState,
    client: Option<web::Data<ProxyClient>>,
) -> Option<(HttpResponse, bool)> {
    let (Some(p), Some(client)) = (state.proxy.as_ref(), client) else {
        return None;
    };
    let routing = p.routing.get()?;
    let answer = send(&client.0, req, &routing.legacy, "legacy", Body::Bytes(body)).await;
    let accepted = answer.status().is_success();
    Some((answer, accepted))
}

enum Body {
    Stream(web::Payload),
    Bytes(web::Bytes),
}

async fn stream(
    client: &awc::Client,
    req: &HttpRequest,
    payload: web::Payload,
    base: &str,
    upstream: &'static str,
) -> HttpResponse {
    send(client, req, base, upstream, Body::Stream(payload)).await
}

/// Sends the request upstream (method, path, query, headers) and streams the answer back.
async fn send(
    client: &awc::Client,
    req: &HttpRequest,
    base: &str,
    upstream: &'static str,
    body: Body,
) -> HttpResponse {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{base}{path}");
    let mut out = client.request(req.method().clone(), &url).no_decompress();
    copy_headers(req.headers(), out.headers_mut());
    let chunked = req
        .headers()
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let res = match body {
        Body::Bytes(b) => out.send_body(b).await,
        Body::Stream(p) => match content_length(req.headers()) {
            Some(n) => out.send_body(SizedStream::new(n, p)).await,
            None if chunked => out.send_stream(p).await,
            None => out.send().await,
        },
    };
    note_answering(req, upstream, res.as_ref().err());
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            use awc::error::SendRequestError as E;
            let status = match &e {
                E::Timeout => StatusCode::GATEWAY_TIMEOUT,
                E::Url(_) => StatusCode::BAD_REQUEST,
                // Cannot connect, reset, or an answer that is not HTTP.
                _ => StatusCode::BAD_GATEWAY,
            };
            warn!(upstream, method:% = req.method(), path:% = req.path(), status = status.as_u16(),
                error:% = e, decision = "fail"; "Proxy upstream failed");
            return error(status, upstream, &format!("{upstream} upstream: {e}"));
        }
    };
    debug!(upstream, method:% = req.method(), path:% = req.path(), status = res.status().as_u16(),
        decision = "forward"; "Request proxied");
    let mut answer = HttpResponse::build(res.status());
    let length = content_length(res.headers());
    let mut headers = HeaderMap::new();
    copy_headers(res.headers(), &mut headers);
    for (k, v) in headers {
        answer.append_header((k, v));
    }
    if matches!(
        res.status(),
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) || req.method() == actix_web::http::Method::HEAD
    {
        return answer.finish();
    }
    match length {
        Some(n) => answer.body(SizedStream::new(n, res)),
        None => answer.streaming(res),
    }
}
