//! A fake `org.freedesktop.login1` on the private test bus (zbus), recording `Reboot` and
//! `PowerOff` calls. Runs on its own thread and runtime, so blocking test code never stalls it.
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

pub struct FakeLogin1 {
    calls: Calls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeLogin1 {
    /// Owns `org.freedesktop.login1` on the bus at `address` until dropped.
    pub fn start(address: &str) -> FakeLogin1 {
        let calls: Calls = Arc::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (c, addr) = (calls.clone(), address.to_string());
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
                        .name("org.freedesktop.login1")
                        .serve_at("/org/freedesktop/login1", Manager { calls: c.clone() })
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
            "the fake login1 owns its name on the test bus"
        );
        FakeLogin1 {
            calls,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn calls(&self) -> Vec<(String, Instant)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for FakeLogin1 {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
