//! The local HTTP API (actix-web): listeners on TCP and unix sockets, routes, shared state.
//! Handlers read the buses and write targets; bodies are streamed, never sent to a mailbox.
pub mod actions;
pub mod auth;
pub mod error;
pub mod host;
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
    pub seek_cleanup: actix::Recipient<helios_actors::seek::CleanupVolumes>,
    /// Present when managed: `/v1/update` polls first.
    pub poll: Option<actix::Recipient<helios_actors::poll::TriggerPoll>>,
    pub remote: helios_actors::bus::RemoteBus,
    pub keys: helios_actors::ports::apikeys::ApiKeys,
    pub store: helios_actors::ports::store::Store,
    /// Whether a remote is configured (managed device).
    pub managed: bool,
    /// Present in front of a legacy supervisor: the device API is its, requests helios does
    /// not answer itself are proxied (api/proxy.rs).
    pub proxy: Option<proxy::ProxyState>,
}

/// Every route: helios's own and the supervisor device API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    own_routes(cfg);
    cfg.configure(actions::routes)
        .configure(host::routes)
        .configure(v1::routes)
        .configure(v2::routes);
}

/// The routes helios answers even in front of a legacy supervisor (spec/helios-proxy.md §5).
pub fn own_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ping", web::get().to(v3::ping))
        .route("/v3/status", web::get().to(v3::status))
        .route("/v3/version", web::get().to(v3::version))
        .route("/v3/capabilities", web::get().to(v3::capabilities))
        .route("/v3/device", web::get().to(v3::device))
        .route("/v3/device/apps/{uuid}", web::get().to(v3::device_app))
        .route("/v3/device/apps/{uuid}", web::post().to(v3::post_app))
        .route("/v3/device/apps/{uuid}", web::delete().to(v3::delete_app))
        .route("/v3/device/apps/{uuid}/plan", web::post().to(v3::plan_app))
        .route("/v1/update", web::post().to(v3::v1_update));
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

/// Binds every listener and returns the server (not yet running) with the bound addresses
/// (TCP port 0 resolved). Stale unix socket files are replaced; sockets are made 0660.
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
            .app_data(web::PayloadConfig::default().limit(max_body_bytes));
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
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(err)?;
                }
                // A socket left by a previous run would make bind fail with EADDRINUSE.
                if std::fs::symlink_metadata(p).is_ok() {
                    std::fs::remove_file(p).map_err(err)?;
                }
                server = server.bind_uds(p).map_err(err)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
                bound.push(addr.clone());
            }
        }
    }
    for a in &bound {
        info!(address:% = a, decision = "listen"; "API listening");
    }
    Ok((server.run(), bound))
}
