//! The store: the agent's small persistent documents in sled, and the only module that touches sled.
//!
//! Layout (schema [`helios_migrations::CURRENT`]): tree `state` holds the target envelope under
//! `target` and plain JSON bookkeeping under any other key (`current`, `report/last`...); tree
//! `meta` holds the schema version. [`Store::open`] migrates older stores and never deletes one:
//! a store it cannot trust is moved aside to `<dir>.corrupt-<unix secs>[-n]` and replaced by a
//! fresh one.
//!
//! What sled 0.34 does with damaged files (measured; the tests below pin the cases we rely on):
//! - `conf` truncated or overwritten: `open` fails (`Corruption` / `Unsupported`).
//! - `db` (the log) truncated, overwritten or bit-flipped: `open` *succeeds* and silently
//!   truncates the log at the first bad message, so the store rolls back to an older prefix,
//!   often to nothing; it then writes a fresh segment over the damaged bytes. A corrupt blob
//!   file is dropped the same way. We catch the "rolled back to nothing" case (files existed,
//!   yet sled recovered no data or no schema version); a rollback to a non-empty older prefix
//!   looks exactly like a crash before the last flush and cannot be told apart.
//! - A dropped `Db` releases its file lock a few milliseconds later (background threads), so an
//!   immediate reopen in the same process waits for the lock instead of failing.
//!
//! sled may also panic on a damaged store. Unwinding builds catch that here; release builds
//! abort (`panic = "abort"` in Cargo.toml), so the open runs under an unfinished-work marker,
//! `<dir>/helios-opening` (ports/unfinished.rs; inside the store dir, the one place a
//! hardened service may write): when [`REPEATED`] earlier starts died while opening, the store
//! is moved aside instead of crashing a third time.
//!
//! The store holds the device's keys: its dir is made `0700` before sled writes anything and
//! its files `0600` after the open, whatever the umask or the service manager; a looser
//! existing store is tightened with a log line (`decision=restrict`).

use std::io;

use super::unfinished::{Unfinished, REPEATED};

/// The open's unfinished-work marker, inside the store dir (sled ignores other files).
const OPENING_MARKER: &str = "helios-opening";
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use helios_migrations::{
    MigrationError, CURRENT, META_TREE, SCHEMA_VERSION_KEY, STATE_TREE, TARGET_KEY,
};
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::ErrorChain;

/// Every key of tree `state`, in one place: ARCHITECTURE.md's "Store schema" lists exactly these
/// (`tests/it/architecture.rs` compares), and debug builds refuse any other key, so a new key
/// cannot be added without being listed. The constants its users name are these strings.
pub mod keys {
    /// The target envelope (TargetBus).
    pub const TARGET: &str = helios_migrations::TARGET_KEY;
    /// The last current state (StateBus).
    pub const CURRENT: &str = "current";
    /// App records (Seek).
    pub const APPS: &str = "apps";
    /// Images helios pulled (Seek).
    pub const IMAGES: &str = "images";
    /// The target given up on (Seek).
    pub const GIVEN_UP: &str = "seek/given-up";
    /// The last successful report (Report).
    pub const LAST_REPORT: &str = "report/last";
    /// Device tags not yet pushed (API, Report).
    pub const TAGS_PENDING: &str = "tags/pending";
    /// Device tags as the cloud took them (Report).
    pub const TAGS_REPORTED: &str = "tags/reported";
    /// Service-scoped device API keys.
    pub const APIKEYS: &str = "apikeys";
    /// Host OS release records (Host).
    pub const HOST_RELEASES: &str = "host/releases";
    /// App owners in proxy mode (Poll).
    pub const PROXY_OWNERS: &str = "proxy/owners";
    /// The legacy supervisor's target copy (Proxy).
    pub const PROXY_LEGACY_TARGET: &str = "proxy/legacy_target";

    pub const ALL: [&str; 12] = [
        TARGET,
        CURRENT,
        APPS,
        IMAGES,
        GIVEN_UP,
        LAST_REPORT,
        TAGS_PENDING,
        TAGS_REPORTED,
        APIKEYS,
        HOST_RELEASES,
        PROXY_OWNERS,
        PROXY_LEGACY_TARGET,
    ];

    /// Debug builds refuse keys the schema does not list (the store's own unit tests use
    /// scratch keys).
    pub(super) fn check(key: &str) {
        debug_assert!(
            cfg!(test) || ALL.contains(&key),
            "store key {key:?} is not in ports::store::keys::ALL (and ARCHITECTURE.md)"
        );
    }
}

/// How long `open` waits for the lock of a store that another handle is still releasing.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Stores up to this size are read into memory before opening, so that the files moved aside
/// are the ones found on disk and not what sled rewrote while opening them.
const PRESERVE_LIMIT: u64 = 16 * 1024 * 1024;

/// The persistent store. Cheap to clone: every clone shares one sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    state: sled::Tree,
    path: Arc<Path>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What `Store::open` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// No store existed: a new one was created.
    Fresh,
    /// The store was read; `migrated_from` is the schema it was migrated from, if it was.
    Existing { migrated_from: Option<u32> },
    /// The store could not be trusted: it was moved to `moved_to` and a fresh one created.
    Recovered { moved_to: PathBuf, reason: String },
}

/// Whether a write must be on disk before the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed (fsync) before returning.
    Flush,
    /// On disk at the next flush: a `Flush` write, a removal, or the flush at shutdown. Lost on
    /// a crash before that (the store has no background flusher).
    Lazy,
}

/// The target document with the ETag it was served with (for `If-None-Match` after a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTarget {
    pub target: serde_json::Value,
    pub etag: Option<String>,
    /// When this target was first stored (unix ms); kept when the same target is stored again.
    pub stored_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open store at {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("store at {} is locked by another handle or process", .path.display())]
    Locked {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("migrate store at {}", .path.display())]
    Migrate {
        path: PathBuf,
        #[source]
        source: MigrationError,
    },
    #[error("create a fresh store at {}: {reason}", .path.display())]
    Fresh { path: PathBuf, reason: String },
    #[error("move store {} aside to {}", .from.display(), .to.display())]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("access store key {key:?}")]
    Access {
        key: String,
        #[source]
        source: sled::Error,
    },
    #[error("flush store")]
    Flush {
        #[source]
        source: sled::Error,
    },
    #[error("value under store key {key:?} is not a valid document")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store key {key:?} is reserved for the target, use put_target")]
    ReservedKey { key: String },
    #[error("no space left on device for the store at {}: {available} bytes free, {needed} needed", .path.display())]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
}

impl StoreError {
    /// Worth retrying later (disk full, lock held, interrupted...); corruption and misuse are not.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Open { source, .. }
            | StoreError::Access { source, .. }
            | StoreError::Flush { source } => sled_is_transient(source),
            StoreError::Locked { .. } | StoreError::NoSpace { .. } => true,
            StoreError::Migrate { source, .. } => match source {
                MigrationError::Sled(e) => sled_is_transient(e),
                _ => false,
            },
            StoreError::MoveAside { source, .. } => io_is_transient(source),
            StoreError::Fresh { .. }
            | StoreError::Corrupt { .. }
            | StoreError::ReservedKey { .. } => false,
        }
    }
}

impl Store {
    /// Opens (creating) the store in `dir` with a bounded cache; applies migrations;
    /// a store that fails to open, panics sled while opening, fails the integrity scan
    /// (iterate every tree and key, parse every JSON value) or fails migration is moved
    /// aside to `<dir>.corrupt-<unix secs>[-n]` (never deleted), logged at WARN with
    /// decision="move-aside" and reason, and a fresh store is created in `dir`. Only an error
    /// if even the fresh store cannot be created (e.g. permissions, disk full), or if the
    /// failure is one of the environment (disk full, permission denied, read-only file system,
    /// lock held): those leave the store where it is, since moving it would not help.
    pub fn open(dir: &Path, cache_capacity: u64) -> Result<(Store, Opened), StoreError> {
        open_with(dir, cache_capacity, &OpenOptions::default())
    }

    /// The stored target, if any.
    pub fn get_target(&self) -> Result<Option<StoredTarget>, StoreError> {
        let Some(bytes) = self.state.get(TARGET_KEY).map_err(access(TARGET_KEY))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                key: TARGET_KEY.to_owned(),
                source,
            })
    }

    /// Stores the target with its ETag, flushed (fsync) before returning. Storing the same
    /// target and ETag again writes nothing and keeps the first `stored_at_ms`.
    pub fn put_target(
        &self,
        target: &serde_json::Value,
        etag: Option<&str>,
    ) -> Result<(), StoreError> {
        let unchanged = match self.get_target() {
            Ok(Some(old)) => old.target == *target && old.etag.as_deref() == etag,
            Ok(None) | Err(StoreError::Corrupt { .. }) => false,
            Err(e) => return Err(e),
        };
        if !unchanged {
            let envelope = StoredTarget {
                target: target.clone(),
                etag: etag.map(str::to_owned),
                stored_at_ms: now_ms(),
            };
            let bytes = serde_json::to_vec(&envelope).expect("a StoredTarget always serializes");
            self.check_space(bytes.len())?;
            self.state
                .insert(TARGET_KEY, bytes)
                .map_err(access(TARGET_KEY))?;
        }
        self.flush()
    }

    /// A bookkeeping document from tree `state` (e.g. "current", "report/last").
    pub fn get_json(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        keys::check(key);
        let Some(bytes) = self.state.get(key).map_err(access(key))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                key: key.to_owned(),
                source,
            })
    }

    /// Stores a bookkeeping document in tree `state`. Writes nothing when the stored bytes are
    /// identical, so an unchanged document never touches the disk.
    pub fn put_json(
        &self,
        key: &str,
        v: &serde_json::Value,
        durability: Durability,
    ) -> Result<(), StoreError> {
        keys::check(key);
        if key == TARGET_KEY {
            return Err(StoreError::ReservedKey {
                key: key.to_owned(),
            });
        }
        let bytes = serde_json::to_vec(v).expect("a serde_json::Value always serializes");
        let old = self.state.get(key).map_err(access(key))?;
        if old.as_deref() != Some(bytes.as_slice()) {
            self.check_space(bytes.len())?;
            self.state.insert(key, bytes).map_err(access(key))?;
        }
        match durability {
            // Also makes an earlier lazy write of the same bytes durable; free when nothing is dirty.
            Durability::Flush => self.flush(),
            Durability::Lazy => Ok(()),
        }
    }

    /// Removes a key from tree `state` (the target too); flushed when something was removed.
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        keys::check(key);
        if self.state.remove(key).map_err(access(key))?.is_some() {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes every pending change to disk (fsync); free when nothing is pending.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(drop)
            .map_err(|source| StoreError::Flush { source })
    }

    /// Bytes the store's files take on disk (0 if they cannot be listed).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses a write of `len` bytes when the store's filesystem has less than twice that plus
    /// [`SPACE_MARGIN`] free. sled 0.34 cannot recover from a write that fails with ENOSPC (its
    /// log stalls and later calls block), so a full disk must be detected before sled sees it.
    fn check_space(&self, len: usize) -> Result<(), StoreError> {
        let needed = len as u64 * 2 + SPACE_MARGIN;
        match free_bytes(&self.path) {
            Some(available) if available < needed => Err(StoreError::NoSpace {
                path: self.path.to_path_buf(),
                needed,
                available,
            }),
            _ => Ok(()),
        }
    }
}

/// Free space a write must leave: two of sled's 512 KiB log segments.
const SPACE_MARGIN: u64 = 1 << 20;

/// Bytes available to unprivileged writers on the filesystem holding `path` (None: unknown).
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs buffer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    // c_ulong / fsblkcnt_t: u32 on 32-bit devices, u64 here.
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn access(key: &str) -> impl FnOnce(sled::Error) -> StoreError + '_ {
    move |source| StoreError::Access {
        key: key.to_owned(),
        source,
    }
}

/// Knobs of `open` that tests turn.
struct OpenOptions {
    lock_wait: Duration,
    open_sled: fn(&Path, u64) -> sled::Result<sled::Db>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            lock_wait: LOCK_WAIT,
            open_sled,
        }
    }
}

/// No background flusher: it fsyncs the log every 500 ms even when nothing changed (a wakeup
/// twice a second and a thread). Writes reach the disk through explicit flushes only.
fn open_sled(dir: &Path, cache_capacity: u64) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(None)
        .open()
}

/// Why a store could not be used as it is.
enum Failure {
    /// The environment failed (disk full, permissions, lock): moving the store would not help.
    Env(StoreError),
    /// The store itself cannot be trusted.
    Corrupt(String),
}

/// The open under its unfinished-work marker (module docs).
fn open_with(
    dir: &Path,
    cache_capacity: u64,
    opts: &OpenOptions,
) -> Result<(Store, Opened), StoreError> {
    let existed = dir.symlink_metadata().is_ok();
    let marker = std::fs::create_dir_all(dir)
        .map(|()| restrict(dir, existed))
        .and_then(|()| Unfinished::begin(&dir.join(OPENING_MARKER), "open"));
    match marker {
        Ok((_marker, died)) => open_checked(dir, cache_capacity, opts, died, existed),
        Err(e) => {
            warn!(path:% = dir.display(), error:% = e, decision = "continue",
                reason = "cannot write the open marker: a store that crashes helios at open is not detected";
                "Store open unguarded");
            open_checked(dir, cache_capacity, opts, 0, existed)
        }
    }
}

/// `died`: how many earlier starts died while opening this store; `existed`: the store dir
/// was there before the marker was written.
fn open_checked(
    dir: &Path,
    cache_capacity: u64,
    opts: &OpenOptions,
    died: u32,
    existed: bool,
) -> Result<(Store, Opened), StoreError> {
    let had_files =
        dir.join("conf").exists() || dir.join("db").metadata().is_ok_and(|m| m.len() > 0);
    let preserved = if had_files {
        Preserved::read(dir)
    } else {
        None
    };

    let tried = if died >= REPEATED && existed {
        Err(Failure::Corrupt(format!(
            "{died} earlier starts died while opening the store"
        )))
    } else {
        try_open(dir, cache_capacity, opts, had_files)
    };
    let reason = match tried {
        Ok((store, report)) => {
            let opened = match report.found {
                None => Opened::Fresh,
                Some(v) if report.migrated() => Opened::Existing {
                    migrated_from: Some(v),
                },
                Some(_) => Opened::Existing {
                    migrated_from: None,
                },
            };
            restrict(dir, false);
            log_opened(&store, &opened);
            return Ok((store, opened));
        }
        Err(Failure::Env(e)) => return Err(e),
        Err(Failure::Corrupt(reason)) if !existed => {
            return Err(StoreError::Fresh {
                path: dir.to_owned(),
                reason,
            });
        }
        Err(Failure::Corrupt(reason)) => reason,
    };

    wait_unlocked(dir, opts.lock_wait);
    let moved_to = move_aside(dir)?;
    let restored = preserved.map(|p| p.restore(&moved_to));
    warn!(path:% = dir.display(), moved_to:% = moved_to.display(), files_restored:? = restored,
          decision = "move-aside", reason:% = reason; "Store unreadable");

    match try_open(dir, cache_capacity, opts, false) {
        Ok((store, _)) => {
            let opened = Opened::Recovered { moved_to, reason };
            restrict(dir, false);
            log_opened(&store, &opened);
            Ok((store, opened))
        }
        Err(Failure::Env(e)) => Err(e),
        Err(Failure::Corrupt(reason)) => Err(StoreError::Fresh {
            path: dir.to_owned(),
            reason,
        }),
    }
}

/// Dirs of the store are `0700` and its files `0600`, whatever the umask or the service manager
/// (it holds the device's keys). Runs before sled writes anything (so its new files are never
/// reachable by others) and again after the open (so they are `0600` too); an `existing` store
/// found looser is tightened with a log line. Links are not followed.
fn restrict(dir: &Path, existing: bool) {
    use std::os::unix::fs::PermissionsExt;
    fn walk(path: &Path, meta: &std::fs::Metadata, tightened: &mut u32) -> io::Result<()> {
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o777 != want {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
            *tightened += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() || meta.is_file() {
                    walk(&entry.path(), &meta, tightened)?;
                }
            }
        }
        Ok(())
    }
    let mut tightened = 0;
    // The store dir itself may be a link an operator made: its target is the store.
    match dir.metadata().and_then(|m| walk(dir, &m, &mut tightened)) {
        Ok(()) if existing && tightened > 0 => {
            info!(path:% = dir.display(), tightened, decision = "restrict",
                reason = "the store holds keys: dirs 0700, files 0600"; "Store permissions tightened")
        }
        Ok(()) => {}
        Err(e) => warn!(path:% = dir.display(), error:% = e, decision = "continue",
            reason = "cannot restrict the store's permissions"; "Store permissions unchanged"),
    }
}

fn log_opened(store: &Store, opened: &Opened) {
    let (how, migrated_from) = match opened {
        Opened::Fresh => ("fresh", None),
        Opened::Existing {
            migrated_from: None,
        } => ("existing", None),
        Opened::Existing {
            migrated_from: Some(v),
        } => ("migrated", Some(*v)),
        Opened::Recovered { .. } => ("recovered", None),
    };
    info!(path:% = store.path.display(), schema_version = CURRENT, opened = how, migrated_from:? = migrated_from,
          size_bytes = store.size_on_disk(), decision = "open"; "Store opened");
}

/// Opens, checks, migrates and scans the store in `dir`; any failure has closed the database.
fn try_open(
    dir: &Path,
    cache_capacity: u64,
    opts: &OpenOptions,
    had_files: bool,
) -> Result<(Store, helios_migrations::MigrationReport), Failure> {
    let db = open_db(dir, cache_capacity, opts)?;
    match check_and_migrate(&db, dir, had_files) {
        Ok(report) => {
            let state = db.open_tree(STATE_TREE).map_err(|source| {
                Failure::Env(StoreError::Open {
                    path: dir.to_owned(),
                    source,
                })
            })?;
            Ok((
                Store {
                    db,
                    state,
                    path: Arc::from(dir),
                },
                report,
            ))
        }
        Err(f) => {
            close(db);
            Err(f)
        }
    }
}

fn open_db(dir: &Path, cache_capacity: u64, opts: &OpenOptions) -> Result<sled::Db, Failure> {
    let deadline = Instant::now() + opts.lock_wait;
    loop {
        match catch_unwind(AssertUnwindSafe(|| (opts.open_sled)(dir, cache_capacity))) {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(e)) if is_lock_error(&e) => {
                if Instant::now() >= deadline {
                    return Err(Failure::Env(StoreError::Locked {
                        path: dir.to_owned(),
                        source: e,
                    }));
                }
                // A handle dropped a moment ago releases its lock from a background thread.
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(Err(e)) if sled_is_environment(&e) => {
                return Err(Failure::Env(StoreError::Open {
                    path: dir.to_owned(),
                    source: e,
                }));
            }
            Ok(Err(e)) => {
                return Err(Failure::Corrupt(format!(
                    "sled cannot open the store: {}",
                    ErrorChain(&e)
                )))
            }
            Err(panic) => {
                return Err(Failure::Corrupt(format!(
                    "sled panicked while opening the store: {}",
                    panic_message(&*panic)
                )));
            }
        }
    }
}

fn check_and_migrate(
    db: &sled::Db,
    dir: &Path,
    had_files: bool,
) -> Result<helios_migrations::MigrationReport, Failure> {
    let migrate_err = |e: MigrationError| match e {
        MigrationError::Sled(source) if sled_is_environment(&source) => {
            Failure::Env(StoreError::Migrate {
                path: dir.to_owned(),
                source: MigrationError::Sled(source),
            })
        }
        e => Failure::Corrupt(format!("migration failed: {}", ErrorChain(&e))),
    };
    let caught = catch_unwind(AssertUnwindSafe(|| {
        if had_files {
            // sled opens a log it cannot read as an empty store (see the module docs).
            if !db.was_recovered() {
                return Err(Failure::Corrupt(
                    "store files exist but sled recovered nothing from them".to_owned(),
                ));
            }
            if helios_migrations::stored_version(db)
                .map_err(migrate_err)?
                .is_none()
            {
                return Err(Failure::Corrupt(
                    "store files exist but hold no schema version and no data".to_owned(),
                ));
            }
        }
        let report = helios_migrations::migrate(db).map_err(migrate_err)?;
        scan(db, dir)?;
        Ok(report)
    }));
    caught.unwrap_or_else(|panic| {
        Err(Failure::Corrupt(format!(
            "sled panicked while reading the store: {}",
            panic_message(&*panic)
        )))
    })
}

/// Reads every key of every tree and parses every value: cheap for the few small documents we keep.
fn scan(db: &sled::Db, dir: &Path) -> Result<(), Failure> {
    let sled_err = |tree: &str, source: sled::Error| {
        if sled_is_environment(&source) {
            Failure::Env(StoreError::Open {
                path: dir.to_owned(),
                source,
            })
        } else {
            Failure::Corrupt(format!(
                "integrity scan: read tree {tree}: {}",
                ErrorChain(&source)
            ))
        }
    };
    for name in db.tree_names() {
        let tree_name = String::from_utf8_lossy(&name).into_owned();
        let tree = db.open_tree(&name).map_err(|e| sled_err(&tree_name, e))?;
        for kv in tree.iter() {
            let (key, value) = kv.map_err(|e| sled_err(&tree_name, e))?;
            let key = String::from_utf8_lossy(&key);
            let parsed = if tree_name == META_TREE {
                if *key == *SCHEMA_VERSION_KEY && value.len() != 4 {
                    return Err(Failure::Corrupt(format!(
                        "integrity scan: {META_TREE}/{key} is not a u32"
                    )));
                }
                continue;
            } else if tree_name == STATE_TREE && *key == *TARGET_KEY {
                serde_json::from_slice::<StoredTarget>(&value).map(drop)
            } else {
                serde_json::from_slice::<serde::de::IgnoredAny>(&value).map(drop)
            };
            parsed.map_err(|e| {
                Failure::Corrupt(format!(
                    "integrity scan: value under {tree_name}/{key} is not valid: {e}"
                ))
            })?;
        }
    }
    Ok(())
}

/// Drops a database we are giving up on; sled may panic here too.
fn close(db: sled::Db) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
}

/// Waits (bounded) until no sled handle holds the store's lock, so nothing writes to it any more.
fn wait_unlocked(dir: &Path, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let Ok(file) = std::fs::File::open(dir.join("db")) else {
            return true;
        };
        if file.try_lock().is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Renames `dir` to `<dir>.corrupt-<unix secs>[-n]`, the first such name that is free.
fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let Some(name) = dir.file_name() else {
        let to = dir.to_owned();
        let source = io::Error::new(
            io::ErrorKind::InvalidInput,
            "store path has no final component",
        );
        return Err(StoreError::MoveAside {
            from: dir.to_owned(),
            to,
            source,
        });
    };
    let mut n = 0u32;
    loop {
        let mut candidate = name.to_owned();
        candidate.push(format!(".corrupt-{secs}"));
        if n > 0 {
            candidate.push(format!("-{n}"));
        }
        let to = dir.with_file_name(candidate);
        if to.symlink_metadata().is_err() {
            return match std::fs::rename(dir, &to) {
                Ok(()) => Ok(to),
                // A mount point (a systemd StateDirectory, a volume) or a read-only parent:
                // the directory stays, its contents move into it.
                Err(e) => move_contents_aside(dir, secs).map_err(|_| StoreError::MoveAside {
                    from: dir.to_owned(),
                    to,
                    source: e,
                }),
            };
        }
        n += 1;
    }
}

/// Prefix of the copies `move_contents_aside` keeps inside the store dir.
const INNER_ASIDE: &str = "corrupt-";

/// Moves every entry of `dir` (but earlier such copies) into `dir/corrupt-<secs>[-n]`.
fn move_contents_aside(dir: &Path, secs: u64) -> io::Result<PathBuf> {
    let mut n = 0u32;
    let to = loop {
        let suffix = if n > 0 {
            format!("-{n}")
        } else {
            String::new()
        };
        let to = dir.join(format!("{INNER_ASIDE}{secs}{suffix}"));
        if to.symlink_metadata().is_err() {
            break to;
        }
        n += 1;
    };
    std::fs::create_dir(&to)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(INNER_ASIDE) {
            continue;
        }
        std::fs::rename(entry.path(), to.join(&name))?;
    }
    Ok(to)
}

/// The store's files as found before sled opened them (sled rewrites a log it cannot read).
struct Preserved {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Preserved {
    /// `None` when the store is too big to hold in memory or cannot be read.
    fn read(dir: &Path) -> Option<Preserved> {
        let mut paths = Vec::new();
        list_files(dir, Path::new(""), &mut paths).ok()?;
        let mut total = 0u64;
        for (_, full) in &paths {
            total += full.metadata().ok()?.len();
            if total > PRESERVE_LIMIT {
                return None;
            }
        }
        let files = paths
            .into_iter()
            .map(|(rel, full)| std::fs::read(full).map(|bytes| (rel, bytes)))
            .collect::<io::Result<_>>()
            .ok()?;
        Some(Preserved { files })
    }

    /// Puts the original bytes back into the moved-aside copy; returns how many files differed.
    fn restore(self, moved_to: &Path) -> usize {
        let mut restored = 0;
        for (rel, bytes) in self.files {
            let path = moved_to.join(&rel);
            if std::fs::read(&path).is_ok_and(|now| now == bytes) {
                continue;
            }
            match std::fs::write(&path, &bytes) {
                Ok(()) => restored += 1,
                Err(e) => {
                    warn!(path:% = path.display(), error:% = e, decision = "skip"; "Store file not restored")
                }
            }
        }
        restored
    }
}

fn list_files(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if rel.as_os_str().is_empty()
            && entry.file_name().to_string_lossy().starts_with(INNER_ASIDE)
        {
            continue; // copies moved aside earlier are not part of the store
        }
        let ty = entry.file_type()?;
        if ty.is_dir() {
            list_files(&entry.path(), &rel.join(entry.file_name()), out)?;
        } else if ty.is_file() {
            out.push((rel.join(entry.file_name()), entry.path()));
        }
    }
    Ok(())
}

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Errors of the environment rather than of the store's contents: never a reason to move it aside.
fn sled_is_environment(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io_is_transient(io)
                || matches!(
                    io.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                )
                || matches!(
                    io.raw_os_error(),
                    Some(libc::EACCES | libc::EPERM | libc::EROFS)
                )
                || is_lock_error(e)
        }
        _ => false,
    }
}

fn sled_is_transient(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => io_is_transient(io) || is_lock_error(e),
        _ => false,
    }
}

fn io_is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOSPC
                | libc::EDQUOT
                | libc::EAGAIN
                | libc::EINTR
                | libc::ENOMEM
                | libc::EMFILE
                | libc::ENFILE
                | libc::EBUSY
                | libc::ETIMEDOUT
        )
    ) || matches!(
        e.kind(),
        io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::TimedOut
    )
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Milliseconds since the epoch (0 before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CACHE: u64 = 1 << 20;

    fn temp() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("store");
        (tmp, dir)
    }

    /// Flushes and drops the store, then waits until sled has let go of its files.
    fn close_store(store: Store) {
        let dir = store.path().to_owned();
        store.flush().unwrap();
        drop(store);
        assert!(
            wait_unlocked(&dir, Duration::from_secs(5)),
            "sled kept the store locked"
        );
    }

    /// A closed store holding a target and a bookkeeping document.
    fn populated_store() -> (tempfile::TempDir, PathBuf) {
        let (tmp, dir) = temp();
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        assert_eq!(opened, Opened::Fresh);
        store
            .put_target(&json!({"name": "dev", "apps": {}}), Some("\"e1\""))
            .unwrap();
        store
            .put_json("current", &json!({"apps": {"a": 1}}), Durability::Flush)
            .unwrap();
        close_store(store);
        (tmp, dir)
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        list_files(dir, Path::new(""), &mut out).unwrap();
        out.into_iter().map(|(_, full)| full).collect()
    }

    /// Every dir and file under `dir` (itself included) with its permission bits.
    fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = vec![(
            dir.to_owned(),
            dir.metadata().unwrap().permissions().mode() & 0o7777,
        )];
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                out.extend(modes(&e.path()));
            } else {
                out.push((e.path(), meta.permissions().mode() & 0o7777));
            }
        }
        out
    }

    fn assert_private(dir: &Path) {
        for (p, mode) in modes(dir) {
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{} has mode {mode:o}", p.display());
        }
    }

    #[test]
    fn the_store_is_private_whatever_the_umask_and_a_loose_one_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: umask only swaps the process's file-creation mask (nextest: one test a process).
        let old = unsafe { libc::umask(0) };
        let (_tmp, dir) = populated_store();
        let (store, _) = Store::open(&dir, CACHE).unwrap();
        unsafe { libc::umask(old) };
        assert!(files_in(&dir).len() >= 2, "{:?}", files_in(&dir));
        assert_private(&dir);
        close_store(store);

        // Loosened by someone else: tightened at the next open.
        for (p, _) in modes(&dir) {
            let loose = if p.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(loose)).unwrap();
        }
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        assert_eq!(
            opened,
            Opened::Existing {
                migrated_from: None
            }
        );
        assert_private(&dir);
        assert_eq!(
            store.get_json("current").unwrap(),
            Some(json!({"apps": {"a": 1}}))
        );
    }

    /// xorshift64: random enough garbage without a dependency.
    fn garbage(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// `open` recovered: the damaged store was moved aside with its files, and the fresh one works.
    fn assert_recovered(dir: &Path, opened: Opened, store: &Store) -> (PathBuf, String) {
        let Opened::Recovered { moved_to, reason } = opened else {
            panic!("expected Recovered, got {opened:?}");
        };
        assert!(moved_to.is_dir(), "{} missing", moved_to.display());
        assert!(
            moved_to.join("conf").is_file() && moved_to.join("db").is_file(),
            "files not moved"
        );
        let name = moved_to.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("store.corrupt-"), "{name}");
        assert_eq!(moved_to.parent(), dir.parent());

        assert_eq!(store.path(), dir);
        assert_eq!(store.get_target().unwrap(), None);
        assert_eq!(store.get_json("current").unwrap(), None);
        store.put_target(&json!({"fresh": true}), None).unwrap();
        assert_eq!(
            store.get_target().unwrap().unwrap().target,
            json!({"fresh": true})
        );
        (moved_to, reason)
    }

    #[test]
    fn target_and_etag_round_trip() {
        let (_tmp, dir) = temp();
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        assert_eq!(opened, Opened::Fresh);
        assert_eq!(store.get_target().unwrap(), None);

        let before = now_ms();
        let target = json!({"name": "dev", "apps": {"u1": {"id": 1}}});
        store.put_target(&target, Some("\"abc\"")).unwrap();
        let got = store.get_target().unwrap().unwrap();
        assert_eq!(got.target, target);
        assert_eq!(got.etag.as_deref(), Some("\"abc\""));
        assert!(got.stored_at_ms >= before && got.stored_at_ms <= now_ms());

        store.put_target(&json!({"name": "dev2"}), None).unwrap();
        let got = store.get_target().unwrap().unwrap();
        assert_eq!((got.target, got.etag), (json!({"name": "dev2"}), None));
        // get_json sees the envelope itself.
        assert_eq!(
            store.get_json(TARGET_KEY).unwrap().unwrap()["etag"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn json_round_trip_remove_and_reserved_key() {
        let (_tmp, dir) = temp();
        let (store, _) = Store::open(&dir, CACHE).unwrap();
        assert_eq!(store.get_json("report/last").unwrap(), None);
        store
            .put_json("report/last", &json!({"n": 1}), Durability::Lazy)
            .unwrap();
        assert_eq!(
            store.get_json("report/last").unwrap(),
            Some(json!({"n": 1}))
        );
        store.remove("report/last").unwrap();
        store.remove("report/last").unwrap();
        assert_eq!(store.get_json("report/last").unwrap(), None);

        let err = store
            .put_json(TARGET_KEY, &json!({}), Durability::Flush)
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::ReservedKey { key } if key == TARGET_KEY),
            "{err:?}"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn survives_drop_and_reopen() {
        let (_tmp, dir) = populated_store();
        // Reopen straight away: sled may still be releasing the lock of the dropped handle.
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        assert_eq!(
            opened,
            Opened::Existing {
                migrated_from: None
            }
        );
        let got = store.get_target().unwrap().unwrap();
        assert_eq!(got.target, json!({"name": "dev", "apps": {}}));
        assert_eq!(got.etag.as_deref(), Some("\"e1\""));
        assert_eq!(
            store.get_json("current").unwrap(),
            Some(json!({"apps": {"a": 1}}))
        );
        assert!(store.size_on_disk() > 0);

        // Drop without waiting, then reopen: `open` waits for the lock instead of failing.
        drop(store);
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        assert_eq!(
            opened,
            Opened::Existing {
                migrated_from: None
            }
        );
        assert!(store.get_target().unwrap().is_some());
    }

    #[test]
    fn identical_put_does_not_write() {
        let (_tmp, dir) = temp();
        let (store, _) = Store::open(&dir, CACHE).unwrap();
        store
            .put_json("current", &json!({"apps": {"a": 1}}), Durability::Flush)
            .unwrap();
        store.put_target(&json!({"t": 1}), Some("e")).unwrap();
        let stored_at = store.get_target().unwrap().unwrap().stored_at_ms;
        let checksum = store.db.checksum().unwrap();

        // Every insert into `state` shows up here, in order; the sentinel proves none came before it.
        let mut events = store.state.watch_prefix(b"");
        store
            .put_json("current", &json!({"apps": {"a": 1}}), Durability::Flush)
            .unwrap();
        store
            .put_json("current", &json!({"apps": {"a": 1}}), Durability::Lazy)
            .unwrap();
        store.put_target(&json!({"t": 1}), Some("e")).unwrap();
        assert_eq!(
            store.db.flush().unwrap(),
            0,
            "an identical put reached the disk"
        );
        store
            .put_json("sentinel", &json!(1), Durability::Lazy)
            .unwrap();
        match events.next() {
            Some(sled::Event::Insert { key, .. }) => assert_eq!(&*key, b"sentinel"),
            other => panic!("expected the sentinel insert first, got {other:?}"),
        }
        store.remove("sentinel").unwrap();
        assert_eq!(store.db.checksum().unwrap(), checksum);
        assert_eq!(store.get_target().unwrap().unwrap().stored_at_ms, stored_at);

        // A different etag is a change.
        store.put_target(&json!({"t": 1}), Some("f")).unwrap();
        assert_ne!(store.db.checksum().unwrap(), checksum);
    }

    #[test]
    fn schema1_fixture_is_migrated() {
        let (_tmp, dir) = temp();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/fixtures/schema1");
        std::fs::create_dir_all(&dir).unwrap();
        for f in files_in(&fixture) {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        assert_eq!(
            opened,
            Opened::Existing {
                migrated_from: Some(1)
            }
        );
        let got = store.get_target().unwrap().unwrap();
        assert_eq!(
            got.target,
            json!({"name":"fixture-device","apps":{"app-uuid-1":{"id":1,"name":"fixture-app","releases":{}}}})
        );
        assert_eq!(got.etag.as_deref(), Some("\"fixture-etag-1\""));
        assert_eq!(
            store.get_json("current").unwrap(),
            Some(json!({"name":"fixture-device","apps":{}}))
        );
        close_store(store);

        let (_store, opened) = Store::open(&dir, CACHE).unwrap();
        assert_eq!(
            opened,
            Opened::Existing {
                migrated_from: None
            }
        );
    }

    #[test]
    fn truncated_files_are_moved_aside() {
        let (_tmp, dir) = populated_store();
        let mut truncated = Vec::new();
        for f in files_in(&dir) {
            let len = f.metadata().unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
            truncated.push((
                f.strip_prefix(&dir).unwrap().to_owned(),
                std::fs::read(&f).unwrap(),
            ));
        }
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        let (moved_to, reason) = assert_recovered(&dir, opened, &store);
        assert!(reason.contains("sled cannot open the store"), "{reason}");
        for (rel, bytes) in truncated {
            assert_eq!(
                std::fs::read(moved_to.join(&rel)).unwrap(),
                bytes,
                "{} changed",
                rel.display()
            );
        }
    }

    #[test]
    fn garbage_files_are_moved_aside() {
        let (_tmp, dir) = populated_store();
        for (i, f) in files_in(&dir).into_iter().enumerate() {
            let len = f.metadata().unwrap().len() as usize;
            std::fs::write(&f, garbage(len, 0x9e37_79b9_7f4a_7c15 + i as u64)).unwrap();
        }
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        assert_recovered(&dir, opened, &store);
    }

    /// With `conf` intact sled opens a garbage log as an empty store and overwrites it.
    #[test]
    fn garbage_log_with_intact_conf_is_moved_aside_unchanged() {
        let (_tmp, dir) = populated_store();
        let db_file = dir.join("db");
        let bad = garbage(db_file.metadata().unwrap().len() as usize, 42);
        std::fs::write(&db_file, &bad).unwrap();
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        let (moved_to, reason) = assert_recovered(&dir, opened, &store);
        assert!(reason.contains("recovered nothing"), "{reason}");
        assert_eq!(
            std::fs::read(moved_to.join("db")).unwrap(),
            bad,
            "evidence not preserved"
        );
    }

    #[test]
    fn invalid_json_is_moved_aside() {
        let (_tmp, dir) = populated_store();
        {
            let db = open_sled(&dir, CACHE).unwrap();
            db.open_tree(STATE_TREE)
                .unwrap()
                .insert("current", b"{not json".as_ref())
                .unwrap();
            db.flush().unwrap();
        }
        assert!(wait_unlocked(&dir, Duration::from_secs(5)));
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        let (_, reason) = assert_recovered(&dir, opened, &store);
        assert!(reason.contains("state/current"), "{reason}");
    }

    #[test]
    fn invalid_target_envelope_is_moved_aside() {
        let (_tmp, dir) = populated_store();
        {
            let db = open_sled(&dir, CACHE).unwrap();
            db.open_tree(STATE_TREE)
                .unwrap()
                .insert(TARGET_KEY, br#"{"etag":"x"}"#.as_ref())
                .unwrap();
            db.flush().unwrap();
        }
        assert!(wait_unlocked(&dir, Duration::from_secs(5)));
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        let (_, reason) = assert_recovered(&dir, opened, &store);
        assert!(reason.contains("state/target"), "{reason}");
    }

    #[test]
    fn too_new_schema_is_moved_aside() {
        let (_tmp, dir) = populated_store();
        {
            let db = open_sled(&dir, CACHE).unwrap();
            db.open_tree(META_TREE)
                .unwrap()
                .insert(SCHEMA_VERSION_KEY, &(CURRENT + 1).to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        assert!(wait_unlocked(&dir, Duration::from_secs(5)));
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        let (_, reason) = assert_recovered(&dir, opened, &store);
        assert!(reason.contains("newer"), "{reason}");
    }

    #[test]
    fn sled_panic_while_opening_is_moved_aside() {
        let (_tmp, dir) = populated_store();
        fn panics_on_existing(dir: &Path, cache: u64) -> sled::Result<sled::Db> {
            if dir.exists() {
                panic!("injected sled panic");
            }
            open_sled(dir, cache)
        }
        let opts = OpenOptions {
            lock_wait: LOCK_WAIT,
            open_sled: panics_on_existing,
        };
        let (store, opened) = open_with(&dir, CACHE, &opts).unwrap();
        let (_, reason) = assert_recovered(&dir, opened, &store);
        assert!(reason.contains("injected sled panic"), "{reason}");
    }

    /// What an aborting release build leaves when sled panics at open: the marker of the
    /// starts that died. One death is retried (it may have been a kill), two are not.
    #[test]
    fn a_store_that_killed_two_starts_is_moved_aside() {
        let (_tmp, dir) = populated_store();
        let marker = dir.join(OPENING_MARKER);
        std::fs::write(&marker, "1 open\n").unwrap();
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        assert!(matches!(opened, Opened::Existing { .. }), "{opened:?}");
        assert!(!marker.exists(), "a finished open removes its marker");
        drop(store);
        assert!(wait_unlocked(&dir, Duration::from_secs(5)));

        std::fs::write(&marker, "2 open\n").unwrap();
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        let (_, reason) = assert_recovered(&dir, opened, &store);
        assert!(reason.contains("2 earlier starts died"), "{reason}");
        assert!(!marker.exists());
    }

    /// A store dir that cannot be renamed (a mount point) keeps its place; its contents move
    /// into a `corrupt-<secs>` subdirectory, earlier copies stay where they are, and a store
    /// opened there afterwards does not count them as its files.
    #[test]
    fn contents_move_aside_when_the_dir_cannot() {
        let (_tmp, dir) = populated_store();
        assert!(wait_unlocked(&dir, Duration::from_secs(5)));
        let first = move_contents_aside(&dir, 7).unwrap();
        assert!(first.join("db").exists() && first.join("conf").exists());
        assert!(!dir.join("db").exists());
        std::fs::write(dir.join("db"), b"garbage").unwrap();
        let second = move_contents_aside(&dir, 7).unwrap();
        assert_eq!(second, dir.join("corrupt-7-1"));
        assert_eq!(std::fs::read(second.join("db")).unwrap(), b"garbage");
        assert!(
            first.join("db").exists(),
            "the first copy was not moved again"
        );
        let mut files = vec![];
        list_files(&dir, Path::new(""), &mut files).unwrap();
        assert!(files.is_empty(), "{files:?}");
        let (store, opened) = Store::open(&dir, CACHE).unwrap();
        assert!(matches!(opened, Opened::Fresh), "{opened:?}");
        assert!(store.get_target().unwrap().is_none());
    }

    #[test]
    fn second_move_aside_in_the_same_second_gets_a_suffix() {
        let (tmp, dir) = temp();
        std::fs::create_dir_all(&dir).unwrap();
        let first = move_aside(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let second = move_aside(&dir).unwrap();
        assert!(first.is_dir() && second.is_dir());
        if first.file_name().unwrap().len() == second.file_name().unwrap().len() - 2 {
            assert_eq!(
                second.as_os_str(),
                format!("{}-1", first.display()).as_str()
            );
        }
        assert!(second.starts_with(tmp.path()));
    }

    #[test]
    fn locked_store_is_a_transient_error_and_stays_in_place() {
        let (_tmp, dir) = temp();
        let (_holder, _) = Store::open(&dir, CACHE).unwrap();
        let opts = OpenOptions {
            lock_wait: Duration::from_millis(50),
            open_sled,
        };
        let err = open_with(&dir, CACHE, &opts).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        assert!(err.is_transient());
        let siblings = std::fs::read_dir(dir.parent().unwrap()).unwrap().count();
        assert_eq!(siblings, 1, "the locked store was moved");
    }

    #[test]
    fn unusable_path_is_an_error() {
        let (tmp, _) = temp();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file.join("store"), CACHE).unwrap_err();
        assert!(matches!(err, StoreError::Fresh { .. }), "{err:?}");
        assert!(file.is_file(), "the file in the way was touched");
    }

    #[test]
    fn errors_are_classified() {
        let full = sled::Error::Io(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(StoreError::Flush { source: full }.is_transient());
        let full = sled::Error::Io(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(sled_is_environment(&full));
        let denied = sled::Error::Io(io::Error::from_raw_os_error(libc::EACCES));
        assert!(sled_is_environment(&denied));
        assert!(!StoreError::Open {
            path: PathBuf::new(),
            source: denied
        }
        .is_transient());
        let corrupt = sled::Error::Corruption { at: None, bt: () };
        assert!(!sled_is_environment(&corrupt));
        assert!(!StoreError::Access {
            key: "k".into(),
            source: corrupt
        }
        .is_transient());
        let bad = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        assert!(!StoreError::Corrupt {
            key: "k".into(),
            source: bad
        }
        .is_transient());
        let too_new = MigrationError::TooNew {
            found: 9,
            current: CURRENT,
        };
        assert!(!StoreError::Migrate {
            path: PathBuf::new(),
            source: too_new
        }
        .is_transient());
    }
}
