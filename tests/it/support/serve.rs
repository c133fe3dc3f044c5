//! The fakes' HTTP server (fake cloud, fake legacy supervisor): actix-web on its own thread,
//! bound on 127.0.0.1:0, each connection's socket offered to handlers as [`ConnFd`] (to
//! reset it unanswered), stopped and joined on drop.
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

/// The socket of a connection, to close it unanswered.
#[derive(Clone, Copy)]
pub struct ConnFd(pub RawFd);

/// A running server; stopped when dropped.
pub struct Served {
    /// Base URL, e.g. `http://127.0.0.1:40123` (no trailing `/`).
    pub url: String,
    server: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

/// Starts a server whose app `configure` sets up (per worker), and returns once it accepts
/// connections.
pub fn serve<F>(name: &'static str, configure: F) -> Served
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || App::new().configure(configure.clone()))
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .on_connect(|conn, ext| {
                        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                            ext.insert(ConnFd(tcp.as_raw_fd()));
                        }
                    })
                    .bind(("127.0.0.1", 0))
                    .unwrap_or_else(|e| panic!("bind {name} on 127.0.0.1:0: {e}"));
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle()))
                    .expect("the starting test waits for the address");
                let _ = server.await;
            })
        })
        .unwrap_or_else(|e| panic!("spawn the {name} thread: {e}"));
    let (addr, server) = rx.recv().unwrap_or_else(|_| panic!("{name} did not start"));
    Served {
        url: format!("http://{addr}"),
        server,
        thread: Some(thread),
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // The stop command is sent by the call itself; the future only waits for completion.
        drop(self.server.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
