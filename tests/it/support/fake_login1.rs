//! Fakes of host services on the private test bus (zbus): `org.freedesktop.login1`, recording
//! `Reboot` and `PowerOff`, and `org.freedesktop.systemd1`, recording `RestartUnit` and
//! finishing each job at once (`JobRemoved` with `done`). Each runs on its own thread and
//! runtime, so blocking test code never stalls it.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Calls = Arc<Mutex<Vec<(String, Instant)>>>;

struct Manager {
    calls: Calls,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    fn reboot(&self, _interactive: bool) {
        self.calls
            .lock()
            .unwrap()
            .push(("Reboot".into(), Instant::now()));
    }

    fn power_off(&self, _interactive: bool) {
        self.calls
            .lock()
            .unwrap()
            .push(("PowerOff".into(), Instant::now()));
    }
}

struct Systemd {
    calls: Calls,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Systemd {
    /// Records `RestartUnit:<unit>` and reports the job done right away.
    async fn restart_unit(
        &self,
        name: &str,
        _mode: &str,
        #[zbus(signal_emitter)] emitter: zbus::object_server::SignalEmitter<'_>,
    ) -> zbus::fdo::Result<zbus::OwnedObjectPath> {
        let id = {
            let mut c = self.calls.lock().unwrap();
            c.push((format!("RestartUnit:{name}"), Instant::now()));
            c.len() as u32
        };
        let job = zbus::OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        Self::job_removed(&emitter, id, job.as_ref(), name, "done").await?;
        Ok(job)
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        id: u32,
        job: zbus::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// A service owning a name on the test bus until dropped.
struct Served {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn serve<I: zbus::object_server::Interface>(
    address: &str,
    name: &'static str,
    path: &'static str,
    iface: impl Fn() -> I + Send + 'static,
) -> Served {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let addr = address.to_string();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // Another test may hold the name for a moment: retry.
            let mut conn = None;
            for _ in 0..50 {
                let built = zbus::connection::Builder::address(addr.as_str())
                    .name(name)
                    .serve_at(path, iface())
                    .build()
                    .await;
                match built {
                    Ok(x) => {
                        conn = Some(x);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let _ = ready_tx.send(conn.is_some());
            let _conn = conn;
            let _ = stop_rx.await;
        });
    });
    assert!(
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or(false),
        "the fake {name} owns its name on the test bus"
    );
    Served {
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct FakeLogin1 {
    calls: Calls,
    _served: Served,
}

impl FakeLogin1 {
    /// Owns `org.freedesktop.login1` on the bus at `address` until dropped.
    pub fn start(address: &str) -> FakeLogin1 {
        let calls: Calls = Arc::default();
        let c = calls.clone();
        let served = serve(
            address,
            "org.freedesktop.login1",
            "/org/freedesktop/login1",
            move || Manager { calls: c.clone() },
        );
        FakeLogin1 {
            calls,
            _served: served,
        }
    }

    pub fn calls(&self) -> Vec<(String, Instant)> {
        self.calls.lock().unwrap().clone()
    }
}

pub struct FakeSystemd {
    calls: Calls,
    _served: Served,
}

impl FakeSystemd {
    /// Owns `org.freedesktop.systemd1` on the bus at `address` until dropped.
    pub fn start(address: &str) -> FakeSystemd {
        let calls: Calls = Arc::default();
        let c = calls.clone();
        let served = serve(
            address,
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            move || Systemd { calls: c.clone() },
        );
        FakeSystemd {
            calls,
            _served: served,
        }
    }

    /// The units restarted so far, in order.
    pub fn restarted(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(c, _)| c.strip_prefix("RestartUnit:").map(str::to_string))
            .collect()
    }
}
