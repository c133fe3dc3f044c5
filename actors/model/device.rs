//! The planner's state model (mahler `State`): the device as helios manages it, both as read
//! from the engine (current) and as wanted (target). Engine objects are named per
//! spec/helios-api-v3.md §6.1: container `<service>_<release>`, network and volume
//! `<name>_<app uuid>`.
use mahler::state::{Map, State};

use super::compose::{NetworkConfig, ServiceConfig, VolumeConfig};

/// The whole device.
#[derive(State, Debug, Clone, PartialEq, Default)]
#[mahler(derive(PartialEq, Default))]
pub struct Device {
    /// Device name from the last remote target.
    pub name: Option<String>,
    /// Images by normalised reference (`repo:tag` or `repo@sha256:…`).
    pub images: Map<String, Image>,
    /// Apps by app uuid.
    pub apps: Map<String, App>,
}

/// An image on the engine. Nothing about it is wanted beyond its presence.
#[derive(State, Debug, Clone, PartialEq, Default)]
#[mahler(derive(PartialEq))]
pub struct Image {
    /// Engine image id (`sha256:…`), once pulled.
    #[mahler(internal)]
    pub oci_id: Option<String>,
    /// 0–100 while pulling; 100 once present.
    #[mahler(internal)]
    pub download_progress: u8,
}

#[derive(State, Debug, Clone, PartialEq, Default)]
#[mahler(derive(PartialEq))]
pub struct App {
    /// Legacy numeric app id (0 allowed).
    pub id: u32,
    pub name: Option<String>,
    /// At most one release in a target; two while an update is in progress.
    pub releases: Map<String, Release>,
    /// Networks by logical name (engine name `<name>_<app uuid>`), shared by its releases.
    pub networks: Map<String, Network>,
    /// Volumes by logical name (engine name `<name>_<app uuid>`), shared by its releases.
    pub volumes: Map<String, Volume>,
}

#[derive(State, Debug, Clone, PartialEq, Default)]
#[mahler(derive(PartialEq))]
pub struct Release {
    pub services: Map<String, Service>,
}

/// A service: present in the current state exactly when its container exists.
#[derive(State, Debug, Clone, PartialEq, Default)]
#[mahler(derive(PartialEq))]
pub struct Service {
    pub id: u32,
    /// Normalised image reference (a key of `Device::images`).
    pub image: String,
    /// Wanted running. In the current state: the container runs, or it ran and exited and is
    /// left to the engine's restart policy (helios starts a container only once).
    pub running: bool,
    pub config: ServiceConfig,
    /// What the engine says about the container; never part of a target.
    #[mahler(internal)]
    pub container: Option<Container>,
}

/// Engine facts about a service container (spec §4.4 `oci`).
#[derive(State, Debug, Clone, PartialEq, Default)]
#[mahler(derive(PartialEq))]
pub struct Container {
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// created | running | stopping | stopped | dead
    pub status: String,
    pub exit_code: i64,
    /// none | starting | healthy | unhealthy
    pub health: String,
    /// The engine started it at least once.
    pub started: bool,
}

#[derive(State, Debug, Clone, PartialEq, Default)]
#[mahler(derive(PartialEq))]
pub struct Network {
    pub config: NetworkConfig,
}

#[derive(State, Debug, Clone, PartialEq, Default)]
#[mahler(derive(PartialEq))]
pub struct Volume {
    pub config: VolumeConfig,
}

/// Engine name of a service container.
pub fn container_name(service: &str, release: &str) -> String {
    format!("{service}_{release}")
}

/// Engine name of an app's network or volume.
pub fn scoped_name(name: &str, app_uuid: &str) -> String {
    format!("{name}_{app_uuid}")
}
