//! System bus port (zbus): connects to the bus, tells which host services it offers, and calls
//! logind (power), systemd (units, transient units) and hostnamed, as spec/helios-api-v3.md §9
//! and spec/behaviours.md §16 describe.
use std::time::Duration;

use futures::StreamExt;
use zbus::{OwnedObjectPath, Variant as Value};

use crate::model::BusInfo;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("system bus unreachable at {address}")]
    Unreachable {
        address: String,
        #[source]
        source: zbus::Error,
    },
    #[error("system bus call {call} failed")]
    Call {
        call: &'static str,
        #[source]
        source: zbus::Error,
    },
    #[error("no such unit {unit}")]
    NoSuchUnit { unit: String },
    #[error("job for unit {unit} ended with result {result}")]
    JobFailed { unit: String, result: String },
    #[error("system bus call {call} timed out after {}s", .after.as_secs())]
    Timeout { call: &'static str, after: Duration },
}

impl BusError {
    fn call(call: &'static str) -> impl Fn(zbus::Error) -> BusError {
        move |source| BusError::Call { call, source }
    }

    /// `org.freedesktop.systemd1.NoSuchUnit` becomes [`BusError::NoSuchUnit`].
    fn unit<'a>(call: &'static str, unit: &'a str) -> impl Fn(zbus::Error) -> BusError + 'a {
        move |source| match &source {
            zbus::Error::MethodError(name, _, _)
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                BusError::NoSuchUnit {
                    unit: unit.to_string(),
                }
            }
            _ => BusError::Call { call, source },
        }
    }
}

/// Bounds every call whose answer depends on another process (systemd, logind, hostnamed).
async fn bounded<T>(
    call: &'static str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    tokio::time::timeout(after, fut)
        .await
        .unwrap_or(Err(BusError::Timeout { call, after }))
}

const SYSTEMD: &str = "org.freedesktop.systemd1";
const HOST_SERVICES: [&str; 3] = [
    "org.freedesktop.login1",
    "org.freedesktop.systemd1",
    "org.freedesktop.hostname1",
];
const HOSTNAME: &str = "org.freedesktop.hostname1";

/// How long a method call may take before it is an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// A connection to the system bus.
#[derive(Clone)]
pub struct Bus {
    conn: zbus::Connection,
    address: String,
}

impl Bus {
    pub async fn connect(address: &str) -> Result<Bus, BusError> {
        let unreachable = |source| BusError::Unreachable {
            address: address.to_string(),
            source,
        };
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .map_err(unreachable)?;
        Ok(Bus {
            conn,
            address: address.to_string(),
        })
    }

    pub fn connection(&self) -> &zbus::Connection {
        &self.conn
    }

    /// A stream with one item each time one of the host services helios uses gains or loses
    /// its owner; it ends when the connection closes.
    pub async fn watch_names(
        &self,
    ) -> Result<impl futures::Stream<Item = ()> + Unpin + 'static, BusError> {
        let dbus = zbus::fdo::DBusProxy::new(&self.conn)
            .await
            .map_err(BusError::call("DBus proxy"))?;
        let changes = dbus
            .receive_name_owner_changed()
            .await
            .map_err(|e| BusError::call("NameOwnerChanged")(e))?;
        Ok(changes
            .filter_map(|signal| async move {
                let args = signal.args().ok()?;
                HOST_SERVICES.contains(&args.name().as_str()).then_some(())
            })
            .boxed())
    }

    /// Which of the host services helios uses are on the bus now.
    pub async fn probe(&self) -> Result<BusInfo, BusError> {
        let dbus = zbus::fdo::DBusProxy::new(&self.conn)
            .await
            .map_err(|source| BusError::Call {
                call: "DBus proxy",
                source,
            })?;
        let names = dbus.list_names().await.map_err(|e| BusError::Call {
            call: "ListNames",
            source: e.into(),
        })?;
        let has = |n: &str| names.iter().any(|x| x.as_str() == n);
        Ok(BusInfo {
            address: self.address.clone(),
            login1: has("org.freedesktop.login1"),
            systemd1: has("org.freedesktop.systemd1"),
            hostname1: has("org.freedesktop.hostname1"),
        })
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Login1Manager {
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
    fn power_off(&self, interactive: bool) -> zbus::Result<()>;
}

/// What logind is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

impl Bus {
    /// `org.freedesktop.login1.Manager.Reboot` / `PowerOff`, non-interactive.
    pub async fn power(&self, action: PowerAction) -> Result<(), BusError> {
        let call = match action {
            PowerAction::Reboot => "Reboot",
            PowerAction::PowerOff => "PowerOff",
        };
        bounded(call, CALL_TIMEOUT, async {
            let m = Login1ManagerProxy::new(&self.conn)
                .await
                .map_err(BusError::call(call))?;
            match action {
                PowerAction::Reboot => m.reboot(false).await,
                PowerAction::PowerOff => m.power_off(false).await,
            }
            .map_err(BusError::call(call))
        })
        .await
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Systemd1Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[allow(clippy::type_complexity)]
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: zbus::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.hostname1",
    default_service = "org.freedesktop.hostname1",
    default_path = "/org/freedesktop/hostname1"
)]
trait Hostname1 {
    fn set_static_hostname(&self, hostname: &str, interactive: bool) -> zbus::Result<()>;
}

/// What systemd is asked to do with a unit (mode `fail`, spec/behaviours.md §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitAction {
    Start,
    Stop,
    Restart,
}

impl UnitAction {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitAction::Start => "StartUnit",
            UnitAction::Stop => "StopUnit",
            UnitAction::Restart => "RestartUnit",
        }
    }
}

/// A command to run as a transient service unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientUnit {
    pub name: String,
    pub argv: Vec<String>,
    pub working_directory: String,
}

/// How a transient unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitExit {
    /// `inactive` (false) or `failed` (true)
    pub failed: bool,
    pub exec_main_status: i32,
}

impl UnitExit {
    pub fn success(&self) -> bool {
        !self.failed && self.exec_main_status == 0
    }
}

impl Bus {
    /// `StartUnit`/`StopUnit`/`RestartUnit` with mode `fail`, then waits for the job's
    /// `JobRemoved` signal: result `done` is success, anything else an error.
    pub async fn unit(
        &self,
        action: UnitAction,
        unit: &str,
        wait: Duration,
    ) -> Result<(), BusError> {
        let call = action.as_str();
        let m = Systemd1ManagerProxy::new(&self.conn)
            .await
            .map_err(BusError::call(call))?;
        bounded("Subscribe", CALL_TIMEOUT, async {
            m.subscribe().await.map_err(BusError::call("Subscribe"))
        })
        .await?;
        // Listen before asking, so a fast job's signal is not missed.
        let mut removed = m
            .receive_job_removed()
            .await
            .map_err(BusError::call("JobRemoved"))?;
        let job = bounded(call, CALL_TIMEOUT, async {
            match action {
                UnitAction::Start => m.start_unit(unit, "fail").await,
                UnitAction::Stop => m.stop_unit(unit, "fail").await,
                UnitAction::Restart => m.restart_unit(unit, "fail").await,
            }
            .map_err(BusError::unit(call, unit))
        })
        .await?;
        bounded("JobRemoved", wait, async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job().as_str() != job.as_str() {
                    continue;
                }
                return match args.result() {
                    &"done" => Ok(()),
                    other => Err(BusError::JobFailed {
                        unit: unit.to_string(),
                        result: other.to_string(),
                    }),
                };
            }
            Err(BusError::Call {
                call: "JobRemoved",
                source: zbus::Error::InputOutput(std::sync::Arc::new(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the bus connection closed",
                ))),
            })
        })
        .await
    }

    /// Runs `unit` as a transient service (`Type=exec`, `CollectMode=inactive`; a failed unit
    /// of the same name is reset first) and waits, reading `ActiveState` every 100 ms, until
    /// it is `inactive` or `failed`; then reads `ExecMainStatus` (spec/helios-api-v3.md §9).
    pub async fn run_transient(
        &self,
        unit: &TransientUnit,
        wait: Duration,
    ) -> Result<UnitExit, BusError> {
        let name = unit.name.as_str();
        let m = Systemd1ManagerProxy::new(&self.conn)
            .await
            .map_err(BusError::call("StartTransientUnit"))?;
        match bounded("ResetFailedUnit", CALL_TIMEOUT, async {
            m.reset_failed_unit(name)
                .await
                .map_err(BusError::unit("ResetFailedUnit", name))
        })
        .await
        {
            Ok(()) | Err(BusError::NoSuchUnit { .. }) => {}
            Err(e) => return Err(e),
        }
        let path = unit.argv.first().cloned().unwrap_or_default();
        let exec_start = vec![(path, unit.argv.clone(), false)];
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(format!("helios: {name}"))),
            ("Type", Value::from("exec")),
            (
                "WorkingDirectory",
                Value::from(unit.working_directory.as_str()),
            ),
            ("CollectMode", Value::from("inactive")),
            ("ExecStart", Value::from(exec_start)),
        ];
        bounded("StartTransientUnit", CALL_TIMEOUT, async {
            m.start_transient_unit(name, "replace", &props, &[])
                .await
                .map_err(BusError::call("StartTransientUnit"))
        })
        .await?;
        bounded("ActiveState", wait, async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let unit_path = match m.get_unit(name).await {
                    Ok(p) => p,
                    // Collected: with CollectMode=inactive only a unit that ended well goes.
                    Err(e) => match BusError::unit("GetUnit", name)(e) {
                        BusError::NoSuchUnit { .. } => {
                            return Ok(UnitExit {
                                failed: false,
                                exec_main_status: 0,
                            })
                        }
                        e => return Err(e),
                    },
                };
                let state: String = self
                    .property(
                        SYSTEMD,
                        &unit_path,
                        "org.freedesktop.systemd1.Unit",
                        "ActiveState",
                    )
                    .await?;
                if state == "inactive" || state == "failed" {
                    let status: i32 = self
                        .property(
                            SYSTEMD,
                            &unit_path,
                            "org.freedesktop.systemd1.Service",
                            "ExecMainStatus",
                        )
                        .await?;
                    return Ok(UnitExit {
                        failed: state == "failed",
                        exec_main_status: status,
                    });
                }
            }
        })
        .await
    }

    async fn property<T>(
        &self,
        destination: &'static str,
        path: &OwnedObjectPath,
        iface: &'static str,
        name: &'static str,
    ) -> Result<T, BusError>
    where
        T: TryFrom<zbus::OwnedVariant>,
        T::Error: Into<zbus::Error>,
    {
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination(destination)
            .path(path.clone())
            .build()
            .await
            .map_err(BusError::call(name))?;
        let iface =
            zbus::names::InterfaceName::from_static_str(iface).map_err(BusError::call(name))?;
        let v = props
            .get(iface, name)
            .await
            .map_err(|e| BusError::call(name)(e.into()))?;
        T::try_from(v).map_err(|e| BusError::call(name)(e.into()))
    }

    /// `org.freedesktop.hostname1` `StaticHostname`.
    pub async fn static_hostname(&self) -> Result<String, BusError> {
        let path =
            OwnedObjectPath::try_from("/org/freedesktop/hostname1").expect("a valid object path");
        bounded("StaticHostname", CALL_TIMEOUT, async {
            self.property(
                HOSTNAME,
                &path,
                "org.freedesktop.hostname1",
                "StaticHostname",
            )
            .await
        })
        .await
    }

    /// `org.freedesktop.hostname1.SetStaticHostname`, non-interactive.
    pub async fn set_static_hostname(&self, hostname: &str) -> Result<(), BusError> {
        let call = "SetStaticHostname";
        bounded(call, CALL_TIMEOUT, async {
            let h = Hostname1Proxy::new(&self.conn)
                .await
                .map_err(BusError::call(call))?;
            h.set_static_hostname(hostname, false)
                .await
                .map_err(BusError::call(call))
        })
        .await
    }
}
