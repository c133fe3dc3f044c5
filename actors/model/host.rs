//! Host OS releases (spec/helios-api-v3.md §9; `host` of the Device document §4.4; the host app
//! of the state report §5.2): the target host release taken from the remote target's hostapp,
//! the releases HostActor knows and their status, and what HostActor publishes on the StateBus.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The host OS as configured: `"<name> <version>[@<build>]"` (spec/helios-api-v3.md §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsVersion {
    pub name: String,
    pub version: String,
    pub build: Option<String>,
}

impl OsVersion {
    pub fn parse(v: &str) -> Result<OsVersion, String> {
        let v = v.trim();
        let (name, rest) = v
            .rsplit_once(' ')
            .ok_or_else(|| "expected \"<name> <version>[@<build>]\"".to_string())?;
        let (version, build) = match rest.split_once('@') {
            Some((ver, b)) => (ver, Some(b)),
            None => (rest, None),
        };
        if name.trim().is_empty() || version.is_empty() || build.is_some_and(str::is_empty) {
            return Err("expected \"<name> <version>[@<build>]\"".into());
        }
        Ok(OsVersion {
            name: name.trim().to_string(),
            version: version.to_string(),
            build: build.map(str::to_string),
        })
    }
}

impl std::fmt::Display for OsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.version)?;
        if let Some(b) = &self.build {
            write!(f, "@{b}")?;
        }
        Ok(())
    }
}

/// Key of the remote target's host part in the target document on the TargetBus (and in the
/// store). Absent: a local target (the host part follows the current state). `null`: a remote
/// target without a (usable) hostapp. An object: a [`HostTarget`].
pub const HOSTAPP_KEY: &str = "hostapp";

/// Service name the host app is reported with (spec §5.2).
pub const HOSTAPP_SERVICE: &str = "hostapp";

/// The host release the remote target wants (spec §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTarget {
    /// The hostapp's app uuid.
    pub app: String,
    /// Its release uuid (`--release-commit`).
    pub release: String,
    /// The host OS image (`--target-image-uri`), as the cloud gave it.
    pub image: String,
    /// `io.balena.private.hostapp.board-rev`: compared with the running OS build.
    pub build: String,
    /// `io.balena.private.updater`: the image holding the updater scripts (normalised).
    pub updater: String,
}

/// Where the host part of a target stands (spec §9), re-derived at every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    /// Known, not installed.
    Created,
    /// The updater succeeded: waiting for the reboot into it.
    Installed,
    /// The running OS build.
    Running,
}

/// A known host release as `/v3/device` shows it under `host.releases` (spec §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRelease {
    pub app: String,
    pub image: String,
    pub build: String,
    pub updater: String,
    pub status: HostStatus,
    pub install_attempts: u32,
}

/// How the host part of the target being sought stands, for `/v3/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostPhase {
    /// Nothing to do (no target, a local target, or the wanted release runs).
    #[default]
    Idle,
    /// An install runs or will be retried.
    Working,
    /// Deliberately not reached (spec §4.3 "aborted"): no hostapp in the remote target, an
    /// installed release waiting for the reboot, or too many failed installs.
    Aborted,
}

/// What HostActor publishes (only when a host OS version is configured).
#[derive(Debug, Clone, PartialEq)]
pub struct HostState {
    pub meta: OsVersion,
    /// Known host releases by release uuid.
    pub releases: BTreeMap<String, HostRelease>,
    /// The target sequence number `phase` is about.
    pub seq: u64,
    pub phase: HostPhase,
}

impl HostState {
    /// `host` of the Device document: `{meta: {name, version, build}, releases}`.
    pub fn document(&self) -> Value {
        let mut meta = json!({"name": self.meta.name, "version": self.meta.version});
        if let Some(b) = &self.meta.build {
            meta["build"] = json!(b);
        }
        json!({"meta": meta, "releases": self.releases})
    }
}

/// The repository of an image reference, without tag or digest (what reports show).
pub fn repository(image: &str) -> &str {
    let name = image.split_once('@').map_or(image, |(n, _)| n);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_drops_tag_and_digest_but_not_a_registry_port() {
        assert_eq!(
            repository("registry:5000/hostos:6.1"),
            "registry:5000/hostos"
        );
        assert_eq!(repository("registry:5000/hostos"), "registry:5000/hostos");
        assert_eq!(
            repository("registry2.example.com/v2/abc@sha256:0123"),
            "registry2.example.com/v2/abc"
        );
        assert_eq!(repository("alpine:latest"), "alpine");
    }

    #[test]
    fn the_document_has_meta_and_releases() {
        let s = HostState {
            meta: OsVersion::parse("balenaOS 6.0.39@rev-1").unwrap(),
            releases: BTreeMap::from([(
                "r1".to_string(),
                HostRelease {
                    app: "host-app".into(),
                    image: "reg/hostos".into(),
                    build: "rev-2".into(),
                    updater: "reg/updater:latest".into(),
                    status: HostStatus::Created,
                    install_attempts: 1,
                },
            )]),
            seq: 1,
            phase: HostPhase::Working,
        };
        assert_eq!(
            s.document(),
            json!({"meta": {"name": "balenaOS", "version": "6.0.39", "build": "rev-1"},
                "releases": {"r1": {"app": "host-app", "image": "reg/hostos", "build": "rev-2",
                    "updater": "reg/updater:latest", "status": "created", "install_attempts": 1}}})
        );
    }
}
