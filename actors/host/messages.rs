//! HostActor's API: power, and the host config as the device API reads and patches it.
use actix::Message;
use serde_json::{Map, Value};

use crate::ports::dbus::PowerAction;

/// Sent by the API (`POST /v1/reboot`, `POST /v1/shutdown`): take every app's update lock,
/// answer, then (after the API replied and the store is flushed) ask logind.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct Power {
    pub action: PowerAction,
    pub force: bool,
}

/// Sent by the API (`GET /v1/device/host-config`).
#[derive(Debug, Message)]
#[rtype(result = "Result<HostConfig, HostError>")]
pub struct GetHostConfig;

/// The host config as `/v1/device/host-config` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    pub hostname: String,
    /// Present only when a proxy is configured.
    pub proxy: Option<Map<String, Value>>,
}

/// Sent by the API (`PATCH /v1/device/host-config`): change what is given, holding every
/// app's update locks.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct PatchHostConfig {
    /// Empty resets to the first 7 characters of the uuid.
    pub hostname: Option<String>,
    /// Merged field by field over the current proxy; empty removes it.
    pub proxy: Option<Map<String, Value>>,
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A user holds an update lock.
    #[error("{0}")]
    Locked(String),
    /// What the request needs is not on this host (no bus service, not balenaOS).
    #[error("{0}")]
    Unavailable(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The host refused or failed (a bus call, a failed job, a file).
    #[error("{0}")]
    Failed(String),
}
