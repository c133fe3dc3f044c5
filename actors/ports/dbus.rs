//! System bus port (zbus): connects to the bus and tells which host services it offers.
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
}

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
        let err = |source| BusError::Call { call, source };
        let m = Login1ManagerProxy::new(&self.conn).await.map_err(err)?;
        match action {
            PowerAction::Reboot => m.reboot(false).await.map_err(err),
            PowerAction::PowerOff => m.power_off(false).await.map_err(err),
        }
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Systemd1Manager {
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<zbus::OwnedObjectPath>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: zbus::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

impl Bus {
    /// `org.freedesktop.systemd1.Manager.RestartUnit(unit, "replace")`, then waits (at most
    /// `timeout`) for its job to finish; returns the job's result (`done`, `failed`, ...), or
    /// None when it did not finish in time.
    pub async fn restart_unit(
        &self,
        unit: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<String>, BusError> {
        use futures::StreamExt;
        let err = |source| BusError::Call {
            call: "RestartUnit",
            source,
        };
        let m = Systemd1ManagerProxy::new(&self.conn).await.map_err(err)?;
        // Subscribe first: the job may finish before the call returns.
        let mut removed = m.receive_job_removed().await.map_err(err)?;
        let job = m.restart_unit(unit, "replace").await.map_err(err)?;
        let wait = async {
            while let Some(sig) = removed.next().await {
                let Ok(args) = sig.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Some(args.result.to_string());
                }
            }
            None
        };
        Ok(tokio::time::timeout(timeout, wait).await.ok().flatten())
    }
}
