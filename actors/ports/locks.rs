//! Update locks (spec/helios-api-v3.md §7.3, spec/behaviours.md §7): one directory per app,
//! `<runtime dir>/update-locks/<app uuid>/`, bind-mounted into every service container at
//! `/tmp/balena` and `/tmp/resin`. A lock file (`updates.lock`, `resin-updates.lock`) that a
//! user container created blocks stopping or removing that app's services unless `force`.
//! helios's own lock files are owned by uid 65534 and carry a marker, so it can tell them apart
//! (also after a crash), and are `flock`ed while held.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The lock files, as containers see them: `/tmp/balena/updates.lock`, `/tmp/resin/resin-updates.lock`.
pub const LOCK_FILES: [&str; 2] = ["updates.lock", "resin-updates.lock"];
/// Owner of helios's own lock files (`nobody`), as the legacy supervisor does.
pub const AGENT_UID: u32 = 65534;
const MARKER: &[u8] = b"helios-update-lock\n";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("updates are locked for app {app} by {}", path.display())]
    Locked { app: String, path: PathBuf },
    #[error("update lock {} failed", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The locks helios holds, per app, for the duration of an apply.
#[derive(Debug)]
pub struct Locks {
    root: PathBuf,
    held: Mutex<BTreeMap<String, Vec<(PathBuf, File)>>>,
    /// Apps whose locks host operations keep ([`Locks::keep`]), with how many keep them
    /// (an OS update and a host-config change may overlap): `release` and `release_all` (the
    /// end of an apply) leave them until the last [`Locks::unkeep`].
    kept: Mutex<BTreeMap<String, u32>>,
    /// Apps whose locks an apply or a device API action took ([`Locks::take`]) and has not
    /// released: a host operation's last `unkeep` leaves those.
    taken: Mutex<std::collections::BTreeSet<String>>,
}

impl Locks {
    /// `runtime_dir` as this process sees it.
    pub fn new(runtime_dir: &Path) -> Locks {
        Locks {
            root: runtime_dir.join("update-locks"),
            held: Mutex::default(),
            kept: Mutex::default(),
            taken: Mutex::default(),
        }
    }

    pub fn dir(&self, app: &str) -> PathBuf {
        self.root.join(app)
    }

    /// Creates the app's lock directory (mode 1777, so any container user can lock).
    pub fn ensure_dir(&self, app: &str) -> Result<PathBuf, LockError> {
        let dir = self.dir(app);
        let io = |source| LockError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).map_err(io)?;
        Ok(dir)
    }

    fn is_ours(path: &Path) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return false;
        };
        meta.is_file()
            && (meta.uid() == AGENT_UID || std::fs::read(path).is_ok_and(|b| b == MARKER))
    }

    /// Lock files of the app that a user (not helios) created.
    pub fn user_locks(&self, app: &str) -> Vec<PathBuf> {
        LOCK_FILES
            .iter()
            .map(|f| self.dir(app).join(f))
            .filter(|p| std::fs::symlink_metadata(p).is_ok() && !Self::is_ours(p))
            .collect()
    }

    /// Lock paths helios holds for the app now.
    pub fn held(&self, app: &str) -> Vec<PathBuf> {
        let held = self.held.lock().expect("lock table is not poisoned");
        held.get(app)
            .map(|v| v.iter().map(|(p, _)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// Takes the app's locks for an apply or an action, until [`Locks::release`] (idempotent
    /// while held). A user lock fails with `Locked` unless `force`, which deletes it first.
    pub fn take(&self, app: &str, force: bool) -> Result<(), LockError> {
        self.acquire(app, force)?;
        self.taken
            .lock()
            .expect("taken set is not poisoned")
            .insert(app.to_string());
        Ok(())
    }

    /// Creates and flocks the app's lock files unless held already.
    fn acquire(&self, app: &str, force: bool) -> Result<(), LockError> {
        let mut held = self.held.lock().expect("lock table is not poisoned");
        if held.get(app).is_some_and(|v| v.len() == LOCK_FILES.len()) {
            return Ok(());
        }
        let dir = self.ensure_dir(app)?;
        let mut taken = vec![];
        for f in LOCK_FILES {
            let path = dir.join(f);
            let io = |source| LockError::Io {
                path: path.clone(),
                source,
            };
            if std::fs::symlink_metadata(&path).is_ok() {
                if Self::is_ours(&path) {
                    // Left by a previous run of helios: ours to reuse.
                    let _ = std::fs::remove_file(&path);
                } else if force {
                    log::warn!(app:% = app, path:% = path.display(), decision = "force",
                        reason = "force requested"; "Taking over a user update lock");
                    std::fs::remove_file(&path)
                        .or_else(|_| std::fs::remove_dir_all(&path))
                        .map_err(io)?;
                } else {
                    // Release what this attempt took; user files stay untouched.
                    for (p, _) in taken {
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(LockError::Locked {
                        app: app.to_string(),
                        path,
                    });
                }
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
                .map_err(io)?;
            file.write_all(MARKER).map_err(io)?;
            let _ = std::os::unix::fs::chown(&path, Some(AGENT_UID), Some(AGENT_UID));
            // SAFETY: flock on an fd we own.
            unsafe {
                libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB);
            }
            taken.push((path, file));
        }
        held.insert(app.to_string(), taken);
        Ok(())
    }

    /// Takes the app's locks (as [`Locks::take`]) and keeps them through other holders'
    /// releases until the matching [`Locks::unkeep`] (host operations run beside applies).
    pub fn keep(&self, app: &str, force: bool) -> Result<(), LockError> {
        self.acquire(app, force)?;
        *self
            .kept
            .lock()
            .expect("kept set is not poisoned")
            .entry(app.to_string())
            .or_default() += 1;
        Ok(())
    }

    /// Ends one [`Locks::keep`]; the last one releases the app's locks unless an apply still
    /// holds them.
    pub fn unkeep(&self, app: &str) {
        {
            let mut kept = self.kept.lock().expect("kept set is not poisoned");
            match kept.get_mut(app) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return;
                }
                _ => {
                    kept.remove(app);
                }
            }
        }
        self.drop_unused(app);
    }

    /// Ends a [`Locks::take`]: deletes the app's locks, and any lock files of ours left by a
    /// crash, unless a host operation keeps them.
    pub fn release(&self, app: &str) {
        self.taken
            .lock()
            .expect("taken set is not poisoned")
            .remove(app);
        self.drop_unused(app);
    }

    fn drop_unused(&self, app: &str) {
        let kept = self
            .kept
            .lock()
            .expect("kept set is not poisoned")
            .contains_key(app);
        let taken = self
            .taken
            .lock()
            .expect("taken set is not poisoned")
            .contains(app);
        if kept || taken {
            return;
        }
        let mut held = self.held.lock().expect("lock table is not poisoned");
        for (p, _) in held.remove(app).unwrap_or_default() {
            let _ = std::fs::remove_file(p);
        }
        for f in LOCK_FILES {
            let p = self.dir(app).join(f);
            if Self::is_ours(&p) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    pub fn release_all(&self) {
        let apps: Vec<String> = self
            .held
            .lock()
            .expect("lock table is not poisoned")
            .keys()
            .cloned()
            .collect();
        for a in apps {
            self.release(&a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_locks_outlive_releases_until_the_last_unkeep() {
        let d = tempfile::tempdir().unwrap();
        let locks = Locks::new(d.path());
        let file = locks.dir("app").join("updates.lock");
        locks.keep("app", false).unwrap();
        locks.keep("app", false).unwrap();
        locks.release_all();
        assert!(file.exists(), "an apply's release leaves kept locks");
        locks.unkeep("app");
        assert!(file.exists(), "one keeper is left");
        locks.release("app");
        assert!(file.exists());
        locks.unkeep("app");
        assert!(!file.exists(), "the last unkeep releases");
        assert!(locks.held("app").is_empty());

        // An apply holding the locks keeps them through a host operation's keep and unkeep.
        locks.take("app", false).unwrap();
        locks.keep("app", false).unwrap();
        locks.unkeep("app");
        assert!(file.exists(), "the apply still holds them");
        locks.release("app");
        assert!(!file.exists());
    }

    #[test]
    fn user_lock_blocks_unless_forced_and_ours_are_released() {
        let d = tempfile::tempdir().unwrap();
        let locks = Locks::new(d.path());
        locks.take("app", false).unwrap();
        assert_eq!(locks.held("app").len(), 2);
        assert!(
            locks.user_locks("app").is_empty(),
            "our own locks are not user locks"
        );
        locks.release("app");
        assert!(locks.held("app").is_empty());
        assert!(!locks.dir("app").join("updates.lock").exists());

        std::fs::write(locks.dir("app").join("updates.lock"), b"").unwrap();
        assert_eq!(locks.user_locks("app").len(), 1);
        let e = locks.take("app", false).unwrap_err();
        assert!(matches!(e, LockError::Locked { .. }), "{e}");
        assert!(
            locks.dir("app").join("updates.lock").exists(),
            "user file untouched"
        );
        assert!(
            !locks.dir("app").join("resin-updates.lock").exists(),
            "partial take undone"
        );
        locks.take("app", true).unwrap();
        assert!(locks.user_locks("app").is_empty());
        locks.release_all();
        assert!(!locks.dir("app").join("updates.lock").exists());
    }

    #[test]
    fn kept_locks_survive_other_releases_until_unkept() {
        let d = tempfile::tempdir().unwrap();
        let locks = Locks::new(d.path());
        locks.keep("app", false).unwrap();
        locks.take("app", false).unwrap();
        locks.release_all();
        locks.release("app");
        assert_eq!(
            locks.held("app").len(),
            2,
            "kept through an apply's release"
        );
        assert!(locks.dir("app").join("updates.lock").exists());
        locks.unkeep("app");
        assert!(locks.held("app").is_empty());
        assert!(!locks.dir("app").join("updates.lock").exists());
    }
}
