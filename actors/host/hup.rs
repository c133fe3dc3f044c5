//! Host OS updates (spec/helios-api-v3.md §9): the host release records, the pure decision of
//! what to do about the host part of a target, and the install itself (pull the updater, copy
//! its `/app` out of a never-started `balenahup` container, run `entry.sh` as the transient
//! unit `os-update.service`, leave the breadcrumb). HostActor (mod.rs) sequences them.
//!
//! Only with a host OS version configured. **The host part of the target** travels on the
//! TargetBus (so it is persisted and survives a restart) under the key `hostapp` beside the
//! planner's target, which ignores it: an object for a remote target with a usable hostapp
//! (model/cloud.rs extracts it), `null` for a remote target without one, absent for a local
//! target. PollActor compares the host part too, so a new OS release with unchanged apps is
//! published. Local `/v3` posts rebuild the target from the planner's type and so drop the key:
//! a local apply never touches the host OS.
//!
//! **Records** (store key `host/releases`, release → app, image, build, updater,
//! install_attempts, since_ms): the target release is recorded, its metadata updated, the
//! records of other releases removed; attempts reset when the record is more than 24 h old.
//! The status is derived at every read: `running` if the build is the configured OS build,
//! else `installed` if `<runtime dir>/balenahup-<release>-breadcrumb` exists, else `created`.
//!
//! **Decision** ([`decide`], pure): a local target or the release running → idle; a remote
//! target without hostapp, the release `installed` (waiting for a reboot), or `created` with 3
//! attempts → aborted; `created` with fewer → install. HostActor evaluates it on every target,
//! after every install and on timers (retry, wait, the 24 h reset after giving up).
//!
//! **Install** (HostActor): first what it needs, each missing one a `decision=wait` (WARN
//! once, then DEBUG; DEBUG only before the first bus probe and for the engine, which Seek
//! reports) with a new look after `seek.local_retry_interval_ms` or at the next CapsBus
//! change, and no attempt counted: systemd1 on the bus, the engine, the update locks of every
//! app on the device or in the target (a user lock waits unless the target request had
//! `force`; a `/v1/update` re-apply's force does not reach HostActor). The locks are kept
//! (`Locks::keep`) until the install ends: Seek's `release_all` at the end of an apply leaves
//! them, and a restarted HostActor unkeeps what a cut-short install kept. The install does not
//! wait for Seek's apply: both run side by side, Seek's own lock takes being no-ops on the kept
//! locks. Then the attempt is counted and stored (flushed) before anything runs, and
//! [`install`] removes an old `balenahup` container, pulls the updater (anonymously, like app
//! images), creates `balenahup` from it (never started), downloads its `/app` as a tar (at most
//! 256 MiB), removes the container and the updater image, unpacks the tar into a staging dir
//! (paths outside it refused, `entry.sh` required) swapped in as `<runtime dir>/balenahup/`,
//! runs `entry.sh --app-uuid … --release-commit … --target-image-uri …` from there (as the
//! host sees it) as the transient unit `os-update.service` (bounded at 2 h), and writes the
//! breadcrumb on exit status 0. A failure is `decision=retry` (`fail` on the third attempt, then
//! `decision=give_up`); a bus failure also re-probes the bus. Nothing of this stops the actor.
//!
//! **What readers see**: HostActor publishes `CurrentState::host` {meta, releases, seq, phase}.
//! `/v3/device` adds `host` (spec §4.4); the report adds the host app (§5.2: one release per
//! record, service `hostapp`, the running build `Running`/`done` with `release_uuid`, others
//! `Installing`/`applying changes` or `aborted`); `CurrentState::loop_status` turns Seek's
//! `done` into `applying changes` while the host part is being worked on or not yet looked
//! at, and into `aborted` when it is deliberately not reached (§4.3). Every reader of the
//! status (`/v3/status`, `/v1`, `/v2`, the report, `/metrics`) goes through it.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::host::{HostPhase, HostRelease, HostStatus, HostTarget, HOSTAPP_KEY};
use crate::ports::dbus::{Bus, BusError, TransientUnit};
use crate::ports::engine::{Engine, EngineError};

/// At most this many installs of one release (then `aborted` until the count resets).
pub const MAX_ATTEMPTS: u32 = 3;
/// A record older than this starts counting its attempts again (spec §9).
pub const ATTEMPTS_RESET: Duration = Duration::from_secs(24 * 3600);
/// The transient unit the updater runs as.
pub const UNIT: &str = "os-update.service";
/// The container the updater scripts are copied out of (created, never started).
pub const CONTAINER: &str = "balenahup";
/// Store key of the host release records (one map, release uuid → [`Record`]).
pub const RECORDS_KEY: &str = crate::ports::store::keys::HOST_RELEASES;
/// How long the updater may run before it counts as failed.
pub const UNIT_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// Largest updater `/app` accepted.
const MAX_APP_BYTES: usize = 256 << 20;

/// A known host release as stored (the status is re-derived at every read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub app: String,
    pub image: String,
    pub build: String,
    pub updater: String,
    pub install_attempts: u32,
    /// When the record was created, or its attempts last reset (ms since the epoch).
    pub since_ms: u64,
}

pub type Records = BTreeMap<String, Record>;

/// What a target says about the host OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostWant {
    /// A local target (no host part): the host follows the current state.
    Local,
    /// A remote target; None when it has no (usable) hostapp.
    Remote(Option<HostTarget>),
}

impl HostWant {
    /// Reads the host part of a target document (see [`HOSTAPP_KEY`]).
    pub fn of(target: &Value) -> Result<HostWant, serde_json::Error> {
        match target.get(HOSTAPP_KEY) {
            None => Ok(HostWant::Local),
            Some(v) => Ok(HostWant::Remote(serde_json::from_value(v.clone())?)),
        }
    }
}

/// `running` if the build is the running OS build, else `installed` if the breadcrumb exists,
/// else `created` (spec §9).
pub fn status(build: &str, os_build: Option<&str>, breadcrumb: bool) -> HostStatus {
    if os_build == Some(build) {
        HostStatus::Running
    } else if breadcrumb {
        HostStatus::Installed
    } else {
        HostStatus::Created
    }
}

/// Brings the records in line with the target release: *initialise* it, *update metadata*
/// when only the updater (or image) changed, reset its attempts when the record is older than
/// [`ATTEMPTS_RESET`], and *remove* records of releases no longer targeted. Returns whether
/// anything changed.
pub fn reconcile(records: &mut Records, target: &HostTarget, now_ms: u64) -> bool {
    let before = records.clone();
    records.retain(|rel, _| *rel == target.release);
    let r = records
        .entry(target.release.clone())
        .or_insert_with(|| Record {
            app: target.app.clone(),
            image: target.image.clone(),
            build: target.build.clone(),
            updater: target.updater.clone(),
            install_attempts: 0,
            since_ms: now_ms,
        });
    r.app.clone_from(&target.app);
    r.image.clone_from(&target.image);
    r.build.clone_from(&target.build);
    r.updater.clone_from(&target.updater);
    if now_ms.saturating_sub(r.since_ms) > ATTEMPTS_RESET.as_millis() as u64 {
        r.install_attempts = 0;
        r.since_ms = now_ms;
    }
    *records != before
}

/// What to do about the host part of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Idle { reason: &'static str },
    /// Run the updater; `attempt` is 1-based.
    Install { attempt: u32 },
    /// The release is installed: waiting for the reboot into it.
    AwaitReboot,
    /// Too many failed installs.
    GiveUp { attempts: u32 },
    /// The remote target has no hostapp: the device keeps its OS.
    NoHostapp,
}

impl Decision {
    pub fn phase(&self) -> HostPhase {
        match self {
            Decision::Idle { .. } => HostPhase::Idle,
            Decision::Install { .. } => HostPhase::Working,
            Decision::AwaitReboot | Decision::GiveUp { .. } | Decision::NoHostapp => {
                HostPhase::Aborted
            }
        }
    }
}

/// Decides from the target's host part and the target release's status and attempts. Install
/// only from `created` with fewer than [`MAX_ATTEMPTS`] attempts (spec §9).
pub fn decide(want: Option<&HostWant>, target_release: Option<(HostStatus, u32)>) -> Decision {
    match want {
        None => Decision::Idle {
            reason: "no target yet",
        },
        Some(HostWant::Local) => Decision::Idle {
            reason: "local target: the host OS stays as it is",
        },
        Some(HostWant::Remote(None)) => Decision::NoHostapp,
        Some(HostWant::Remote(Some(_))) => match target_release {
            Some((HostStatus::Running, _)) => Decision::Idle {
                reason: "the target host release runs",
            },
            Some((HostStatus::Installed, _)) => Decision::AwaitReboot,
            Some((HostStatus::Created, n)) if n >= MAX_ATTEMPTS => Decision::GiveUp { attempts: n },
            Some((HostStatus::Created, n)) => Decision::Install { attempt: n + 1 },
            // reconcile() always records the target release first.
            None => Decision::Idle {
                reason: "the target host release is not recorded",
            },
        },
    }
}

/// Where the files of an install are.
#[derive(Debug, Clone, PartialEq)]
pub struct Paths {
    /// The runtime dir as this process sees it.
    pub runtime_dir: PathBuf,
    /// The same dir as the host (and so systemd) sees it.
    pub host_runtime_dir: PathBuf,
}

impl Paths {
    /// `<runtime dir>/balenahup-<release>-breadcrumb`.
    pub fn breadcrumb(&self, release: &str) -> PathBuf {
        self.runtime_dir
            .join(format!("balenahup-{release}-breadcrumb"))
    }

    /// `<runtime dir>/balenahup/`: the extracted updater scripts.
    pub fn scripts(&self) -> PathBuf {
        self.runtime_dir.join("balenahup")
    }

    /// The unit systemd runs: `<host runtime dir>/balenahup/entry.sh --app-uuid <app>
    /// --release-commit <release> --target-image-uri <image>` in `<host runtime dir>/balenahup`.
    pub fn unit(&self, t: &HostTarget) -> TransientUnit {
        let dir = self.host_runtime_dir.join("balenahup");
        TransientUnit {
            name: UNIT.to_string(),
            argv: vec![
                dir.join("entry.sh").display().to_string(),
                "--app-uuid".into(),
                t.app.clone(),
                "--release-commit".into(),
                t.release.clone(),
                "--target-image-uri".into(),
                t.image.clone(),
            ],
            working_directory: dir.display().to_string(),
        }
    }
}

/// The host releases as `/v3/device` shows them, statuses derived now.
pub fn releases(
    records: &Records,
    os_build: Option<&str>,
    paths: &Paths,
) -> BTreeMap<String, HostRelease> {
    records
        .iter()
        .map(|(rel, r)| {
            let st = status(&r.build, os_build, paths.breadcrumb(rel).exists());
            (
                rel.clone(),
                HostRelease {
                    app: r.app.clone(),
                    image: r.image.clone(),
                    build: r.build.clone(),
                    updater: r.updater.clone(),
                    status: st,
                    install_attempts: r.install_attempts,
                },
            )
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum HupError {
    #[error("{step}")]
    Engine {
        step: &'static str,
        #[source]
        source: EngineError,
    },
    #[error("copying the updater scripts to {}", .path.display())]
    Copy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the updater image has no /app/entry.sh")]
    NoEntry,
    #[error("running {UNIT}")]
    Bus {
        #[source]
        source: BusError,
    },
    #[error("{UNIT} ended {} with status {status}", if *.failed { "failed" } else { "inactive" })]
    Exit { failed: bool, status: i32 },
}

impl HupError {
    /// The bus failed (rather than the updater): worth probing it again.
    pub fn is_bus(&self) -> bool {
        matches!(self, HupError::Bus { .. })
    }
}

fn engine(step: &'static str) -> impl FnOnce(EngineError) -> HupError {
    move |source| HupError::Engine { step, source }
}

/// One install attempt (the attempt is already counted): fetch the updater scripts, run them as
/// `os-update.service`, and on success leave the breadcrumb.
pub async fn install(
    engine_: &Engine,
    bus: &Bus,
    paths: &Paths,
    target: &HostTarget,
) -> Result<(), HupError> {
    fetch_scripts(engine_, paths, &target.updater).await?;
    let exit = bus
        .run_transient(&paths.unit(target), UNIT_TIMEOUT)
        .await
        .map_err(|source| HupError::Bus { source })?;
    if !exit.success() {
        return Err(HupError::Exit {
            failed: exit.failed,
            status: exit.exec_main_status,
        });
    }
    let crumb = paths.breadcrumb(&target.release);
    std::fs::write(&crumb, b"").map_err(|source| HupError::Copy {
        path: crumb,
        source,
    })
}

/// Removes an old `balenahup` container, pulls the updater, creates `balenahup` from it (never
/// started), copies its `/app` to `<runtime dir>/balenahup/` and removes the container and
/// the image again.
async fn fetch_scripts(e: &Engine, paths: &Paths, updater: &str) -> Result<(), HupError> {
    e.remove_container(CONTAINER)
        .await
        .map_err(engine("removing an old balenahup container"))?;
    e.pull(updater, |_| {})
        .await
        .map_err(engine("pulling the updater image"))?;
    let body = bollard::models::ContainerCreateBody {
        image: Some(updater.to_string()),
        cmd: Some(vec!["/app/entry.sh".into()]),
        ..Default::default()
    };
    e.create_container(CONTAINER, body, vec![])
        .await
        .map_err(engine("creating the balenahup container"))?;
    let copied = copy_app(e, paths.scripts()).await;
    let removed = e.remove_container(CONTAINER).await;
    if let Err(err) = e.remove_image(updater).await {
        log::debug!(image:% = updater, error:% = crate::ErrorChain(&err), decision = "continue";
            "Updater image not removed");
    }
    copied?;
    removed.map_err(engine("removing the balenahup container"))?;
    Ok(())
}

/// Streams the engine's archive of `/app` into [`unpack_app`] as it arrives (never held whole),
/// refusing more than [`MAX_APP_BYTES`].
async fn copy_app(e: &Engine, dest: PathBuf) -> Result<(), HupError> {
    let opts = bollard::query_parameters::DownloadFromContainerOptionsBuilder::default()
        .path("/app")
        .build();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let unpack = {
        let dest = dest.clone();
        tokio::task::spawn_blocking(move || {
            unpack_app(
                ChannelReader {
                    rx,
                    chunk: Bytes::new(),
                },
                &dest,
            )
        })
    };
    let mut stream = e.docker().download_from_container(CONTAINER, Some(opts));
    let mut total = 0usize;
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(source) => {
                failed = Some(HupError::Engine {
                    step: "copying /app out of the balenahup container",
                    source: EngineError::Call {
                        call: "download from container",
                        source,
                    },
                });
                break;
            }
        };
        total += chunk.len();
        if total > MAX_APP_BYTES {
            failed = Some(HupError::Copy {
                path: PathBuf::from("/app"),
                source: std::io::Error::other(format!(
                    "the updater's /app is larger than {} MiB",
                    MAX_APP_BYTES >> 20
                )),
            });
            break;
        }
        // The unpacker gave up (its error is the answer): stop reading.
        if tx.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    if failed.is_some() {
        // The unpacker sees a read error, not the end: nothing half-copied is kept.
        let _ = tx
            .send(Err(std::io::Error::other("the copy of /app was cut off")))
            .await;
    }
    drop(tx);
    let unpacked = unpack.await.map_err(|e| HupError::Copy {
        path: dest,
        source: std::io::Error::other(e.to_string()),
    })?;
    match failed {
        Some(e) => Err(e),
        None => unpacked,
    }
}

/// The tar stream as the blocking unpacker reads it: chunks from [`copy_app`], an error if the
/// copy was cut off, the end when it is done.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Unpacks the engine's archive of `/app` (entries under `app/`) so that `dest` holds what
/// `/app` held; the previous scripts are replaced whole, and only once the whole archive was
/// read. Regular files, directories and links staying inside `app/` only: setuid, setgid and
/// sticky bits are dropped (the scripts run as root on the host), and a device, FIFO, sparse
/// file or a link leading out refuses the archive.
pub fn unpack_app(tar: impl Read, dest: &Path) -> Result<(), HupError> {
    let copy = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HupError::Copy { path, source }
    };
    let staging = dest.with_extension("new");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(copy(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(copy(&staging))?;
    let unpacked = unpack_entries(tar, &staging);
    if let Err(source) = unpacked {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(HupError::Copy {
            path: staging,
            source,
        });
    }
    let app = staging.join("app");
    if !app.join("entry.sh").is_file() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(HupError::NoEntry);
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(copy(dest))?;
    }
    std::fs::rename(&app, dest).map_err(copy(dest))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

fn unpack_entries(tar: impl Read, staging: &Path) -> std::io::Result<()> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(tar);
    // Mode bits but setuid/setgid/sticky (tar keeps `mode & 0o777` without this).
    archive.set_preserve_permissions(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        let refuse = |why: &str| {
            log::warn!(path:% = path.display(), decision = "refuse", reason = why;
                "Updater archive refused");
            Err(std::io::Error::other(format!("{}: {why}", path.display())))
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink | EntryType::Link => {
                let Some(target) = entry.link_name()?.map(|t| t.into_owned()) else {
                    return refuse("a link without a target");
                };
                // A symlink resolves from its own directory, a hard link from the archive root.
                let base = match kind {
                    EntryType::Symlink => path.parent().unwrap_or(Path::new("")).to_path_buf(),
                    _ => PathBuf::new(),
                };
                if !stays_in_app(&base.join(&target)) {
                    return refuse("a link leading out of /app");
                }
            }
            _ => return refuse("only files, directories and links inside /app are copied"),
        }
        let mode = entry.header().mode().unwrap_or(0);
        if kind != EntryType::Directory && mode & 0o7000 != 0 {
            log::info!(path:% = path.display(), mode:% = format_args!("{mode:o}"), decision = "strip",
                reason = "setuid, setgid and sticky bits are not copied"; "Updater file mode reduced");
        }
        // `unpack_in` skips entries that would land outside `staging`.
        entry.unpack_in(staging)?;
    }
    // Read to the end: a copy cut off after the last entry still fails.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())?;
    Ok(())
}

/// Whether an archive path (relative, possibly with `..`) stays below `app/`.
fn stays_in_app(path: &Path) -> bool {
    use std::path::Component;
    let mut depth: Vec<&std::ffi::OsStr> = vec![];
    for c in path.components() {
        match c {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    depth.first().is_some_and(|d| *d == "app")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(release: &str) -> HostTarget {
        HostTarget {
            app: "host-app".into(),
            release: release.into(),
            image: "reg/hostos@sha256:ab".into(),
            build: "rev-2".into(),
            updater: "reg/updater:latest".into(),
        }
    }

    #[test]
    fn status_is_running_then_installed_then_created() {
        assert_eq!(status("rev-2", Some("rev-2"), true), HostStatus::Running);
        assert_eq!(status("rev-2", Some("rev-1"), true), HostStatus::Installed);
        assert_eq!(status("rev-2", Some("rev-1"), false), HostStatus::Created);
        assert_eq!(status("rev-2", None, false), HostStatus::Created);
    }

    #[test]
    fn installs_only_from_created_with_fewer_than_three_attempts() {
        let remote = HostWant::Remote(Some(target("r2")));
        assert_eq!(
            decide(Some(&remote), Some((HostStatus::Created, 0))),
            Decision::Install { attempt: 1 }
        );
        assert_eq!(
            decide(Some(&remote), Some((HostStatus::Created, 2))),
            Decision::Install { attempt: 3 }
        );
        let give_up = decide(Some(&remote), Some((HostStatus::Created, 3)));
        assert_eq!(give_up, Decision::GiveUp { attempts: 3 });
        assert_eq!(give_up.phase(), HostPhase::Aborted);
        let reboot = decide(Some(&remote), Some((HostStatus::Installed, 1)));
        assert_eq!(
            (reboot.clone(), reboot.phase()),
            (Decision::AwaitReboot, HostPhase::Aborted)
        );
        let running = decide(Some(&remote), Some((HostStatus::Running, 0)));
        assert_eq!(running.phase(), HostPhase::Idle);
    }

    #[test]
    fn local_targets_keep_the_host_and_remote_ones_without_hostapp_abort() {
        assert_eq!(decide(None, None).phase(), HostPhase::Idle);
        assert_eq!(
            decide(Some(&HostWant::Local), Some((HostStatus::Created, 0))).phase(),
            HostPhase::Idle,
            "a local apply never triggers an OS update"
        );
        let none = decide(Some(&HostWant::Remote(None)), None);
        assert_eq!(
            (none.clone(), none.phase()),
            (Decision::NoHostapp, HostPhase::Aborted)
        );
        assert_eq!(
            HostWant::of(&serde_json::json!({"apps": {}})).unwrap(),
            HostWant::Local
        );
        assert_eq!(
            HostWant::of(&serde_json::json!({"apps": {}, "hostapp": null})).unwrap(),
            HostWant::Remote(None)
        );
        let t = serde_json::to_value(target("r2")).unwrap();
        assert_eq!(
            HostWant::of(&serde_json::json!({"hostapp": t})).unwrap(),
            HostWant::Remote(Some(target("r2")))
        );
    }

    #[test]
    fn reconcile_initialises_updates_metadata_removes_others_and_resets_after_a_day() {
        let mut recs = Records::new();
        assert!(reconcile(&mut recs, &target("r1"), 1000));
        recs.get_mut("r1").unwrap().install_attempts = 2;
        assert!(
            !reconcile(&mut recs, &target("r1"), 2000),
            "nothing changed"
        );
        let mut newer = target("r1");
        newer.updater = "reg/updater:2".into();
        assert!(reconcile(&mut recs, &newer, 3000));
        assert_eq!(recs["r1"].updater, "reg/updater:2");
        assert_eq!(recs["r1"].install_attempts, 2, "metadata only");
        let day = ATTEMPTS_RESET.as_millis() as u64;
        assert!(reconcile(&mut recs, &newer, 1000 + day + 1));
        assert_eq!(recs["r1"].install_attempts, 0, "reset after 24 h");
        assert!(reconcile(&mut recs, &target("r2"), 5000));
        assert_eq!(
            recs.keys().collect::<Vec<_>>(),
            ["r2"],
            "untargeted releases removed"
        );
    }

    #[test]
    fn the_unit_runs_entry_sh_with_the_three_flags_in_the_host_runtime_dir() {
        let p = Paths {
            runtime_dir: "/tmp/run".into(),
            host_runtime_dir: "/tmp".into(),
        };
        let u = p.unit(&target("r2"));
        assert_eq!(u.name, "os-update.service");
        assert_eq!(
            u.argv,
            [
                "/tmp/balenahup/entry.sh",
                "--app-uuid",
                "host-app",
                "--release-commit",
                "r2",
                "--target-image-uri",
                "reg/hostos@sha256:ab"
            ]
        );
        assert_eq!(u.working_directory, "/tmp/balenahup");
        assert_eq!(
            p.breadcrumb("r2"),
            Path::new("/tmp/run/balenahup-r2-breadcrumb")
        );
    }

    #[test]
    fn unpack_app_replaces_the_scripts_and_needs_entry_sh() {
        use std::os::unix::fs::PermissionsExt;
        let archive = |files: &[(&str, &[u8], u32)]| {
            let mut b = tar::Builder::new(Vec::new());
            for (path, data, mode) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(*mode);
                h.set_cksum();
                b.append_data(&mut h, path, *data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("balenahup");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("stale"), b"x").unwrap();
        let tar = archive(&[
            ("app/entry.sh", b"#!/bin/sh\n", 0o755),
            ("app/lib/x", b"y", 0o644),
        ]);
        unpack_app(&tar[..], &dest).unwrap();
        let mode = std::fs::metadata(dest.join("entry.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(std::fs::read(dest.join("lib/x")).unwrap(), b"y");
        assert!(!dest.join("stale").exists(), "replaced whole");
        let bad = archive(&[("app/other.sh", b"", 0o755)]);
        assert!(matches!(
            unpack_app(&bad[..], &dest),
            Err(HupError::NoEntry)
        ));
        assert!(
            dest.join("entry.sh").exists(),
            "a bad archive leaves the old scripts"
        );
    }

    #[test]
    fn unpack_app_drops_setuid_and_refuses_devices_and_links_leading_out() {
        use std::os::unix::fs::PermissionsExt;
        let archive = |entries: &[(&str, tar::EntryType, &str, u32)]| {
            let mut b = tar::Builder::new(Vec::new());
            for (path, kind, link, mode) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(*kind);
                h.set_mode(*mode);
                let data: &[u8] = if *kind == tar::EntryType::Regular {
                    b"#!/bin/sh\n"
                } else {
                    b""
                };
                h.set_size(data.len() as u64);
                if !link.is_empty() {
                    h.set_link_name(link).unwrap();
                }
                h.set_cksum();
                b.append_data(&mut h, path, data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let reg = tar::EntryType::Regular;
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("balenahup");
        let ok = archive(&[
            ("app/entry.sh", reg, "", 0o4755),
            ("app/bin/tool", reg, "", 0o2750),
            ("app/bin/sh", tar::EntryType::Symlink, "tool", 0o777),
            ("app/lib", tar::EntryType::Symlink, "../app/bin", 0o777),
        ]);
        unpack_app(&ok[..], &dest).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dest.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("entry.sh"), 0o755, "setuid dropped");
        assert_eq!(mode("bin/tool"), 0o750, "setgid dropped");
        assert_eq!(
            std::fs::read_link(dest.join("bin/sh")).unwrap(),
            Path::new("tool")
        );

        for (bad, why) in [
            (("app/null", tar::EntryType::Char, "", 0o666), "device"),
            (("app/pipe", tar::EntryType::Fifo, "", 0o666), "fifo"),
            (
                (
                    "app/passwd",
                    tar::EntryType::Symlink,
                    "../../etc/passwd",
                    0o777,
                ),
                "symlink out",
            ),
            (
                ("app/root", tar::EntryType::Symlink, "/", 0o777),
                "absolute symlink",
            ),
            (
                ("app/shadow", tar::EntryType::Link, "etc/shadow", 0o644),
                "hard link out",
            ),
        ] {
            let tar = archive(&[("app/entry.sh", reg, "", 0o755), bad]);
            let e = unpack_app(&tar[..], &dest).unwrap_err();
            assert!(matches!(e, HupError::Copy { .. }), "{why}: {e}");
            assert_eq!(mode("entry.sh"), 0o755, "{why}: the old scripts stay");
            assert!(
                !dest.with_extension("new").exists(),
                "{why}: staging removed"
            );
        }
    }
}
