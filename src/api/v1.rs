//! The supervisor `/v1` device API (spec/device-api.md §3–§4): health, the identify LED, the
//! legacy device status and the single-container app view.
//!
//! Health (`GET /v1/healthy`): the engine is reachable and the apply loop is not stuck, i.e. it
//! has not shown `applying changes` for longer than [`STUCK_AFTER`] without an image pull or a
//! host OS update in progress ([`ApplyClock`] keeps when that started; [`in_progress`]). Poll freshness is not checked: the
//! PollActor publishes no time of its last successful fetch.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use log::{info, warn};
use serde_json::{json, Value};

use helios_actors::bus::{StateBus, TargetBus};
use helios_actors::host::OsVersion;
use helios_actors::model::host::HostPhase;
use helios_actors::model::{CurrentState, UpdateStatus};
use helios_actors::ports::oci::{injected_environment, ServiceContext};
use helios_actors::ports::sysinfo::SysInfo;

use super::auth::Caller;
use super::error::ApiError;
use super::v2::{parse_app_id, View};
use super::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/healthy", web::get().to(healthy))
        .route("/v1/blink", web::post().to(blink))
        .route("/v1/device", web::get().to(device))
        .route("/v1/apps/{app_id}", web::get().to(app))
        .route(
            "/v1/regenerate-api-key",
            web::post().to(super::auth::regenerate_api_key),
        );
}

/// An apply showing `applying changes` this long without a pull in progress is stuck: twice
/// the default poll interval, as upstream bounds an apply cycle.
pub const STUCK_AFTER: Duration = Duration::from_secs(2 * 15 * 60);

/// Since when the apply loop has shown `applying changes` without a break.
#[derive(Debug, Default)]
pub struct ApplyClock {
    since: Mutex<Option<Instant>>,
}

impl ApplyClock {
    /// A clock kept up to date by a task watching both buses (spawned on the current actix
    /// runtime, for its lifetime).
    pub fn watch(state: StateBus, targets: TargetBus) -> Arc<ApplyClock> {
        let clock = Arc::new(ApplyClock::default());
        let c = clock.clone();
        let mut states = state.subscribe();
        let mut target_reqs = targets.subscribe();
        actix_web::rt::spawn(async move {
            loop {
                let latest = targets.latest().map(|t| t.seq);
                let applying = state.get().status_for(latest) == UpdateStatus::ApplyingChanges;
                c.observe(applying, Instant::now());
                tokio::select! {
                    r = states.changed() => if r.is_err() { break },
                    r = target_reqs.changed() => if r.is_err() { break },
                }
            }
        });
        clock
    }

    /// Records whether the loop is applying at `now`; returns for how long it has been.
    pub fn observe(&self, applying: bool, now: Instant) -> Option<Duration> {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        match (applying, *since) {
            (false, _) => *since = None,
            (true, None) => *since = Some(now),
            (true, Some(_)) => {}
        }
        since.map(|s| now.saturating_duration_since(s))
    }
}

/// Work that may rightly take longer than [`STUCK_AFTER`]: an image pull, or a host OS update
/// (installing or waiting to retry one) once the apps are on target (an app apply that hangs
/// beside it is still stuck).
pub fn in_progress(cur: &CurrentState) -> bool {
    cur.model.images.values().any(|i| i.download_progress < 100)
        || (cur.status != UpdateStatus::ApplyingChanges
            && cur
                .host
                .as_ref()
                .is_some_and(|h| h.phase == HostPhase::Working))
}

/// Why the device is unhealthy, if it is; `progressing`: see [`in_progress`].
pub fn health_problem(
    engine: bool,
    applying_for: Option<Duration>,
    progressing: bool,
) -> Option<&'static str> {
    if !engine {
        return Some("engine unreachable");
    }
    if applying_for.is_some_and(|d| d > STUCK_AFTER) && !progressing {
        return Some("apply stuck");
    }
    None
}

fn text(status: actix_web::http::StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body)
}

/// `GET /v1/healthy` (no key) → 200 `OK`, or 500 `Unhealthy`.
async fn healthy(state: web::Data<ApiState>, clock: Option<web::Data<ApplyClock>>) -> HttpResponse {
    let view = View::read(&state);
    let applying = view.status == UpdateStatus::ApplyingChanges;
    let local = ApplyClock::default();
    let clock: &ApplyClock = match &clock {
        Some(c) => c,
        None => &local,
    };
    let applying_for = clock.observe(applying, Instant::now());
    let engine = state.caps.get().engine.is_some();
    match health_problem(engine, applying_for, in_progress(&view.cur)) {
        None => text(actix_web::http::StatusCode::OK, "OK"),
        Some(reason) => {
            warn!(reason, duration_ms = applying_for.map_or(0, |d| d.as_millis() as u64),
                decision = "unhealthy"; "Health check failed");
            text(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "Unhealthy",
            )
        }
    }
}

/// The identify LED (balenaOS boards; absent on most generic Linux hosts).
const LED_FILE: &str = "/sys/class/leds/led0/brightness";
const BLINK_FOR: Duration = Duration::from_secs(15);
static BLINKING: AtomicBool = AtomicBool::new(false);

/// Blinks the LED at `path` for `total` (four flashes, then a pause, repeated), then puts its
/// previous brightness back. Blocking.
pub fn blink_led(path: &Path, total: Duration, step: Duration) -> std::io::Result<()> {
    let before = std::fs::read_to_string(path).unwrap_or_else(|_| "0".into());
    let end = Instant::now() + total;
    let mut result = Ok(());
    'outer: while Instant::now() < end {
        for _ in 0..4 {
            for v in ["1", "0"] {
                if let Err(e) = std::fs::write(path, v) {
                    result = Err(e);
                    break 'outer;
                }
                std::thread::sleep(step);
            }
        }
        std::thread::sleep(step * 5);
    }
    let restored = std::fs::write(path, before.trim());
    result.and(restored)
}

/// `POST /v1/blink` → 200 `OK` at once; the LED, if there is one, blinks for 15 s.
async fn blink(_caller: Caller) -> HttpResponse {
    let led = Path::new(LED_FILE);
    if !led.exists() {
        info!(path = LED_FILE, decision = "skip", reason = "no LED"; "Blink requested");
    } else if !BLINKING.swap(true, Ordering::SeqCst) {
        info!(path = LED_FILE, decision = "blink"; "Blink requested");
        std::thread::spawn(move || {
            if let Err(e) = blink_led(led, BLINK_FOR, Duration::from_millis(200)) {
                warn!(path = LED_FILE, error:% = e, decision = "stop"; "Blink failed");
            }
            BLINKING.store(false, Ordering::SeqCst);
        });
    }
    text(actix_web::http::StatusCode::OK, "OK")
}

/// The port the request came in on (TCP), else the default device API port.
fn api_port(req: &HttpRequest) -> u16 {
    match req.peer_addr() {
        Some(_) => req.app_config().local_addr().port(),
        None => 48484,
    }
}

/// `GET /v1/device` → the legacy single-app device status.
async fn device(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let view = View::read(&state);
    let facts = web::block(|| SysInfo::new(Path::new("/")).host_facts())
        .await
        .map_err(|e| super::v2::failed(503, format!("host facts unavailable: {e}")))?;
    let os_version = state
        .caps
        .get()
        .host_os
        .and_then(|o| OsVersion::parse(&o).ok())
        .map(|o| format!("{} {}", o.name, o.version))
        .or(facts.os_version);
    let pending = view.pending();
    let mut out = json!({
        "api_port": api_port(&req),
        "os_version": os_version,
        "supervisor_version": crate::version::VERSION,
        "update_pending": pending,
        "update_failed": view.status == UpdateStatus::Aborted,
        "update_downloaded": false,
        "status": Value::Null,
        "download_progress": Value::Null,
    });
    if let Some(ip) = facts.ip_address {
        out["ip_address"] = json!(ip);
    }
    if let Some(mac) = facts.mac_address {
        out["mac_address"] = json!(mac);
    }
    if let Some((_, uuid)) = view.first_app(&caller) {
        let report = view.report(&state.remote.get());
        let release = view
            .target_commit(&uuid)
            .or_else(|| view.current_commit(&uuid));
        let services = release
            .as_ref()
            .and_then(|r| report.get(&uuid)?.get("releases")?.get(r)?.get("services"))
            .and_then(Value::as_object);
        if let Some((_, s)) = services.and_then(|s| s.iter().next()) {
            out["status"] = match s["status"].as_str() {
                Some("Running") => json!("Idle"),
                _ => s["status"].clone(),
            };
            out["download_progress"] = s.get("download_progress").cloned().unwrap_or(Value::Null);
        }
        // Downloaded: a service still to install has its image already.
        out["update_downloaded"] = json!(
            pending && services.is_some_and(|s| s.values().any(|s| s["status"] == "Downloaded"))
        );
        if !pending {
            if let Some(c) = view.current_commit(&uuid) {
                out["commit"] = json!(c);
            }
        }
    }
    Ok(HttpResponse::Ok().json(out))
}

/// Variables `GET /v1/apps/{appId}` never shows.
const HIDDEN_ENV: [&str; 4] = [
    "BALENA_SUPERVISOR_API_KEY",
    "RESIN_SUPERVISOR_API_KEY",
    "BALENA_API_KEY",
    "RESIN_API_KEY",
];

fn text_error(status: u16, message: &str) -> ApiError {
    ApiError::Text {
        status,
        message: message.to_string(),
    }
}

/// `GET /v1/apps/{appId}` → the one service of a single-container app: its container, image,
/// release and environment (the injected variables and the target's, without API keys).
async fn app(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_app_id(&path).ok_or_else(|| text_error(400, "Missing app id"))?;
    if !caller.can_access(id) {
        return Err(super::v2::failed(401, "Application is not available"));
    }
    let view = View::read(&state);
    let not_found = || text_error(400, "App not found");
    let uuid = view.uuid_of(id).ok_or_else(not_found)?;
    let app = view.model().apps.get(&uuid).ok_or_else(not_found)?;
    let services: Vec<_> = app
        .releases
        .iter()
        .flat_map(|(rel, r)| r.services.iter().map(move |(name, s)| (rel, name, s)))
        .collect();
    let (release, name, svc) = match services.as_slice() {
        [] => return Err(not_found()),
        [one] => *one,
        _ => {
            return Err(text_error(
                400,
                "Some v1 endpoints are only allowed on single-container apps",
            ))
        }
    };
    let host_os = state
        .caps
        .get()
        .host_os
        .and_then(|o| OsVersion::parse(&o).ok());
    let no_env = Default::default();
    let ctx = ServiceContext {
        app_uuid: &uuid,
        app_id: id,
        app_name: app.name.as_deref(),
        service_name: name,
        service_id: svc.id,
        release,
        device_uuid: &view.cur.device.uuid,
        device_name: view.model().name.as_deref(),
        host_os: host_os.as_ref(),
        host_runtime_dir: Path::new(""),
        image: &svc.image,
        extra_env: &no_env,
    };
    let mut env = injected_environment(&ctx);
    env.extend(svc.config.environment.clone());
    env.retain(|k, _| !HIDDEN_ENV.contains(&k.as_str()));
    let image_id = view
        .model()
        .images
        .get(&svc.image)
        .and_then(|i| i.oci_id.clone());
    Ok(HttpResponse::Ok().json(json!({
        "appId": id,
        "commit": release,
        "containerId": svc.container.as_ref().map(|c| c.id.clone()),
        "env": env,
        "imageId": image_id,
        "releaseId": Value::Null,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_runs_while_applying() {
        let clock = ApplyClock::default();
        let t0 = Instant::now();
        assert_eq!(clock.observe(false, t0), None);
        assert_eq!(clock.observe(true, t0), Some(Duration::ZERO));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(clock.observe(true, later), Some(Duration::from_secs(60)));
        assert_eq!(clock.observe(false, later), None);
        assert_eq!(clock.observe(true, later), Some(Duration::ZERO));
    }

    #[test]
    fn health_needs_the_engine_and_a_moving_apply() {
        let long = Some(STUCK_AFTER + Duration::from_secs(1));
        assert_eq!(health_problem(true, None, false), None);
        assert_eq!(
            health_problem(true, Some(Duration::from_secs(5)), false),
            None
        );
        assert_eq!(
            health_problem(false, None, false),
            Some("engine unreachable")
        );
        assert_eq!(health_problem(true, long, false), Some("apply stuck"));
        assert_eq!(health_problem(true, long, true), None, "a pull is progress");
    }

    #[test]
    fn pulls_and_host_os_updates_are_progress() {
        let mut cur = CurrentState::default();
        assert!(!in_progress(&cur));
        cur.model.images.insert(
            "img".into(),
            helios_actors::model::device::Image {
                oci_id: None,
                download_progress: 40,
            },
        );
        assert!(in_progress(&cur), "a pull");
        cur.model.images.clear();
        let host = |phase| helios_actors::model::host::HostState {
            meta: OsVersion {
                name: "balenaOS".into(),
                version: "6.0.0".into(),
                build: None,
            },
            releases: Default::default(),
            seq: 1,
            phase,
        };
        cur.host = Some(host(HostPhase::Working));
        assert!(in_progress(&cur), "a host OS update");
        cur.status = UpdateStatus::ApplyingChanges;
        assert!(!in_progress(&cur), "an app apply beside it is not excused");
        cur.status = UpdateStatus::Done;
        cur.host = Some(host(HostPhase::Aborted));
        assert!(!in_progress(&cur));
    }

    #[test]
    fn blinking_restores_the_brightness() {
        let dir = tempfile::tempdir().unwrap();
        let led = dir.path().join("brightness");
        std::fs::write(&led, "37\n").unwrap();
        blink_led(&led, Duration::from_millis(1), Duration::from_millis(1)).unwrap();
        assert_eq!(std::fs::read_to_string(&led).unwrap(), "37");
        assert!(blink_led(
            &dir.path().join("none/brightness"),
            Duration::from_millis(1),
            Duration::from_millis(1)
        )
        .is_err());
    }
}
