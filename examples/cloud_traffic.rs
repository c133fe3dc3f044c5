//! Cloud traffic of an idle managed device: the bytes helios sends and receives per idle hour
//! (target polls and state reports) with the default intervals, measured on a shortened run and
//! scaled up. Figures are printed, never asserted.
//!
//! ```sh
//! cargo build --release --locked
//! cargo run --release --locked --example cloud_traffic -- [--seconds N] [--binary PATH]
//! ```
//! (`bash scripts/bench-remote` does both.) `--binary` (or a bare path) names the helios binary
//! to measure, `target/release/helios` by default; `--seconds` is the length of the run (60).
//!
//! What it does:
//! * starts a minimal fake balena API (actix-web on 127.0.0.1:0, in a thread with its own
//!   System) that knows one pre-registered device and serves it a small realistic target
//!   (one fleet app, one release, one `busybox:latest` service) with an Express-style weak
//!   `ETag`, answers `304` to a matching `If-None-Match`, and accepts `PATCH /device/v3/state`;
//! * puts a counting TCP relay in front of it (127.0.0.1:0): helios talks to the relay, the
//!   relay forwards to the fake. **Bytes are counted at the TCP level**, i.e. the TCP payload
//!   exactly as each side wrote it: request line + headers + body from helios, status line +
//!   headers + body from the API. HTTP/1.1 without pipelining alternates requests and answers on
//!   a connection, so the bytes are split into exchanges there (a new exchange starts when
//!   the client writes after the server did) and each exchange is classified by its request
//!   line (`GET /device/v3/<uuid>/state` = poll, `PATCH /device/v3/state` = report) and status;
//! * runs the helios binary as a child: managed by the fake (`--remote-api-endpoint`,
//!   `--remote-api-key`, `--uuid`), no engine (`DOCKER_HOST=unix:///nonexistent`) and no system
//!   bus, a clean environment with temporary `HOME`/`XDG_*` dirs (never the user's config), the
//!   local API on 127.0.0.1:0, and SHORTENED poll intervals (`--remote-poll-interval-ms 2000
//!   --remote-poll-min-interval-ms 500 --remote-poll-max-jitter-ms 0`); reporting keeps its
//!   defaults. The agent cannot apply the target without an engine; it keeps polling and
//!   reporting, which is all this measures;
//! * after the run it stops the agent (SIGTERM, then SIGKILL) and prints what the wire saw and
//!   the figures scaled to the defaults.
//!
//! `--serve APPS_FILE` runs only the fake API (no relay, no agent) until killed, for
//! `scripts/bench`: it prints `endpoint=<url> uuid=<uuid> api_key=<key>` on one line and serves a
//! target whose `apps` object is read from APPS_FILE at every poll (the ETag follows the content),
//! so rewriting the file publishes a new target.
//!
//! Scaling (printed with the figures):
//! * polls: an idle device polls every 900 s + a uniform jitter of 0..=60 s (mean 30 s), and
//!   once it holds the target every answer is a 304: per hour 3600 / 930 = 3.87 polls of the
//!   measured mean size of a 304 exchange. The first 200 (with the target) is a one-time cost.
//! * reports: the first report after start (the full state) is a one-time cost, as are reports
//!   that follow the target's arrival. Once idle (from the first 304 on), a device only reports
//!   metric changes, at most once per 300 s (spec/state-report-v3.md §5.3): at most 12 per
//!   hour. The agent's metrics timer gives it one chance every 300 s from its start: a run of
//!   at least 600 s (2 chances) shows what share of the chances were taken, and the 12/hour
//!   bound is scaled by that share; a shorter run uses the bound itself. A metric-only
//!   report's size is the mean of those observed, or else the first report's request with its
//!   body cut to the metric fields (an upper bound: a real one carries only the metrics that
//!   changed significantly). Non-metric reports during the idle part (none are expected) are
//!   scaled by time and flagged.
//!
//! Not counted: TLS (record framing, and a handshake for each new connection: with the default
//! intervals every request opens one, since awc keeps idle connections 15 s), TCP/IP headers,
//! DNS. The fake answers uncompressed with actix's few headers (helios asks for
//! `Accept-Encoding: identity`); the real API adds headers of its own, so the downstream
//! figures are a floor. The target carries `RESIN_SUPERVISOR_POLL_INTERVAL` set to the
//! shortened interval (the real API always sends one, and 900000 would stretch the run).
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use helios_actors::ports::sysinfo::METRIC_KEYS;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A 32-hex device uuid and a 32-char device key, the lengths balena uses.
const UUID: &str = "5d1b8c0f2e7a4c3b9a6f0e1d2c3b4a59";
const API_KEY: &str = "Xq7Lp2Vt9Rk4Hs6Dm1Nc8Bf3Gw5Jz0Ya";
const APP_UUID: &str = "c6f2a9e04b1d4f3a8e7d6c5b4a392817";
const RELEASE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// The shortened schedule of the run.
const RUN_POLL_MS: u64 = 2000;
const RUN_POLL_MIN_MS: u64 = 500;
const RUN_JITTER_MS: u64 = 0;

/// The defaults the figures are scaled to (README, spec/helios-api-v3.md §5.1,
/// spec/state-report-v3.md §5.3).
const DEFAULT_POLL_S: f64 = 900.0;
const DEFAULT_MAX_JITTER_S: f64 = 60.0;
const METRICS_EVERY_S: f64 = 300.0;

/// Raw bytes of a request kept for classification and parsing (reports are a few KiB).
const KEEP_REQUEST: usize = 1 << 20;
const KEEP_RESPONSE_HEAD: usize = 1024;

// ------------------------------------------------------------------------------------------------
// Command line
// ------------------------------------------------------------------------------------------------

struct Args {
    seconds: u64,
    binary: PathBuf,
    show_wire: bool,
    serve: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!("usage: cloud_traffic [--seconds N] [--show-wire] [--binary PATH | PATH]");
    eprintln!("       cloud_traffic --serve APPS_FILE");
    eprintln!("  --seconds N     length of the run (default 60, at least 10)");
    eprintln!("  --show-wire     also print the first poll, 304 and report exchanges as sent");
    eprintln!("  --binary PATH   the helios binary to measure (default target/release/helios)");
    eprintln!("  --serve FILE    only serve a target whose apps are FILE's JSON, until killed");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut seconds = 60;
    let mut binary = None;
    let mut show_wire = false;
    let mut serve = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = match args.next().and_then(|s| s.parse().ok()) {
                    Some(s) if s >= 10 => s,
                    _ => usage(),
                }
            }
            "--binary" => binary = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "--show-wire" => show_wire = true,
            "--serve" => serve = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "-h" | "--help" => usage(),
            s if s.starts_with('-') => usage(),
            s => binary = Some(PathBuf::from(s)),
        }
    }
    let binary = binary
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/helios"));
    Args {
        seconds,
        binary,
        show_wire,
        serve,
    }
}

// ------------------------------------------------------------------------------------------------
// The wire: a counting TCP relay in front of the fake API
// ------------------------------------------------------------------------------------------------

/// One request and its answer on a connection, as bytes on the wire.
#[derive(Debug, Clone)]
struct Exchange {
    at: Instant,
    /// The request as sent (up to KEEP_REQUEST bytes).
    request: Vec<u8>,
    up: u64,
    /// The start of the answer (status line and headers).
    response_head: Vec<u8>,
    down: u64,
}

impl Exchange {
    fn request_line(&self) -> String {
        let end = self
            .request
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(self.request.len());
        String::from_utf8_lossy(&self.request[..end]).into_owned()
    }

    fn status(&self) -> Option<u16> {
        let line = String::from_utf8_lossy(&self.response_head);
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn kind(&self) -> Kind {
        let line = self.request_line();
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("GET"), Some(p)) if p == format!("/device/v3/{UUID}/state") => Kind::Poll,
            (Some("PATCH"), Some("/device/v3/state")) => Kind::Report,
            _ => Kind::Other,
        }
    }

    /// The request body (after the blank line).
    fn body(&self) -> &[u8] {
        match self.request.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => &self.request[i + 4..],
            None => &[],
        }
    }

    fn request_head_len(&self) -> usize {
        self.request.len() - self.body().len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Poll,
    Report,
    Other,
}

#[derive(Default)]
struct Wire {
    exchanges: Vec<Exchange>,
    /// Connection → index of its current exchange.
    current: HashMap<usize, usize>,
    connections: usize,
    up: u64,
    down: u64,
    /// Bytes from the server before any request on a connection (none expected).
    unattributed: u64,
}

type SharedWire = Arc<Mutex<Wire>>;

fn lock(w: &SharedWire) -> MutexGuard<'_, Wire> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wire {
    fn client_wrote(&mut self, conn: usize, bytes: &[u8]) {
        self.up += bytes.len() as u64;
        let fresh = match self.current.get(&conn) {
            Some(&i) => self.exchanges[i].down > 0,
            None => true,
        };
        if fresh {
            self.exchanges.push(Exchange {
                at: Instant::now(),
                request: Vec::new(),
                up: 0,
                response_head: Vec::new(),
                down: 0,
            });
            self.current.insert(conn, self.exchanges.len() - 1);
        }
        let e = &mut self.exchanges[self.current[&conn]];
        e.up += bytes.len() as u64;
        let keep = KEEP_REQUEST
            .saturating_sub(e.request.len())
            .min(bytes.len());
        e.request.extend_from_slice(&bytes[..keep]);
    }

    fn server_wrote(&mut self, conn: usize, bytes: &[u8]) {
        self.down += bytes.len() as u64;
        let Some(&i) = self.current.get(&conn) else {
            self.unattributed += bytes.len() as u64;
            return;
        };
        let e = &mut self.exchanges[i];
        e.down += bytes.len() as u64;
        let keep = KEEP_RESPONSE_HEAD
            .saturating_sub(e.response_head.len())
            .min(bytes.len());
        e.response_head.extend_from_slice(&bytes[..keep]);
    }
}

/// Copies one direction, counting every chunk before it is forwarded (so a request is always
/// counted before the answer it causes, and an answer before the next request).
async fn copy_counted(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    conn: usize,
    client_to_server: bool,
    wire: SharedWire,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut w = lock(&wire);
            if client_to_server {
                w.client_wrote(conn, &buf[..n]);
            } else {
                w.server_wrote(conn, &buf[..n]);
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Listens on 127.0.0.1:0 and relays every connection to `upstream`; returns the address.
fn start_relay(upstream: SocketAddr, wire: SharedWire) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let addr = listener.local_addr().expect("the relay's address");
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the relay");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let mut next = 0;
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let conn = next;
                    next += 1;
                    let wire = wire.clone();
                    tokio::spawn(async move {
                        let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        lock(&wire).connections += 1;
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(
                            copy_counted(cr, sw, conn, true, wire.clone()),
                            copy_counted(sr, cw, conn, false, wire),
                        );
                    });
                }
            })
        })
        .expect("spawn the relay thread");
    addr
}

// ------------------------------------------------------------------------------------------------
// The fake API
// ------------------------------------------------------------------------------------------------

struct Api {
    target: Vec<u8>,
    etag: String,
    /// `--serve`: the target's `apps` are read from this file at every poll.
    apps_file: Option<PathBuf>,
    gets: AtomicU64,
    patches: AtomicU64,
}

impl Api {
    /// The target document and its ETag as of now.
    fn current(&self) -> (Vec<u8>, String) {
        let Some(path) = &self.apps_file else {
            return (self.target.clone(), self.etag.clone());
        };
        let apps = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or_else(|| json!({}));
        let target = target_document_with(apps);
        let etag = etag(&target);
        (target, etag)
    }
}

/// An Express-style weak ETag, `W/"<length in hex>-<27 base64 chars>"`, the shape and length
/// the real API sends (Express uses a SHA-1; FNV-1a rounds are enough for a fake).
fn etag(body: &[u8]) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut tag = String::with_capacity(27);
    while tag.len() < 27 {
        h ^= h >> 29;
        h = h.wrapping_mul(0x0100_0000_01b3);
        tag.push(B64[(h >> 58) as usize] as char);
    }
    format!("W/\"{:x}-{tag}\"", body.len())
}

fn authorized(req: &HttpRequest) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(API_KEY)
}

async fn get_state(api: web::Data<Api>, req: HttpRequest, uuid: web::Path<String>) -> HttpResponse {
    api.gets.fetch_add(1, Ordering::Relaxed);
    if !authorized(&req) || uuid.as_str() != UUID {
        return HttpResponse::Unauthorized().body("Unauthorized");
    }
    let (target, current_etag) = api.current();
    let inm = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok());
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    if inm.is_some_and(|h| h.split(',').any(|t| strip(t) == strip(&current_etag))) {
        return HttpResponse::NotModified()
            .insert_header(("ETag", current_etag))
            .finish();
    }
    HttpResponse::Ok()
        .insert_header(("ETag", current_etag))
        .content_type("application/json; charset=utf-8")
        .body(target)
}

async fn patch_state(api: web::Data<Api>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    api.patches.fetch_add(1, Ordering::Relaxed);
    if !authorized(&req) {
        return HttpResponse::Unauthorized().body("Unauthorized");
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) if m.get(UUID).is_some_and(Value::is_object) => {
            HttpResponse::Ok().finish()
        }
        _ => HttpResponse::BadRequest().body("invalid state"),
    }
}

/// Starts the fake on 127.0.0.1:0 in a thread with its own System.
fn start_api(api: web::Data<Api>) -> (SocketAddr, ServerHandle, JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("fake-api".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(api.clone())
                        .app_data(web::PayloadConfig::new(16 << 20))
                        .route("/device/v3/{uuid}/state", web::get().to(get_state))
                        .route("/device/v3/state", web::patch().to(patch_state))
                        .default_service(web::to(|| async {
                            HttpResponse::NotFound().body("Not Found")
                        }))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .bind(("127.0.0.1", 0))
                .expect("bind the fake API on 127.0.0.1:0");
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle()))
                    .expect("main waits for the address");
                let _ = server.await;
            })
        })
        .expect("spawn the fake API thread");
    let (addr, handle) = rx.recv().expect("the fake API started");
    (addr, handle, thread)
}

/// spec/target-state-v3.md §2, §5: one fleet app, one release, one service.
fn target_document() -> Vec<u8> {
    let labels = json!({
        "io.balena.features.supervisor-api": "1",
        "io.balena.update.strategy": "download-then-kill"
    });
    target_document_with(json!({ APP_UUID: {
        "id": 2167345,
        "name": "sensor-gateway",
        "is_host": false,
        "class": "fleet",
        "releases": { RELEASE: {
            "id": 3100456,
            "services": { "main": {
                "id": 1843001,
                "image_id": 5632118,
                "image": "busybox:latest",
                "environment": { "LOG_LEVEL": "info" },
                "labels": labels.clone(),
                "composition": {
                    "restart": "always",
                    "command": ["sh", "-c", "while true; do sleep 3600; done"],
                    "environment": { "LOG_LEVEL": "info" },
                    "labels": labels
                }
            }},
            "volumes": {},
            "networks": {}
        }}
    }}))
}

/// The device document around `apps`.
fn target_document_with(apps: Value) -> Vec<u8> {
    let doc = json!({ UUID: {
        "name": "quiet-harbor",
        "config": {
            "RESIN_SUPERVISOR_POLL_INTERVAL": RUN_POLL_MS.to_string(),
            "RESIN_SUPERVISOR_DELTA": "1",
            "RESIN_SUPERVISOR_DELTA_VERSION": "3",
            "BALENA_SUPERVISOR_PERSISTENT_LOGGING": "false",
            "RESIN_SUPERVISOR_VPN_CONTROL": "true",
            "BALENA_HOST_FIREWALL_MODE": "auto"
        },
        "apps": apps
    }});
    serde_json::to_vec(&doc).expect("a Value serialises")
}

// ------------------------------------------------------------------------------------------------
// The agent
// ------------------------------------------------------------------------------------------------

/// The child process; killed on drop whatever happened.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn spawn(binary: &PathBuf, endpoint: &str, dir: &std::path::Path) -> Agent {
        let log = dir.join("helios.log");
        let stderr = std::fs::File::create(&log).expect("create the agent log");
        for d in ["home", "config", "state", "run"] {
            std::fs::create_dir_all(dir.join(d)).expect("create a temp dir");
        }
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.join("home"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_STATE_HOME", dir.join("state"))
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env("DOCKER_HOST", "unix:///nonexistent")
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}", dir.join("none.bus").display()),
            )
            .env("RUST_LOG", "info")
            .args(["--local-api-address", "127.0.0.1:0"])
            .args(["--remote-api-endpoint", endpoint])
            .args(["--remote-api-key", API_KEY])
            .args(["--uuid", UUID])
            .args(["--remote-poll-interval-ms", &RUN_POLL_MS.to_string()])
            .args([
                "--remote-poll-min-interval-ms",
                &RUN_POLL_MIN_MS.to_string(),
            ])
            .args(["--remote-poll-max-jitter-ms", &RUN_JITTER_MS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().unwrap_or_else(|e| {
            eprintln!("cannot run {}: {e}", binary.display());
            std::process::exit(1)
        });
        Agent { child, log }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, up to 10 s for a clean exit, then SIGKILL.
    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self, lines: usize) -> Vec<String> {
        let Ok(f) = std::fs::File::open(&self.log) else {
            return Vec::new();
        };
        let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].to_vec()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------------------------------------
// Figures
// ------------------------------------------------------------------------------------------------

fn mean(v: &[u64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    }
}

fn human(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 {
        format!("{bytes:.0} B ({:.2} MiB)", bytes / 1048576.0)
    } else if bytes >= 1024.0 {
        format!("{bytes:.0} B ({:.1} KiB)", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

/// A report as the wire saw it.
struct SeenReport {
    at: f64,
    up: u64,
    down: u64,
    status: Option<u16>,
    keys: Vec<String>,
    metrics_only: bool,
}

fn report_keys(e: &Exchange) -> Vec<String> {
    serde_json::from_slice::<Value>(e.body())
        .ok()
        .and_then(|v| v.get(UUID).and_then(Value::as_object).cloned())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The first report's request with its body cut to the metric fields (Content-Length fixed).
fn metric_only_estimate(first: &Exchange) -> Option<(u64, Vec<String>)> {
    let body: Value = serde_json::from_slice(first.body()).ok()?;
    let fields = body.get(UUID)?.as_object()?;
    let metrics: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| METRIC_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if metrics.is_empty() {
        return None;
    }
    let keys = metrics.keys().cloned().collect();
    let new_body = serde_json::to_vec(&json!({ UUID: metrics })).ok()?;
    let old_len = first.body().len();
    let digits = |n: usize| n.to_string().len();
    let head = first.request_head_len() + digits(new_body.len()) - digits(old_len);
    Some(((head + new_body.len()) as u64, keys))
}

/// `--serve`: the fake API alone, until the process is killed.
fn serve(apps_file: PathBuf) -> ! {
    let api = web::Data::new(Api {
        target: Vec::new(),
        etag: String::new(),
        apps_file: Some(apps_file),
        gets: AtomicU64::new(0),
        patches: AtomicU64::new(0),
    });
    let (addr, _handle, thread) = start_api(api);
    println!("endpoint=http://{addr} uuid={UUID} api_key={API_KEY}");
    let _ = thread.join();
    std::process::exit(0)
}

fn main() {
    let args = parse_args();
    if !args.binary.is_file() {
        eprintln!(
            "{} not found: build it first (cargo build --release --locked) or pass --binary",
            args.binary.display()
        );
        std::process::exit(1);
    }

    if let Some(apps_file) = args.serve {
        serve(apps_file);
    }
    let target = target_document();
    let api = web::Data::new(Api {
        etag: etag(&target),
        target,
        apps_file: None,
        gets: AtomicU64::new(0),
        patches: AtomicU64::new(0),
    });
    let (api_addr, api_handle, api_thread) = start_api(api.clone());
    let wire: SharedWire = Arc::default();
    let relay = start_relay(api_addr, wire.clone());
    let endpoint = format!("http://{relay}");

    let tmp = tempfile::Builder::new()
        .prefix("helios-cloud-traffic.")
        .tempdir()
        .expect("a temp dir");
    eprintln!(
        "[cloud_traffic] running {} for {} s against a fake API at {endpoint} (polls every {} ms)",
        args.binary.display(),
        args.seconds,
        RUN_POLL_MS
    );
    let started = Instant::now();
    let mut agent = Agent::spawn(&args.binary, &endpoint, tmp.path());
    let end = started + Duration::from_secs(args.seconds);
    let mut early_exit = None;
    while Instant::now() < end {
        if let Some(status) = agent.exited() {
            early_exit = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The figures stop here: what the agent sends while it stops is not idle traffic.
    let ran = started.elapsed().as_secs_f64();
    let (exchanges, connections, total_up, total_down, unattributed) = {
        let w = lock(&wire);
        (
            w.exchanges.clone(),
            w.connections,
            w.up,
            w.down,
            w.unattributed,
        )
    };
    agent.stop();
    let tail = agent.log_tail(30);
    drop(agent);
    drop(api_handle.stop(false));
    let _ = api_thread.join();

    if let Some(status) = early_exit {
        eprintln!("[cloud_traffic] the agent exited early ({status}); the last lines of its log:");
        tail.iter().for_each(|l| eprintln!("  {l}"));
        std::process::exit(1);
    }

    let rel = |t: Instant| t.duration_since(started).as_secs_f64();
    let polls: Vec<&Exchange> = exchanges
        .iter()
        .filter(|e| e.kind() == Kind::Poll)
        .collect();
    let not_modified: Vec<&Exchange> = polls
        .iter()
        .copied()
        .filter(|e| e.status() == Some(304))
        .collect();
    let fulls: Vec<&Exchange> = polls
        .iter()
        .copied()
        .filter(|e| e.status().is_some_and(|s| (200..300).contains(&s)))
        .collect();
    let others = exchanges.iter().filter(|e| e.kind() == Kind::Other).count();
    let reports: Vec<(&Exchange, SeenReport)> = exchanges
        .iter()
        .filter(|e| e.kind() == Kind::Report)
        .map(|e| {
            let keys = report_keys(e);
            let metrics_only =
                !keys.is_empty() && keys.iter().all(|k| METRIC_KEYS.contains(&k.as_str()));
            let seen = SeenReport {
                at: rel(e.at),
                up: e.up,
                down: e.down,
                status: e.status(),
                keys,
                metrics_only,
            };
            (e, seen)
        })
        .collect();

    if not_modified.is_empty() {
        eprintln!(
            "[cloud_traffic] no 304 seen ({} polls, {} reports): the agent never reached idle; \
             the last lines of its log:",
            polls.len(),
            reports.len()
        );
        tail.iter().for_each(|l| eprintln!("  {l}"));
        std::process::exit(1);
    }
    let idle_from = rel(not_modified[0].at);
    let idle_secs = ran - idle_from;

    // --- what the run saw ---------------------------------------------------------------------
    println!(
        "cloud traffic of an idle device (TCP payload: HTTP request/status lines, headers and"
    );
    println!("bodies as written; no TLS, no TCP/IP headers; uncompressed)");
    println!();
    println!(
        "run: {ran:.1} s, poll every {} ms (min {} ms, jitter {} ms), report settings default",
        RUN_POLL_MS, RUN_POLL_MIN_MS, RUN_JITTER_MS
    );
    println!(
        "  wire total: {} up (device → API), {} down, {} TCP connections, {} exchanges",
        human(total_up as f64),
        human(total_down as f64),
        connections,
        exchanges.len()
    );
    println!(
        "  polls seen: {} ({} × 200, {} × 304, {} other); reports seen: {}; other requests: {}",
        polls.len(),
        fulls.len(),
        not_modified.len(),
        polls.len() - fulls.len() - not_modified.len(),
        reports.len(),
        others
    );
    println!(
        "  fake API handled {} target GETs and {} PATCHes{}",
        api.gets.load(Ordering::Relaxed),
        api.patches.load(Ordering::Relaxed),
        if unattributed > 0 {
            format!("; {unattributed} bytes from the server outside any exchange")
        } else {
            String::new()
        }
    );
    println!("  idle from the first 304 at {idle_from:.1} s: {idle_secs:.1} s of idle");
    println!();

    let first_full = fulls.first().copied();
    if let Some(f) = first_full {
        println!(
            "first poll (200 with the {} B target): {} up, {} down   (once per start)",
            api.target.len(),
            human(f.up as f64),
            human(f.down as f64)
        );
    }
    let poll_up = mean(&not_modified.iter().map(|e| e.up).collect::<Vec<_>>());
    let poll_down = mean(&not_modified.iter().map(|e| e.down).collect::<Vec<_>>());
    println!(
        "poll answered 304 (mean of {}): {} up, {} down, {} per poll",
        not_modified.len(),
        human(poll_up),
        human(poll_down),
        human(poll_up + poll_down)
    );
    for (i, (_, r)) in reports.iter().enumerate() {
        let phase = if i == 0 {
            "first, once per start"
        } else if r.at < idle_from {
            "start-up"
        } else if r.metrics_only {
            "idle, metrics only"
        } else {
            "idle, NOT metrics only"
        };
        println!(
            "report {} at {:.1} s ({phase}, status {}): {} up, {} down",
            i + 1,
            r.at,
            r.status.map_or("none".into(), |s| s.to_string()),
            human(r.up as f64),
            human(r.down as f64),
        );
        println!(
            "  fields: {}",
            if r.keys.is_empty() {
                "none".to_string()
            } else {
                r.keys.join(", ")
            }
        );
    }
    if args.show_wire {
        let first_report = reports.first().map(|(e, _)| *e);
        for (title, e) in [
            ("first poll", first_full),
            ("a 304 poll", not_modified.first().copied()),
            ("first report", first_report),
        ] {
            if let Some(e) = e {
                show_exchange(title, e);
            }
        }
    }
    println!();

    // --- scaled to the defaults ---------------------------------------------------------------
    let poll_period = DEFAULT_POLL_S + DEFAULT_MAX_JITTER_S / 2.0;
    let polls_per_hour = 3600.0 / poll_period;

    let idle_reports: Vec<&SeenReport> = reports
        .iter()
        .skip(1)
        .map(|(_, r)| r)
        .filter(|r| r.at >= idle_from)
        .collect();
    let (metric, other): (Vec<&SeenReport>, Vec<&SeenReport>) =
        idle_reports.iter().copied().partition(|r| r.metrics_only);
    let report_down = mean(&reports.iter().map(|(_, r)| r.down).collect::<Vec<_>>());
    let bound_per_hour = 3600.0 / METRICS_EVERY_S;
    // The report actor's metrics timer fires every 300 s from the agent's start: the chances
    // an idle device has to send a metric-only report.
    let chances = (ran / METRICS_EVERY_S).floor();
    let observed = chances >= 2.0;
    let metric_per_hour = if observed {
        bound_per_hour * (metric.len() as f64 / chances).min(1.0)
    } else {
        bound_per_hour
    };
    let (metric_up, metric_up_basis) = if !metric.is_empty() {
        (
            mean(&metric.iter().map(|r| r.up).collect::<Vec<_>>()),
            vec![format!("the mean of the {} seen", metric.len())],
        )
    } else if let Some((bytes, keys)) = reports.first().and_then(|(e, _)| metric_only_estimate(e)) {
        (
            bytes as f64,
            vec![
                format!(
                    "the first report's request cut to its {} metric fields, an upper",
                    keys.len()
                ),
                "bound: a real one carries only the metrics that changed".into(),
            ],
        )
    } else {
        (0.0, vec!["no report seen to estimate from".into()])
    };
    let metric_down = if metric.is_empty() {
        report_down
    } else {
        mean(&metric.iter().map(|r| r.down).collect::<Vec<_>>())
    };
    let other_per_hour = if idle_secs > 0.0 {
        other.len() as f64 * 3600.0 / idle_secs
    } else {
        0.0
    };
    let other_up = mean(&other.iter().map(|r| r.up).collect::<Vec<_>>());
    let other_down = mean(&other.iter().map(|r| r.down).collect::<Vec<_>>());

    let hour_poll = (polls_per_hour * poll_up, polls_per_hour * poll_down);
    let hour_rep = (
        metric_per_hour * metric_up + other_per_hour * other_up,
        metric_per_hour * metric_down + other_per_hour * other_down,
    );
    let hour_all = (hour_poll.0 + hour_rep.0, hour_poll.1 + hour_rep.1);

    println!("scaled to the default intervals (an idle device, after start-up):");
    println!(
        "  polls    every {DEFAULT_POLL_S:.0} s + a jitter of 0..={DEFAULT_MAX_JITTER_S:.0} s (mean \
         {:.0} s): 3600 / {poll_period:.0} = {polls_per_hour:.2} polls/hour,",
        DEFAULT_MAX_JITTER_S / 2.0
    );
    println!(
        "           each answered 304: {} up, {} down (measured)",
        human(poll_up),
        human(poll_down)
    );
    println!(
        "  reports  metric changes only, at most one per {METRICS_EVERY_S:.0} s: {metric_per_hour:.2} \
         reports/hour"
    );
    if observed {
        println!(
            "           (observed: {} metric-only reports for the run's {chances:.0} chances of one \
             per {METRICS_EVERY_S:.0} s,",
            metric.len()
        );
        println!(
            "           scaled to the bound of 3600 / {METRICS_EVERY_S:.0} = {bound_per_hour:.0}/hour)"
        );
    } else {
        println!(
            "           (the bound 3600 / {METRICS_EVERY_S:.0}: the run's {ran:.0} s cannot show how \
             many of those chances find"
        );
        println!(
            "           a significant metric change: {} metric-only reports seen after the first;",
            metric.len()
        );
        println!(
            "           --seconds {:.0} or more observes them)",
            2.0 * METRICS_EVERY_S + 10.0
        );
    }
    println!(
        "           each {} up, {} down; down: the answer to a PATCH as measured; up:",
        human(metric_up),
        human(metric_down)
    );
    println!("           {}", metric_up_basis.join("\n           "));
    if !other.is_empty() {
        let fields: std::collections::BTreeSet<&String> =
            other.iter().flat_map(|r| r.keys.iter()).collect();
        println!(
            "  WARNING  {} reports with non-metric fields while idle ({}): an idle device should \
             send none;",
            other.len(),
            fields.into_iter().cloned().collect::<Vec<_>>().join(", ")
        );
        println!(
            "           scaled by time: {other_per_hour:.1}/hour of {} up, {} down, included below",
            human(other_up),
            human(other_down)
        );
    }
    println!();
    let kib = |b: f64| format!("{:.1} KiB", b / 1024.0);
    let bytes = |b: f64| format!("{b:.0} B");
    println!(
        "  {:<14} {:>12} {:>12} {:>12}   {:>12} {:>12} {:>12}",
        "", "hour up", "hour down", "hour total", "day up", "day down", "day total"
    );
    for (name, (up, down)) in [
        ("polls", hour_poll),
        ("reports", hour_rep),
        ("all", hour_all),
    ] {
        println!(
            "  {name:<14} {:>12} {:>12} {:>12}   {:>12} {:>12} {:>12}",
            bytes(up),
            bytes(down),
            bytes(up + down),
            kib(24.0 * up),
            kib(24.0 * down),
            kib(24.0 * (up + down))
        );
    }
    println!();
    let startup: Vec<&SeenReport> = reports
        .iter()
        .enumerate()
        .filter(|(i, (_, r))| *i == 0 || r.at < idle_from)
        .map(|(_, (_, r))| r)
        .collect();
    let startup_up = first_full.map_or(0, |e| e.up) + startup.iter().map(|r| r.up).sum::<u64>();
    let startup_down =
        first_full.map_or(0, |e| e.down) + startup.iter().map(|r| r.down).sum::<u64>();
    println!(
        "  once per start, not in the table: the first poll and {} start-up report(s),\n  {} up, {} down",
        startup.len(),
        human(startup_up as f64),
        human(startup_down as f64)
    );
    println!(
        "  not measured: TLS (record framing, and a handshake per request at these intervals,"
    );
    println!("  as awc closes connections idle for 15 s), TCP/IP headers, DNS, the real API's own");
    println!("  response headers and compression");
}

/// Prints an exchange as it went over the wire (bodies cut).
fn show_exchange(title: &str, e: &Exchange) {
    let cut = |b: &[u8], n: usize| {
        let s = String::from_utf8_lossy(&b[..b.len().min(n)]).into_owned();
        let more = if b.len() > n { " …" } else { "" };
        format!("{s}{more}")
    };
    println!();
    println!("--- {title}: {} B up ---", e.up);
    for line in cut(&e.request, 2000).split("\r\n") {
        println!("> {line}");
    }
    println!(
        "--- {} B down (first {} B) ---",
        e.down,
        e.response_head.len()
    );
    for line in cut(&e.response_head, 600).split("\r\n") {
        println!("< {line}");
    }
}
