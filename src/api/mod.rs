//! The local HTTP API (actix-web): listeners on TCP and unix sockets, routes, shared state.
//! Handlers read the buses and write targets; bodies are streamed, never sent to a mailbox.
pub mod actions;
pub mod auth;
pub mod error;
pub mod guard;
pub mod host;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod v1;
pub mod v2;
pub mod v3;

use std::net::SocketAddr;
use std::path::PathBuf;

use actix_web::{web, App, HttpServer};
use log::info;

use helios_actors::bus::{CapsBus, StateBus, TargetBus};

/// Where the API listens: `IP:PORT` or a unix socket path (spec/helios-api-v3.md §2.1).
#[derive(Debug, Clone, PartialEq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What handlers may read and write.
#[derive(Clone)]
pub struct ApiState {
    pub targets: TargetBus,
    pub state: StateBus,
    pub caps: CapsBus,
    pub seek_plan: actix::Recipient<helios_actors::seek::PreviewPlan>,
    pub seek_reapply: actix::Recipient<helios_actors::seek::Reapply>,
    pub seek_action: actix::Recipient<helios_actors::seek::RunAction>,
    pub host_power: actix::Recipient<helios_actors::host::Power>,
    pub host_config: actix::Recipient<helios_actors::host::GetHostConfig>,
    pub host_config_patch: actix::Recipient<helios_actors::host::PatchHostConfig>,
    pub seek_cleanup: actix::Recipient<helios_actors::seek::CleanupVolumes>,
    /// Present when managed: pending device tags are pushed to the cloud, and read from it.
    pub report: Option<actix::Addr<helios_actors::report::ReportActor>>,
    /// Present when managed: `/v1/update` polls first.
    pub poll: Option<actix::Recipient<helios_actors::poll::TriggerPoll>>,
    pub remote: helios_actors::bus::RemoteBus,
    pub keys: helios_actors::ports::apikeys::ApiKeys,
    pub store: helios_actors::ports::store::Store,
    /// Whether a remote is configured (managed device).
    pub managed: bool,
    /// The device type slug (configured, or balenaOS's boot partition), when known.
    pub device_type: Option<String>,
    /// Present in front of a legacy supervisor: the device API is its, requests helios does
    /// not answer itself are proxied (api/proxy.rs).
    pub proxy: Option<proxy::ProxyState>,
    /// The names besides IP literals and `localhost` the TCP listener may be addressed by.
    pub allowed_hosts: guard::AllowedHosts,
}

/// Every route: helios's own and the supervisor device API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    own_routes(cfg);
    cfg.configure(actions::routes)
        .configure(host::routes)
        .configure(v1::routes)
        .configure(v2::routes)
        .default_service(web::to(unknown_route));
}

/// The routes helios answers even in front of a legacy supervisor (spec/helios-proxy.md §5).
/// `/v3` (but `/v3/status`, registered first) and `/metrics` need the global key on TCP
/// ([`auth::require_global`] around them, unknown `/v3` paths included).
pub fn own_routes(cfg: &mut web::ServiceConfig) {
    let global = || actix_web::middleware::from_fn(auth::require_global);
    cfg.route("/ping", web::get().to(v3::ping))
        .route("/v3/status", web::get().to(v3::status))
        .service(
            web::resource("/metrics")
                .wrap(global())
                .route(web::get().to(metrics::metrics)),
        )
        .service(
            web::scope("/v3")
                .wrap(global())
                .route("/version", web::get().to(v3::version))
                .route("/capabilities", web::get().to(v3::capabilities))
                .route("/device", web::get().to(v3::device))
                .route("/device/apps/{uuid}", web::get().to(v3::device_app))
                .route("/device/apps/{uuid}", web::post().to(v3::post_app))
                .route("/device/apps/{uuid}", web::delete().to(v3::delete_app))
                .route("/device/apps/{uuid}/plan", web::post().to(v3::plan_app)),
        )
        .route("/v1/update", web::post().to(v3::v1_update));
}

/// Unknown paths: 404, but the device API authenticates first (spec/device-api.md §1), so
/// without a valid key outside `/v3` the answer is 401 (`/v3` checked its key already).
async fn unknown_route(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    use actix_web::FromRequest;
    if !req.path().starts_with("/v3/") {
        let caller = auth::Caller::extract(&req).await;
        if let Err(e) = caller {
            return actix_web::ResponseError::error_response(&e);
        }
    }
    actix_web::HttpResponse::NotFound().finish()
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: ListenAddr,
        #[source]
        source: std::io::Error,
    },
}

impl BindError {
    /// The address is taken (maybe only for a moment): worth another try.
    pub fn in_use(&self) -> bool {
        match self {
            BindError::Bind { source, .. } => source.kind() == std::io::ErrorKind::AddrInUse,
        }
    }
}

/// Binds a unix socket at `path`, mode 0660 before anyone can reach it: it is bound inside a
/// fresh 0700 directory, made 0660, then renamed into place (binding in place and chmodding
/// afterwards leaves a window where the umask decides who may connect). A stale socket (or
/// anything else) at `path` is replaced, never followed.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let private = dir.join(format!(".{name}.{}.bind", std::process::id()));
    if std::fs::symlink_metadata(&private).is_ok() {
        std::fs::remove_dir_all(&private)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| {
        let tmp = private.join("sock");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        // rename replaces a stale socket or a link at `path` without following it.
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Binds every listener and returns the server (not yet running) with the bound addresses
/// (TCP port 0 resolved). Stale unix socket files are replaced; sockets are 0660 ([`bind_unix`]).
pub fn bind(
    listen: &[ListenAddr],
    state: ApiState,
    workers: usize,
    max_body_bytes: usize,
) -> Result<(actix_web::dev::Server, Vec<ListenAddr>), BindError> {
    let clock = web::Data::from(v1::ApplyClock::watch(
        state.state.clone(),
        state.targets.clone(),
    ));
    let proxy = state.proxy.clone();
    let data = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        let app = App::new()
            .app_data(data.clone())
            .app_data(clock.clone())
            .app_data(web::JsonConfig::default().limit(max_body_bytes))
            .app_data(web::PayloadConfig::default().limit(max_body_bytes))
            .wrap(actix_web::middleware::from_fn(limits::body_deadline))
            .wrap(actix_web::middleware::from_fn(guard::browser_guard));
        match &proxy {
            // In front of a legacy supervisor its device API is not shadowed: everything
            // helios does not answer itself is proxied.
            Some(p) => app
                .app_data(web::Data::new(proxy::ProxyClient::new(p)))
                .configure(own_routes)
                .default_service(web::to(proxy::forward)),
            None => app.configure(routes),
        }
    })
    .workers(workers)
    .client_request_timeout(limits::HEAD_TIMEOUT)
    .disable_signals()
    .shutdown_timeout(2);
    let mut bound = vec![];
    for addr in listen {
        let err = |source| BindError::Bind {
            addr: addr.clone(),
            source,
        };
        match addr {
            ListenAddr::Tcp(a) => {
                let before = server.addrs().len();
                server = server.bind(a).map_err(err)?;
                for a in server.addrs().into_iter().skip(before) {
                    bound.push(ListenAddr::Tcp(a));
                }
            }
            ListenAddr::Unix(p) => {
                let listener = bind_unix(p).map_err(err)?;
                server = server.listen_uds(listener).map_err(err)?;
                bound.push(addr.clone());
            }
        }
    }
    for a in &bound {
        info!(address:% = a, decision = "listen"; "API listening");
    }
    Ok((server.run(), bound))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::bind_unix;

    #[test]
    fn unix_sockets_are_private_and_replace_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/helios.sock");
        let first = bind_unix(&path).unwrap();
        drop(first);
        // A stale socket, then a link planted at the path: replaced, the target untouched.
        let _l = bind_unix(&path).unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "x").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let listener = bind_unix(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x");

        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the socket is left: {left:?}");
    }
}
