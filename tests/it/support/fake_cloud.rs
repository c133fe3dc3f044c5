//! A fake balena API, written from the spec files (spec/registration.md §4-§5,
//! spec/target-state-v3.md §1, spec/state-report-v3.md §1-§2), not from our client: device
//! registration and the key exchange, the target state with ETags, and state reports.
//! actix-web on 127.0.0.1:0 in a thread of its own with its own System, so `#[test]`,
//! `#[tokio::test]` and actix tests can all use it. Every request is recorded; knobs add
//! latency and faults (a status, 401, garbage, a huge body, a connection closed unanswered).
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::serve::{serve, ConnFd, Served};

/// Which endpoints a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Any,
    /// `POST /device/register`
    Register,
    /// `GET /v7/device?...` and `POST /api-key/device/{id}/device-key`
    KeyExchange,
    /// `GET /device/v3/{uuid}/state`
    Target,
    /// `PATCH /device/v3/state`
    Report,
    /// `PATCH /device/v3/tags` and `GET /v7/device_tag?...`
    Tags,
    /// Anything else (answered 404).
    Other,
}

/// What the next matching requests get instead of the normal answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status, with `Retry-After: <secs>` when given, and a short text body.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// 200 with a body that is not JSON (a captive portal).
    Garbage,
    /// 200 with a valid JSON body of about this many bytes.
    Huge(usize),
    /// The connection is closed without an answer.
    Reset,
}

/// One request as the fake saw it. Headers are kept as sent (Authorization included): the
/// keys in these tests are fake, and tests assert which key was used.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (still percent-encoded).
    pub query: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub route: Route,
    pub at: Instant,
    /// The status answered; `None` while in flight or when the connection was reset.
    pub answered: Option<u16>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn user_agent(&self) -> Option<&str> {
        self.header("user-agent")
    }
    /// The bearer token, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")?.strip_prefix("Bearer ")
    }
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A state report the fake accepted.
#[derive(Debug, Clone)]
pub struct Report {
    pub at: Instant,
    pub body: Value,
}

/// A device the fake knows.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: u64,
    pub uuid: String,
    pub fleet: u64,
    pub device_type: String,
    /// Every key that authenticates as this device (the registered one first).
    pub api_keys: Vec<String>,
    /// The `POST /device/register` body, when registered through the fake.
    pub registration: Option<Value>,
    /// Frozen or deleted: GET answers a bare 304, PATCH 401 (target-state-v3.md §1.1).
    pub frozen: bool,
}

#[derive(Default)]
struct State {
    /// Fleet id → provisioning key.
    fleets: HashMap<u64, String>,
    devices: Vec<Device>,
    /// uuid → the whole target document served for it.
    targets: HashMap<String, Vec<u8>>,
    requests: Vec<Recorded>,
    reports: Vec<Report>,
    faults: Vec<Injected>,
    latency: Duration,
    target_gets: usize,
    next_id: u64,
    next_key: u64,
    /// Device tags as the API keeps them: (tag id, device id, key, value).
    tags: Vec<(u64, u64, String, String)>,
}

/// A fault waiting for the requests it applies to.
struct Injected {
    route: Route,
    /// Only requests whose `User-Agent` starts with this (e.g. `Supervisor/`).
    user_agent: Option<String>,
    fault: Fault,
    left: usize,
}

type Shared = Arc<Mutex<State>>;

/// The fake API. Stopped on drop.
pub struct FakeCloud {
    /// Base URL, e.g. `http://127.0.0.1:40123` (no trailing `/`).
    pub url: String,
    state: Shared,
    _served: Served,
}

impl FakeCloud {
    /// Starts the fake on 127.0.0.1:0 and returns once it accepts connections.
    pub fn start() -> FakeCloud {
        let state: Shared = Arc::default();
        let shared = state.clone();
        let served = serve("fake-cloud", move |cfg| {
            let state = shared.clone();
            cfg.app_data(web::PayloadConfig::new(64 << 20))
                .default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                    handle(state.clone(), req, body)
                }));
        });
        FakeCloud {
            url: served.url.clone(),
            state,
            _served: served,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // --- the world ---------------------------------------------------------------------

    /// A fleet and its provisioning key (registration needs one).
    pub fn add_fleet(&self, fleet: u64, provisioning_key: &str) {
        self.state()
            .fleets
            .insert(fleet, provisioning_key.to_owned());
    }

    /// A device registered out of band (pre-registered, or already provisioned); returns its id.
    pub fn add_device(&self, uuid: &str, api_key: &str, fleet: u64) -> u64 {
        let mut s = self.state();
        s.next_id += 1;
        let id = 1000 + s.next_id;
        s.devices.push(Device {
            id,
            uuid: uuid.to_owned(),
            fleet,
            device_type: "generic-amd64".into(),
            api_keys: vec![api_key.to_owned()],
            registration: None,
            frozen: false,
        });
        id
    }

    /// Removes a device and its keys: its key gets 401 from then on, its uuid is free again.
    pub fn remove_device(&self, uuid: &str) {
        self.state().devices.retain(|d| d.uuid != uuid);
    }

    /// Freezes (or thaws) a device: GET answers a bare 304, PATCH 401.
    pub fn set_frozen(&self, uuid: &str, frozen: bool) {
        for d in self.state().devices.iter_mut().filter(|d| d.uuid == uuid) {
            d.frozen = frozen;
        }
    }

    pub fn devices(&self) -> Vec<Device> {
        self.state().devices.clone()
    }

    /// Serves `{"<uuid>": device_target}` as the target of `uuid`.
    pub fn set_target(&self, uuid: &str, device_target: Value) {
        self.set_target_document(uuid, json!({ uuid: device_target }));
    }

    /// Serves `document` as it is (for malformed documents).
    pub fn set_target_document(&self, uuid: &str, document: Value) {
        let bytes = serde_json::to_vec(&document).expect("a Value serialises");
        self.state().targets.insert(uuid.to_owned(), bytes);
    }

    /// The ETag the target of `uuid` is served with now.
    pub fn target_etag(&self, uuid: &str) -> String {
        etag(&target_body(&self.state(), uuid))
    }

    // --- knobs ------------------------------------------------------------------------

    /// Delay before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// The next `n` requests to `route` get `fault` (faults queue up in the order given).
    pub fn inject(&self, route: Route, n: usize, fault: Fault) {
        self.push_fault(route, None, n, fault);
    }

    /// Like [`FakeCloud::inject`], for requests whose `User-Agent` starts with `user_agent`
    /// only (e.g. the legacy supervisor's state reports, not the agent's own).
    pub fn inject_from(&self, route: Route, user_agent: &str, n: usize, fault: Fault) {
        self.push_fault(route, Some(user_agent.to_owned()), n, fault);
    }

    fn push_fault(&self, route: Route, user_agent: Option<String>, n: usize, fault: Fault) {
        if n > 0 {
            self.state().faults.push(Injected {
                route,
                user_agent,
                fault,
                left: n,
            });
        }
    }

    /// The next `n` requests get `status` (e.g. 503 with a Retry-After).
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<Duration>) {
        self.inject(
            Route::Any,
            n,
            Fault::Status {
                status,
                retry_after,
            },
        );
    }

    pub fn unauthorized_next(&self, n: usize) {
        self.fail_next(n, 401, None);
    }

    pub fn garbage_next(&self, n: usize) {
        self.inject(Route::Any, n, Fault::Garbage);
    }

    pub fn huge_next(&self, n: usize, bytes: usize) {
        self.inject(Route::Any, n, Fault::Huge(bytes));
    }

    /// The next `n` requests see their connection closed without an answer.
    pub fn reset_next(&self, n: usize) {
        self.inject(Route::Any, n, Fault::Reset);
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    // --- observations -----------------------------------------------------------------

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// Bodies of the accepted state reports, oldest first.
    pub fn reports(&self) -> Vec<Value> {
        self.state()
            .reports
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }

    /// The accepted state reports with the time they arrived.
    pub fn timed_reports(&self) -> Vec<Report> {
        self.state().reports.clone()
    }

    /// Requests to `GET /device/v3/{uuid}/state`, faulted ones included.
    pub fn target_gets(&self) -> usize {
        self.state().target_gets
    }
}

fn route_of(method: &str, path: &str) -> Route {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["device", "register"]) => Route::Register,
        ("GET", ["v7", "device"]) => Route::KeyExchange,
        ("POST", ["api-key", "device", _, "device-key"]) => Route::KeyExchange,
        ("GET", ["device", "v3", _, "state"]) => Route::Target,
        ("PATCH", ["device", "v3", "state"]) => Route::Report,
        ("PATCH", ["device", "v3", "tags"]) => Route::Tags,
        ("GET", ["v7", "device_tag"]) => Route::Tags,
        _ => Route::Other,
    }
}

async fn handle(state: Shared, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let route = route_of(req.method().as_str(), req.path());
    let (index, fault, latency) = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.requests.push(Recorded {
            method: req.method().to_string(),
            path: req.path().to_owned(),
            query: req.query_string().to_owned(),
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            route,
            at: Instant::now(),
            answered: None,
        });
        if route == Route::Target {
            s.target_gets += 1;
        }
        let ua = req
            .headers()
            .get("user-agent")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let fault = take_fault(&mut s.faults, route, ua.as_deref());
        (s.requests.len() - 1, fault, s.latency)
    };
    if !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    let resp = match fault {
        Some(Fault::Reset) => {
            reset(&req);
            return HttpResponse::InternalServerError().finish();
        }
        Some(f) => fault_answer(f),
        None => {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            answer(&mut s, route, &req, &body)
        }
    };
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.requests[index].answered = Some(resp.status().as_u16());
    resp
}

fn take_fault(faults: &mut Vec<Injected>, route: Route, ua: Option<&str>) -> Option<Fault> {
    let i = faults.iter().position(|f| {
        (f.route == Route::Any || f.route == route)
            && f.user_agent
                .as_deref()
                .is_none_or(|want| ua.is_some_and(|ua| ua.starts_with(want)))
    })?;
    let fault = faults[i].fault.clone();
    faults[i].left -= 1;
    if faults[i].left == 0 {
        faults.remove(i);
    }
    Some(fault)
}

/// Closes the connection under the request: the client gets no answer (RST on close).
pub fn reset(req: &HttpRequest) {
    if let Some(ConnFd(fd)) = req.conn_data::<ConnFd>().copied() {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: fd is the live socket of the connection this request arrived on; setsockopt
        // and shutdown leave the descriptor itself open (actix closes it).
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

fn fault_answer(fault: Fault) -> HttpResponse {
    match fault {
        Fault::Status {
            status,
            retry_after,
        } => {
            let code = actix_web::http::StatusCode::from_u16(status)
                .expect("fault statuses are valid HTTP statuses");
            let mut resp = HttpResponse::build(code);
            if let Some(after) = retry_after {
                resp.insert_header(("Retry-After", after.as_secs().to_string()));
            }
            resp.content_type("text/plain")
                .body(format!("injected {status}"))
        }
        Fault::Garbage => HttpResponse::Ok()
            .content_type("text/html")
            .body("<html><body>Sign in to the hotel wifi</body></html>"),
        Fault::Huge(bytes) => {
            let mut body = Vec::with_capacity(bytes + 16);
            body.extend_from_slice(b"{\"pad\":\"");
            body.resize(bytes.saturating_sub(2).max(body.len()), b'x');
            body.extend_from_slice(b"\"}");
            HttpResponse::Ok()
                .content_type("application/json")
                .body(body)
        }
        Fault::Reset => unreachable!("handled before"),
    }
}

fn bearer(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

fn text(status: actix_web::http::StatusCode, body: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .body(body.to_owned())
}

fn answer(s: &mut State, route: Route, req: &HttpRequest, body: &[u8]) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let key = bearer(req);
    match route {
        Route::Register => register(s, key.as_deref(), body),
        Route::KeyExchange if req.method() == "GET" => find_device(s, key.as_deref(), req),
        Route::KeyExchange => create_key(s, key.as_deref(), req.path(), body),
        Route::Target => {
            let uuid = req.path().split('/').nth(3).unwrap_or("").to_owned();
            get_target(s, key.as_deref(), &uuid, req)
        }
        Route::Report => patch_state(s, key.as_deref(), body),
        Route::Tags if req.method() == "GET" => list_tags(s, key.as_deref(), req),
        Route::Tags => patch_tags(s, key.as_deref(), body),
        Route::Any | Route::Other => text(S::NOT_FOUND, "Not Found"),
    }
}

/// registration.md §4.
fn register(s: &mut State, key: Option<&str>, body: &[u8]) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let Ok(b) = serde_json::from_slice::<Value>(body) else {
        return text(S::BAD_REQUEST, "invalid JSON");
    };
    // `application` may be a number or a numeric string.
    let fleet = match &b["application"] {
        Value::Number(n) => n.as_u64(),
        Value::String(t) => t.parse().ok(),
        _ => None,
    };
    let (Some(fleet), Some(uuid), Some(device_type)) = (
        fleet,
        b["uuid"].as_str().filter(|u| !u.is_empty()),
        b["device_type"].as_str().filter(|t| !t.is_empty()),
    ) else {
        return text(
            S::BAD_REQUEST,
            "application, uuid and device_type are required",
        );
    };
    if key.is_none() || s.fleets.get(&fleet).map(String::as_str) != key {
        return text(S::UNAUTHORIZED, "Unauthorized");
    }
    let api_key = match b["api_key"].as_str() {
        Some(k) => k.to_owned(),
        None => {
            s.next_key += 1;
            format!("{:032x}", 0xfa4e_u128 << 64 | u128::from(s.next_key))
        }
    };
    if s.devices
        .iter()
        .any(|d| d.uuid == uuid || d.api_keys.contains(&api_key))
    {
        return text(S::CONFLICT, "\"uuid\" must be unique.");
    }
    s.next_id += 1;
    let id = 1000 + s.next_id;
    s.devices.push(Device {
        id,
        uuid: uuid.to_owned(),
        fleet,
        device_type: device_type.to_owned(),
        api_keys: vec![api_key.clone()],
        registration: Some(b.clone()),
        frozen: false,
    });
    HttpResponse::Created().json(json!({"id": id, "uuid": uuid, "api_key": api_key}))
}

/// Who a bearer key is: a device (by index) or a fleet's provisioning key.
enum Who {
    Device(usize),
    Fleet(u64),
}

fn who(s: &State, key: Option<&str>) -> Option<Who> {
    let key = key?;
    if let Some(i) = s
        .devices
        .iter()
        .position(|d| d.api_keys.iter().any(|k| k == key))
    {
        return Some(Who::Device(i));
    }
    s.fleets
        .iter()
        .find(|(_, k)| k.as_str() == key)
        .map(|(f, _)| Who::Fleet(*f))
}

/// registration.md §5.1-§5.2: `GET /v7/device?$select=id&$filter=uuid eq '<uuid>'`.
fn find_device(s: &State, key: Option<&str>, req: &HttpRequest) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let Some(who) = who(s, key) else {
        return text(S::UNAUTHORIZED, "Unauthorized");
    };
    let query = parse_query(req.query_string());
    let Some(uuid) = query
        .get("$filter")
        .and_then(|f| f.strip_prefix("uuid eq '"))
        .and_then(|f| f.strip_suffix('\''))
        .map(|u| u.replace("''", "'"))
    else {
        return text(S::BAD_REQUEST, "unsupported $filter");
    };
    let visible = |i: usize, d: &Device| match who {
        Who::Device(me) => i == me,
        Who::Fleet(f) => d.fleet == f,
    };
    let d: Vec<Value> = s
        .devices
        .iter()
        .enumerate()
        .filter(|(i, d)| d.uuid == uuid && visible(*i, d))
        .map(|(_, d)| json!({"id": d.id}))
        .collect();
    HttpResponse::Ok().json(json!({ "d": d }))
}

/// registration.md §5.3: `POST /api-key/device/{id}/device-key` `{"apiKey": ...}`.
fn create_key(s: &mut State, key: Option<&str>, path: &str, body: &[u8]) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let Some(Who::Fleet(fleet)) = who(s, key) else {
        return text(S::UNAUTHORIZED, "Unauthorized");
    };
    let id: Option<u64> = path.split('/').nth(3).and_then(|i| i.parse().ok());
    let Some(device) = s
        .devices
        .iter_mut()
        .find(|d| Some(d.id) == id && d.fleet == fleet)
    else {
        return text(S::NOT_FOUND, "Not Found");
    };
    let new_key = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|b| b["apiKey"].as_str().map(str::to_owned));
    let Some(new_key) = new_key else {
        return text(S::BAD_REQUEST, "apiKey is required");
    };
    if !device.api_keys.contains(&new_key) {
        device.api_keys.push(new_key.clone());
    }
    HttpResponse::Ok().json(new_key)
}

fn default_target(uuid: &str) -> Value {
    let short: String = uuid.chars().take(7).collect();
    json!({ uuid: { "name": format!("device-{short}"), "config": {}, "apps": {} } })
}

fn target_body(s: &State, uuid: &str) -> Vec<u8> {
    s.targets
        .get(uuid)
        .cloned()
        .unwrap_or_else(|| serde_json::to_vec(&default_target(uuid)).expect("a Value serialises"))
}

/// `W/"<length in hex>-<FNV-1a 64 of the body>"`, like a weak Express ETag.
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("W/\"{:x}-{h:016x}\"", body.len())
}

/// If-None-Match against `tag` with the weak comparison (RFC 9110 §13.1.2).
fn none_match(header: &str, tag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    header
        .split(',')
        .any(|t| t.trim() == "*" || strip(t) == strip(tag))
}

/// target-state-v3.md §1.
fn get_target(s: &State, key: Option<&str>, uuid: &str, req: &HttpRequest) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let Some(Who::Device(i)) = who(s, key) else {
        return text(S::UNAUTHORIZED, "Unauthorized");
    };
    let device = &s.devices[i];
    if device.uuid != uuid {
        return text(S::UNAUTHORIZED, "Unauthorized");
    }
    if device.frozen {
        return HttpResponse::NotModified().finish();
    }
    let body = target_body(s, uuid);
    let tag = etag(&body);
    let inm = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok());
    if inm.is_some_and(|h| none_match(h, &tag)) {
        return HttpResponse::NotModified()
            .insert_header(("ETag", tag))
            .finish();
    }
    HttpResponse::Ok()
        .insert_header(("ETag", tag))
        .content_type("application/json")
        .body(body)
}

/// state-report-v3.md §1-§2.
/// state-report-v3.md §9: `{uuid: {key: value}}` from that device; 400 for no tags.
fn patch_tags(s: &mut State, key: Option<&str>, body: &[u8]) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let Some(Who::Device(i)) = who(s, key) else {
        return text(S::UNAUTHORIZED, "Unauthorized");
    };
    let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(body) else {
        return text(S::BAD_REQUEST, "invalid JSON");
    };
    let device = s.devices[i].id;
    let tags = match top.get(&s.devices[i].uuid) {
        Some(Value::Object(tags)) if !tags.is_empty() && tags.values().all(Value::is_string) => {
            tags.clone()
        }
        _ => return text(S::BAD_REQUEST, "No tags were sent to be updated."),
    };
    for (k, v) in tags {
        let v = v.as_str().unwrap_or_default().to_string();
        match s.tags.iter_mut().find(|t| t.1 == device && t.2 == k) {
            Some(t) => t.3 = v,
            None => {
                s.next_id += 1;
                let id = 1000 + s.next_id;
                s.tags.push((id, device, k, v));
            }
        }
    }
    HttpResponse::Ok().finish()
}

/// `GET /v7/device_tag?$select=id,tag_key,value&$filter=device eq <id>` (device-api.md,
/// GET /v2/device/tags): a device key sees its own device's tags only.
fn list_tags(s: &State, key: Option<&str>, req: &HttpRequest) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let Some(Who::Device(i)) = who(s, key) else {
        return text(S::UNAUTHORIZED, "Unauthorized");
    };
    let query = parse_query(req.query_string());
    let Some(device) = query
        .get("$filter")
        .and_then(|f| f.strip_prefix("device eq "))
        .and_then(|id| id.parse::<u64>().ok())
    else {
        return text(S::BAD_REQUEST, "unsupported $filter");
    };
    let d: Vec<Value> = s
        .tags
        .iter()
        .filter(|t| t.1 == device && device == s.devices[i].id)
        .map(|(id, _, k, v)| json!({"id": id, "tag_key": k, "value": v}))
        .collect();
    HttpResponse::Ok().json(json!({ "d": d }))
}

fn patch_state(s: &mut State, key: Option<&str>, body: &[u8]) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(body) else {
        return text(S::BAD_REQUEST, "invalid JSON");
    };
    // Checked before authentication: no object-valued key, or a frozen device.
    let uuids: Vec<&String> = top
        .iter()
        .filter(|(_, v)| v.is_object())
        .map(|(k, _)| k)
        .collect();
    let frozen = |u: &String| s.devices.iter().any(|d| &d.uuid == u && d.frozen);
    if uuids.is_empty() || uuids.iter().any(|u| frozen(u)) {
        return text(S::UNAUTHORIZED, "Unauthorized");
    }
    let Some(Who::Device(i)) = who(s, key) else {
        return text(S::UNAUTHORIZED, "Unauthorized");
    };
    if uuids.iter().any(|u| **u != s.devices[i].uuid) {
        return text(S::UNAUTHORIZED, "Unauthorized");
    }
    for fields in top.values() {
        if let Err(reason) = check_device_fields(fields) {
            return text(S::BAD_REQUEST, &reason);
        }
    }
    s.reports.push(Report {
        at: Instant::now(),
        body: Value::Object(top),
    });
    HttpResponse::Ok().finish()
}

/// The types the API validates (state-report-v3.md §2.1): a wrong type is a 400.
fn check_device_fields(fields: &Value) -> Result<(), String> {
    let Some(fields) = fields.as_object() else {
        return Err("device state must be an object".into());
    };
    for (name, value) in fields {
        let ok = match name.as_str() {
            "status" | "ip_address" | "mac_address" | "supervisor_version" => value.is_string(),
            "os_version"
            | "os_variant"
            | "provisioning_state"
            | "api_secret"
            | "cpu_id"
            | "storage_block_device" => value.is_string() || value.is_null(),
            "api_port" => value.is_number(),
            "provisioning_progress"
            | "cpu_usage"
            | "cpu_temp"
            | "memory_usage"
            | "memory_total"
            | "storage_usage"
            | "storage_total" => value.is_number() || value.is_null(),
            "is_undervolted" | "is_online" => value.is_boolean(),
            "apps" => value.is_object(),
            _ => true,
        };
        if !ok {
            return Err(format!("invalid type for {name}"));
        }
    }
    Ok(())
}

/// `a=b&c=d` with `%XX` and `+` decoded.
fn parse_query(q: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3])
                        .ok()
                        .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(v) => {
                            out.push(v);
                            i += 3;
                        }
                        None => {
                            out.push(b'%');
                            i += 1;
                        }
                    }
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}
