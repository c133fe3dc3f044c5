//! The shared model: apply status, current-state document, capabilities.
//! Wire shapes follow spec/helios-api-v3.md §4.3 (status) and §4.4 (the Device document).
pub mod cloud;
pub mod compose;
pub mod device;
pub mod host;
pub mod target;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// State of the apply loop as served by `GET /v3/status` (spec §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum UpdateStatus {
    #[default]
    #[serde(rename = "done")]
    Done,
    #[serde(rename = "applying changes")]
    ApplyingChanges,
    #[serde(rename = "aborted")]
    Aborted,
    #[serde(rename = "rejected")]
    Rejected,
    #[serde(rename = "interrupted")]
    Interrupted,
}

impl std::fmt::Display for UpdateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpdateStatus::Done => "done",
            UpdateStatus::ApplyingChanges => "applying changes",
            UpdateStatus::Aborted => "aborted",
            UpdateStatus::Rejected => "rejected",
            UpdateStatus::Interrupted => "interrupted",
        })
    }
}

/// The current-state Device document of `GET /v3/device` (spec §4.4).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceState {
    pub uuid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub images: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub apps: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<serde_json::Value>,
    /// The document an earlier process stored, not yet confirmed by reading the engine in this
    /// one (`"unconfirmed": true`; absent once Seek has read the engine).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfirmed: bool,
}

/// What the current-state bus carries: the device as last read or changed (as a document and
/// as the planner's model), and the loop status.
///
/// A target newer than `seq` on the TargetBus means an apply is about to start: readers show
/// `applying changes` then (see [`CurrentState::status_for`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CurrentState {
    pub status: UpdateStatus,
    /// Sequence number of the target `status` is about (see `TargetRequest::seq`).
    pub seq: u64,
    pub device: DeviceState,
    pub model: device::Device,
    /// The target being sought, as prepared for the planner.
    pub target: Option<device::DeviceTarget>,
    /// Host OS releases and the host part of the target: written by HostActor only (None
    /// when no host OS version is configured). Seek writes every other field.
    pub host: Option<host::HostState>,
}

impl CurrentState {
    /// The status to show, given the newest target sequence number on the TargetBus.
    pub fn status_for(&self, latest_target: Option<u64>) -> UpdateStatus {
        match latest_target {
            Some(seq) if seq > self.seq => UpdateStatus::ApplyingChanges,
            _ => self.loop_status(),
        }
    }

    /// Seek's status combined with the host part of the target (spec §4.3): when the apps
    /// are done, a host OS install still running (or not yet looked at) is `applying
    /// changes`, and a host part deliberately not reached is `aborted`.
    pub fn loop_status(&self) -> UpdateStatus {
        let Some(host) = &self.host else {
            return self.status;
        };
        if self.status != UpdateStatus::Done {
            return self.status;
        }
        if host.seq < self.seq {
            return UpdateStatus::ApplyingChanges;
        }
        match host.phase {
            host::HostPhase::Idle => UpdateStatus::Done,
            host::HostPhase::Working => UpdateStatus::ApplyingChanges,
            host::HostPhase::Aborted => UpdateStatus::Aborted,
        }
    }

    /// The Device document of `GET /v3/device`, with `host` when a host OS is configured.
    pub fn device_document(&self) -> std::borrow::Cow<'_, DeviceState> {
        match &self.host {
            None => std::borrow::Cow::Borrowed(&self.device),
            Some(h) => {
                let mut d = self.device.clone();
                d.host = Some(h.document());
                std::borrow::Cow::Owned(d)
            }
        }
    }
}

/// The container engine as found by the last probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
}

/// The system bus as found by the last probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BusInfo {
    pub address: String,
    pub login1: bool,
    pub systemd1: bool,
    pub hostname1: bool,
}

/// The host OS as detected: balenaOS (configured version, or `ID=balena-os` in os-release) or
/// generic Linux.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct OsInfo {
    /// `balenaOS` or `generic Linux`
    pub kind: String,
    /// os-release `PRETTY_NAME` (or the configured version), when known.
    pub name: Option<String>,
}

/// The runtime dir (update locks, breadcrumbs) and whether this process can write it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeDirInfo {
    pub path: String,
    pub writable: bool,
}

/// What the host environment offers, as detected at start and kept up to date by the actors
/// that own each part (served at `GET /v3/capabilities`).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Capabilities {
    /// None while the engine cannot be reached.
    pub engine: Option<EngineInfo>,
    /// None while the system bus cannot be reached.
    pub bus: Option<BusInfo>,
    pub remote: RemoteCapability,
    /// Whether the last request to the remote got an answer (None: unmanaged or not asked yet).
    pub remote_reachable: Option<bool>,
    pub legacy_supervisor: LegacyCapability,
    /// Whether the last request proxied to the legacy supervisor got an answer (None: not
    /// configured or not asked yet).
    pub legacy_answering: Option<bool>,
    /// The configured host OS version (spec/helios-api-v3.md §10).
    pub host_os: Option<String>,
    pub os: OsInfo,
    pub runtime_dir: Option<RuntimeDirInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteCapability {
    #[default]
    Unmanaged,
    Configured,
    Provisioning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LegacyCapability {
    #[default]
    NotConfigured,
    Configured,
}

/// What the last remote target said beyond the target itself (written by PollActor, read by
/// ReportActor and the API).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteInfo {
    /// Apps of the last remote target: the only ones reported.
    pub authorized: std::collections::BTreeSet<String>,
    /// Apps whose target release was rejected: app uuid → (release uuid, reason).
    pub rejected: BTreeMap<String, (String, String)>,
    /// A whole document was rejected (reason), until the next good one.
    pub document_rejected: Option<String>,
    /// The device API key, once known (registered or configured).
    pub api_key: Option<crate::Secret>,
    /// In front of a legacy supervisor: the `apps` it last reported for the apps it runs
    /// (taken out of its PATCH by the proxy; helios reports them with its own, so every
    /// report carries the whole `apps`, spec/state-report-v3.md §3.5).
    pub legacy_apps: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::host::{HostPhase, HostState};
    use super::*;

    #[test]
    fn the_host_part_turns_done_into_applying_or_aborted() {
        let with = |status, seq, host: Option<(u64, HostPhase)>| CurrentState {
            status,
            seq,
            host: host.map(|(seq, phase)| HostState {
                meta: crate::model::host::OsVersion::parse("balenaOS 6.0@b").unwrap(),
                releases: Default::default(),
                seq,
                phase,
            }),
            ..Default::default()
        };
        use UpdateStatus::*;
        assert_eq!(with(Done, 2, None).status_for(Some(2)), Done);
        assert_eq!(
            with(Done, 2, Some((2, HostPhase::Idle))).status_for(Some(2)),
            Done
        );
        assert_eq!(
            with(Done, 2, Some((2, HostPhase::Working))).status_for(Some(2)),
            ApplyingChanges
        );
        assert_eq!(
            with(Done, 2, Some((1, HostPhase::Idle))).loop_status(),
            ApplyingChanges,
            "the host part of target 2 is not looked at yet"
        );
        assert_eq!(
            with(Done, 2, Some((2, HostPhase::Aborted))).loop_status(),
            Aborted
        );
        assert_eq!(
            with(Rejected, 2, Some((2, HostPhase::Aborted))).loop_status(),
            Rejected,
            "only a finished apply is turned"
        );
        assert_eq!(
            with(Done, 2, Some((2, HostPhase::Aborted))).status_for(Some(3)),
            ApplyingChanges
        );
        let doc = with(Done, 2, Some((2, HostPhase::Idle)));
        assert_eq!(
            doc.device_document().host.as_ref().unwrap()["meta"]["build"],
            "b"
        );
        assert!(with(Done, 2, None).device_document().host.is_none());
    }
}
