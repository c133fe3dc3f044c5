//! Mapping between the model and the engine's objects (bollard types): the create bodies of
//! service containers, networks and volumes (spec/helios-api-v3.md §6), and the read-back of
//! supervised objects into the model. Pure functions: no engine calls.
//!
//! Engine naming (spec/helios-api-v3.md §6): a container is `<service>_<release>`, a network
//! or volume `<name>_<app uuid>`, and all of them carry `io.balena.supervised` (containers
//! labelled `io.resin.supervised` are read as supervised too) with the app uuid, id and name
//! and the service name and id. A supervised container without an app-uuid label reads back
//! under app `10c401`, one whose name is not `<service>_<release>` under release
//! `10ca12e1ea5e` (spec §6.1), which no target has. Every service container gets the
//! app's update-lock directory bound at `/tmp/balena` and `/tmp/resin`.
//!
//! Deliberate differences from upstream: the normalised service config is kept whole in one
//! label (below) instead of upstream's per-field bookkeeping labels, and what can change
//! without recreating a container is read back from the engine and compared. A release change
//! with an identical service config therefore recreates the container (its name holds the
//! release; upstream renames it).
//!
//! A container's normalised `ServiceConfig` is stored as JSON in the `io.balena.private.config`
//! label and read back from there, so the read-back equals the target exactly. What can change
//! by hand without recreating the container is checked against the inspect data and, when it
//! differs, the engine's value is returned so the planner sees the drift: the restart policy
//! (`docker update`), network membership (`docker network connect/disconnect`) and the image
//! (always taken from the engine). A supervised container without a readable config label
//! reads back with the `io.balena.private.config-unreadable` label, which no valid target can
//! carry, so it never equals a target and gets recreated.
//!
//! Networks keep their IPAM configuration and options in `io.balena.private.ipam.config` /
//! `.options` (the engine fills in subnets it picked) and the names of the driver options
//! they were created with in `io.balena.private.driver-opts` (the engine may add its own).
//!
//! Submodules: labels (and naming), create (model → engine), readback (drift), networks, volumes.
mod create;
mod labels;
mod networks;
mod readback;
#[cfg(test)]
mod tests;
mod volumes;

pub use create::{
    container_create_body, container_environment, injected_environment, ServiceContext,
};
pub use labels::{
    update_lock_dir, APP_ID_LABEL, APP_NAME_LABEL, APP_UUID_LABEL, CONFIG_LABEL, DEPENDS_ON_LABEL,
    DRIVER_OPTS_LABEL, IPAM_CONFIG_LABEL, IPAM_OPTIONS_LABEL, LOCK_TARGETS, NETWORK_NAME_LABEL,
    SERVICE_ID_LABEL, SERVICE_NAME_LABEL, SUPERVISED_LABEL, UNKNOWN_APP, UNKNOWN_RELEASE,
    UNREADABLE_CONFIG_LABEL, VOLUME_NAME_LABEL,
};
pub use networks::{network_create_body, read_network};
pub use readback::{read_container, ContainerReadBack};
pub use volumes::{read_volume, volume_create_body};
