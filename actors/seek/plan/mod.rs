//! The planner: mahler jobs over the `Device` model. The pure part of each task decides what
//! may happen (the update strategies, `depends_on`, locks, "download before kill" all live in
//! its preconditions); only the `with_io` effects touch the engine, the store or the lock files.
//! Without a [`Effects`] resource the effects do nothing, so plans can be computed and tested
//! without IO.
//!
//! Update strategies (the `io.balena.update.strategy` label) are preconditions:
//! - `download-then-kill` (the default) removes the old container only once every image of
//!   the app's target release is present;
//! - `kill-then-download` and `delete-then-download` pull only after the old container is gone
//!   (the latter also after the unused images are removed);
//! - `hand-over` creates and starts the new container first, waits for
//!   `/tmp/balena/handover-complete` (the app's lock dir as the containers see it) or the
//!   hand-over timeout, then removes the old one. A new service the target wants stopped, or
//!   one whose network or volume must be recreated while the old container holds it, cannot
//!   take over: it goes as download-then-kill (found by the planner property tests).
//!
//! A release change recreates every container, config identical or not (the name holds the release;
//! upstream renames instead); within a release a changed config or image, or a changed network or
//! volume of the service, removes the container for the create job to make again (with
//! download-then-kill once the app's images are present). A network or volume whose config changes
//! is recreated by its own job, which first removes the containers holding it (once the app's
//! images are present), also those whose own config is unchanged, which no service job would visit;
//! and a container is created only on networks and volumes that have their target config, and after
//! its `network_mode: service:<name>` peer exists.
//!
//! Starting waits for `depends_on`: the dependency runs with its target config (a
//! precondition), and `service_healthy` / `service_completed_successfully` are waited for in
//! the effect, bounded (5 minutes, then the step fails and counts toward giving up). A
//! container starts only once every image of its app is present. Stopping or removing a
//! container takes the app's update lock first (ports/locks.rs); a user lock fails the step
//! (the app shows `locked: true`, the apply retries without counting it) unless `force`.
//! Starting or creating takes no lock.
//!
//! Images: only those helios pulled (recorded under `images` in the store, after the pull
//! finished), those the target wants and those of supervised containers are in the model, so
//! only those are ever removed, and only when no supervised container uses them; an image a
//! foreign container uses is never removed (seek/current.rs).
//!
//! Files: effects.rs (the `Effects` resource, `StepError`, the step runner), query.rs (pure
//! queries over the model), the jobs per object kind: images.rs, apps.rs (and releases),
//! networks_volumes.rs, services.rs; tests.rs and props.rs are its tests.
mod apps;
mod effects;
mod images;
mod networks_volumes;
mod query;
mod services;

use mahler::extract::Args;
use mahler::job::{create, delete, none, update};
use mahler::worker::{Uninitialized, Worker};

use crate::model::device::{container_name, scoped_name, Device};

use apps::{create_app, create_release, remove_app, remove_release, update_app};
use images::{pull_image, remove_image};
use networks_volumes::{
    create_network, create_volume, recreate_network, recreate_volume, remove_network, remove_volume,
};
use services::{
    create_container, kill_container, kill_service, recreate_service, remove_container,
    start_container, stop_container, wait_handover,
};

pub use effects::{Effects, StepError};
pub use query::target_images;

/// Store key of the app records (id and name of every app, also those without containers).
pub const APPS_KEY: &str = crate::ports::store::keys::APPS;
/// Store key of the images helios pulled (only those are removed when unused).
pub const IMAGES_KEY: &str = crate::ports::store::keys::IMAGES;

/// The worker template: every job at its route, with descriptions that say what and why.
pub fn worker() -> Worker<Device, Uninitialized> {
    Worker::new()
        .jobs(
            "/images/{image}",
            [
                create(pull_image).with_description(|Args(i): Args<String>| {
                    format!("pull image '{i}' (wanted by the target)")
                }),
                delete(remove_image).with_description(|Args(i): Args<String>| {
                    format!("remove image '{i}' (no longer used)")
                }),
            ],
        )
        .jobs(
            "/apps/{app}",
            [
                create(create_app).with_description(|Args(a): Args<String>| {
                    format!("record app '{a}' (new in the target)")
                }),
                update(update_app).with_description(|Args(a): Args<String>| {
                    format!("update app '{a}' metadata (id or name changed)")
                }),
                delete(remove_app).with_description(|Args(a): Args<String>| {
                    format!("forget app '{a}' (gone from the target)")
                }),
            ],
        )
        .jobs(
            "/apps/{app}/networks/{net}",
            [
                create(create_network).with_description(|Args((a, n)): Args<(String, String)>| {
                    format!(
                        "create network '{}' (declared by the target)",
                        scoped_name(&n, &a)
                    )
                }),
                delete(remove_network).with_description(|Args((a, n)): Args<(String, String)>| {
                    format!("remove network '{}' (gone or changed)", scoped_name(&n, &a))
                }),
                update(recreate_network),
            ],
        )
        .jobs(
            "/apps/{app}/volumes/{vol}",
            [
                create(create_volume).with_description(|Args((a, v)): Args<(String, String)>| {
                    format!(
                        "create volume '{}' (declared by the target)",
                        scoped_name(&v, &a)
                    )
                }),
                delete(remove_volume).with_description(|Args((a, v)): Args<(String, String)>| {
                    format!(
                        "remove volume '{}' (app removed or volume changed)",
                        scoped_name(&v, &a)
                    )
                }),
                update(recreate_volume),
            ],
        )
        .jobs(
            "/apps/{app}/releases/{rel}",
            [
                create(create_release).with_description(|Args((a, r)): Args<(String, String)>| {
                    format!("begin release '{r}' of app '{a}' (new target release)")
                }),
                delete(remove_release).with_description(|Args((a, r)): Args<(String, String)>| {
                    format!("end release '{r}' of app '{a}' (replaced or removed)")
                }),
            ],
        )
        .jobs(
            "/apps/{app}/releases/{rel}/services/{svc}",
            [
                create(create_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "create container '{}' (service '{s}' of the target release)",
                            container_name(&s, &r)
                        )
                    },
                ),
                update(start_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "start container '{}' (target wants it running)",
                            container_name(&s, &r)
                        )
                    },
                ),
                update(stop_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "stop container '{}' (target wants it stopped)",
                            container_name(&s, &r)
                        )
                    },
                ),
                update(recreate_service),
                delete(kill_service),
                none(kill_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!("stop container '{}' (to remove it)", container_name(&s, &r))
                    },
                ),
                none(remove_container).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "remove container '{}' (replaced, changed or gone)",
                            container_name(&s, &r)
                        )
                    },
                ),
                none(wait_handover).with_description(
                    |Args((_, r, s)): Args<(String, String, String)>| {
                        format!(
                            "wait for the hand-over of '{}' (hand-over strategy)",
                            container_name(&s, &r)
                        )
                    },
                ),
            ],
        )
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
