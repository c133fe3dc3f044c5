//! Fakes of the host services helios calls on the private test bus (zbus): `login1` (records
//! `Reboot`/`PowerOff`), `systemd1` (unit jobs answered with `JobRemoved`, transient units whose
//! command really runs, spec/helios-api-v3.md §9) and `hostname1` (keeps the static hostname).
//! Each runs on its own thread and runtime, so blocking test code never stalls it.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::object_server::SignalEmitter;
use zbus::{OwnedObjectPath, OwnedVariant};

/// A connection owning one well-known name on the test bus until dropped.
struct Served {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start<F>(address: &str, name: &'static str, serve: F) -> Served
    where
        F: Fn(zbus::connection::Builder<'static>) -> zbus::connection::Builder<'static>
            + Send
            + 'static,
    {
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
                    let built = serve(zbus::connection::Builder::address(addr.as_str()).name(name))
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

type Calls = Arc<Mutex<Vec<(String, Instant)>>>;

struct Login1 {
    calls: Calls,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Login1 {
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
    _served: Served,
}

impl FakeLogin1 {
    /// Owns `org.freedesktop.login1` on the bus at `address` until dropped.
    pub fn start(address: &str) -> FakeLogin1 {
        let calls: Calls = Arc::default();
        let c = calls.clone();
        let served = Served::start(address, "org.freedesktop.login1", move |b| {
            b.serve_at("/org/freedesktop/login1", Login1 { calls: c.clone() })
        });
        FakeLogin1 {
            calls,
            _served: served,
        }
    }

    pub fn calls(&self) -> Vec<(String, Instant)> {
        self.calls.lock().unwrap().clone()
    }
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum SystemdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

/// A unit job or transient unit as the fake saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitCall {
    /// `StartUnit`, `StopUnit`, `RestartUnit`, `StartTransientUnit`, `ResetFailedUnit`
    pub method: String,
    pub unit: String,
    pub mode: String,
    /// Transient units: the `ExecStart` argv and `WorkingDirectory`.
    pub argv: Vec<String>,
    pub working_directory: String,
    pub at: Instant,
    /// When `JobRemoved` was sent for it.
    pub job_removed_at: Option<Instant>,
}

#[derive(Default)]
struct SystemdState {
    calls: Vec<UnitCall>,
    /// unit → (ActiveState, ExecMainStatus)
    units: HashMap<String, (String, i32)>,
    /// unit → the `JobRemoved` result to answer with (default `done`)
    results: HashMap<String, String>,
    /// units that do not exist
    missing: Vec<String>,
    /// how long a job takes before `JobRemoved`
    job_delay: Duration,
    next_job: u32,
}

type Shared = Arc<Mutex<SystemdState>>;

struct Systemd1 {
    state: Shared,
}

fn unit_path(unit: &str) -> OwnedObjectPath {
    let escaped: String = unit
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("_{b:02x}")
            }
        })
        .collect();
    OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/unit/{escaped}")).unwrap()
}

impl Systemd1 {
    async fn job(
        &self,
        method: &str,
        name: String,
        mode: String,
        emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, SystemdError> {
        let (id, result, delay, index) = {
            let mut s = self.state.lock().unwrap();
            s.calls.push(UnitCall {
                method: method.into(),
                unit: name.clone(),
                mode,
                argv: vec![],
                working_directory: String::new(),
                at: Instant::now(),
                job_removed_at: None,
            });
            if s.missing.contains(&name) {
                return Err(SystemdError::NoSuchUnit(format!("Unit {name} not found.")));
            }
            s.next_job += 1;
            let result = s
                .results
                .get(&name)
                .cloned()
                .unwrap_or_else(|| "done".into());
            (s.next_job, result, s.job_delay, s.calls.len() - 1)
        };
        let job = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}")).unwrap();
        let (j, state, emitter) = (job.clone(), self.state.clone(), emitter.into_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            state.lock().unwrap().calls[index].job_removed_at = Some(Instant::now());
            let _ = Systemd1::job_removed(&emitter, id, j, name, result).await;
        });
        Ok(job)
    }
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Systemd1 {
    fn subscribe(&self) {}

    async fn start_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(signal_emitter)] e: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, SystemdError> {
        self.job("StartUnit", name, mode, e).await
    }

    async fn stop_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(signal_emitter)] e: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, SystemdError> {
        self.job("StopUnit", name, mode, e).await
    }

    async fn restart_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(signal_emitter)] e: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, SystemdError> {
        self.job("RestartUnit", name, mode, e).await
    }

    fn reset_failed_unit(&self, name: String) -> Result<(), SystemdError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(UnitCall {
            method: "ResetFailedUnit".into(),
            unit: name.clone(),
            mode: String::new(),
            argv: vec![],
            working_directory: String::new(),
            at: Instant::now(),
            job_removed_at: None,
        });
        match s.units.get(&name) {
            Some((state, _)) if state == "failed" => {
                s.units.remove(&name);
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(SystemdError::NoSuchUnit(format!("Unit {name} not loaded."))),
        }
    }

    fn get_unit(&self, name: String) -> Result<OwnedObjectPath, SystemdError> {
        if self.state.lock().unwrap().units.contains_key(&name) {
            Ok(unit_path(&name))
        } else {
            Err(SystemdError::NoSuchUnit(format!("Unit {name} not loaded.")))
        }
    }

    /// Really runs the unit's `ExecStart` in its `WorkingDirectory`.
    async fn start_transient_unit(
        &self,
        name: String,
        mode: String,
        properties: Vec<(String, OwnedVariant)>,
        _aux: Vec<(String, Vec<(String, OwnedVariant)>)>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
    ) -> Result<OwnedObjectPath, SystemdError> {
        let mut argv = vec![];
        let mut wd = String::from("/");
        for (k, v) in properties {
            match k.as_str() {
                "ExecStart" => {
                    let exec: Vec<(String, Vec<String>, bool)> =
                        v.try_into().map_err(|e: zbus::Error| e)?;
                    argv = exec.into_iter().next().map(|x| x.1).unwrap_or_default();
                }
                "WorkingDirectory" => wd = v.try_into().map_err(|e: zbus::Error| e)?,
                _ => {}
            }
        }
        {
            let mut s = self.state.lock().unwrap();
            if matches!(s.units.get(&name), Some((st, _)) if st == "active" || st == "failed") {
                return Err(SystemdError::ZBus(zbus::Error::Failure(format!(
                    "Unit {name} was already loaded or has a fragment file."
                ))));
            }
            s.calls.push(UnitCall {
                method: "StartTransientUnit".into(),
                unit: name.clone(),
                mode,
                argv: argv.clone(),
                working_directory: wd.clone(),
                at: Instant::now(),
                job_removed_at: None,
            });
            s.units.insert(name.clone(), ("active".into(), 0));
        }
        let path = unit_path(&name);
        let unit = Unit {
            name: name.clone(),
            state: self.state.clone(),
        };
        let _ = server.at(path.clone(), unit.clone()).await;
        let _ = server.at(path.clone(), Service(unit)).await;
        let state = self.state.clone();
        std::thread::spawn(move || {
            let status = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .current_dir(&wd)
                .status()
                .map(|s| s.code().unwrap_or(128))
                .unwrap_or(203);
            let active = if status == 0 { "inactive" } else { "failed" };
            state
                .lock()
                .unwrap()
                .units
                .insert(name, (active.into(), status));
        });
        Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/transient").unwrap())
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[derive(Clone)]
struct Unit {
    name: String,
    state: Shared,
}

impl Unit {
    fn get(&self) -> (String, i32) {
        let s = self.state.lock().unwrap();
        s.units
            .get(&self.name)
            .cloned()
            .unwrap_or(("inactive".into(), 0))
    }
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl Unit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        self.get().0
    }
}

struct Service(Unit);

#[zbus::interface(name = "org.freedesktop.systemd1.Service")]
impl Service {
    #[zbus(property)]
    fn exec_main_status(&self) -> i32 {
        self.0.get().1
    }
}

/// `org.freedesktop.systemd1` for tests: every call is recorded; jobs end with `done` unless
/// told otherwise; transient units run their command for real.
pub struct FakeSystemd {
    state: Shared,
    _served: Served,
}

impl FakeSystemd {
    pub fn start(address: &str) -> FakeSystemd {
        let state: Shared = Arc::default();
        let s = state.clone();
        let served = Served::start(address, "org.freedesktop.systemd1", move |b| {
            b.serve_at("/org/freedesktop/systemd1", Systemd1 { state: s.clone() })
        });
        FakeSystemd {
            state,
            _served: served,
        }
    }

    /// Jobs for `unit` end with `result` (e.g. `failed`) instead of `done`.
    pub fn job_result(&self, unit: &str, result: &str) {
        let mut s = self.state.lock().unwrap();
        s.results.insert(unit.into(), result.into());
    }

    /// Jobs take this long before their `JobRemoved`.
    pub fn job_delay(&self, delay: Duration) {
        self.state.lock().unwrap().job_delay = delay;
    }

    pub fn calls(&self) -> Vec<UnitCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The units restarted so far (`RestartUnit`), in order.
    pub fn restarted(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "RestartUnit")
            .map(|c| c.unit)
            .collect()
    }
}

struct Hostname1 {
    hostname: Arc<Mutex<String>>,
}

#[zbus::interface(name = "org.freedesktop.hostname1")]
impl Hostname1 {
    fn set_static_hostname(&self, hostname: String, _interactive: bool) {
        *self.hostname.lock().unwrap() = hostname;
    }

    #[zbus(property)]
    fn static_hostname(&self) -> String {
        self.hostname.lock().unwrap().clone()
    }
}

/// `org.freedesktop.hostname1` for tests, keeping the static hostname it was given.
pub struct FakeHostname {
    hostname: Arc<Mutex<String>>,
    _served: Served,
}

impl FakeHostname {
    pub fn start(address: &str, initial: &str) -> FakeHostname {
        let hostname = Arc::new(Mutex::new(initial.to_string()));
        let h = hostname.clone();
        let served = Served::start(address, "org.freedesktop.hostname1", move |b| {
            b.serve_at(
                "/org/freedesktop/hostname1",
                Hostname1 {
                    hostname: h.clone(),
                },
            )
        });
        FakeHostname {
            hostname,
            _served: served,
        }
    }

    pub fn hostname(&self) -> String {
        self.hostname.lock().unwrap().clone()
    }
}
