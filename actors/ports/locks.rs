//! Update locks (spec/helios-api-v3.md §7.3, spec/behaviours.md §7): one directory per app,
//! `<runtime dir>/update-locks/<app uuid>/`, bind-mounted into every service container at
//! `/tmp/balena` and `/tmp/resin`. A lock file (`updates.lock`, `resin-updates.lock`) that a
//! user container created blocks stopping or removing that app's services unless `force`.
//! helios's own lock files are owned by uid 65534 and carry a marker, so it can tell them apart
//! (also after a crash), and are `flock`ed while held.
//!
//! The directory is writable by every container (a root one too), so whatever sits at a lock
//! path is hostile input: it is only ever looked at through [`inspect`] (no link followed, no
//! FIFO or device opened, at most [`MARKER`]'s length + 1 bytes read, never blocking), and
//! helios's own files are chowned through their descriptor. Anything but a small regular file
//! of ours is a user lock (spec/behaviours.md §7.1: a file or directory of that name is a lock,
//! links are not followed), which is the safe answer: it holds updates off.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The lock files, as containers see them: `/tmp/balena/updates.lock`, `/tmp/resin/resin-updates.lock`.
pub const LOCK_FILES: [&str; 2] = ["updates.lock", "resin-updates.lock"];
/// Owner of helios's own lock files (`nobody`), as the legacy supervisor does.
pub const AGENT_UID: u32 = 65534;
/// What helios writes into its own lock files.
pub const MARKER: &[u8] = b"helios-update-lock\n";

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
        inspect(path) == Entry::Ours
    }

    /// Lock files of the app that a user (not helios) created. Runs on the render path of the
    /// current state (SeekActor's thread): [`inspect`] cannot block.
    pub fn user_locks(&self, app: &str) -> Vec<PathBuf> {
        LOCK_FILES
            .iter()
            .map(|f| self.dir(app).join(f))
            .filter(|p| matches!(inspect(p), Entry::User(_)))
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
            match inspect(&path) {
                Entry::Absent => {}
                // Left by a previous run of helios: ours to reuse.
                Entry::Ours => {
                    let _ = std::fs::remove_file(&path);
                }
                Entry::User(kind) if force => {
                    log::warn!(app:% = app, path:% = path.display(), kind, decision = "force",
                        reason = "force requested"; "Taking over a user update lock");
                    std::fs::remove_file(&path)
                        .or_else(|_| std::fs::remove_dir_all(&path))
                        .map_err(io)?;
                }
                Entry::User(_) => {
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
            // O_EXCL: a link planted meanwhile fails the create instead of being followed.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(io)?;
            file.write_all(MARKER).map_err(io)?;
            // Through the descriptor: whatever the path names by now is never chowned.
            let _ = std::os::unix::fs::fchown(&file, Some(AGENT_UID), Some(AGENT_UID));
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

/// What a lock path holds, as [`inspect`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Absent,
    /// A lock file helios created: a regular file owned by [`AGENT_UID`] or holding [`MARKER`].
    Ours,
    /// Anything else is a lock a user holds; the kind of entry found.
    User(&'static str),
}

/// Looks at a lock path without following a link, opening anything but a regular file,
/// blocking, or reading more than [`MARKER`]'s length + 1 bytes: `O_NOFOLLOW | O_NONBLOCK`,
/// then `fstat` of the descriptor (the entry may have been swapped since the `lstat`).
pub fn inspect(path: &Path) -> Entry {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Entry::Absent,
        Err(_) => return user(path, "unreadable"),
    };
    if !meta.file_type().is_file() {
        return user(path, kind(&meta.file_type()));
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Entry::Absent,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return user(path, "symlink"),
        Err(_) => return user(path, "unreadable"),
    };
    let Ok(meta) = file.metadata() else {
        return user(path, "unreadable");
    };
    if !meta.file_type().is_file() {
        return user(path, kind(&meta.file_type()));
    }
    if meta.uid() == AGENT_UID {
        return Entry::Ours;
    }
    if meta.len() != MARKER.len() as u64 {
        return Entry::User("file");
    }
    let mut head = Vec::with_capacity(MARKER.len() + 1);
    match file.take(MARKER.len() as u64 + 1).read_to_end(&mut head) {
        Ok(_) if head == MARKER => Entry::Ours,
        Ok(_) => Entry::User("file"),
        Err(_) => user(path, "unreadable"),
    }
}

fn kind(t: &std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "file"
    }
}

/// An entry that is no plain file: a user lock, never opened or read.
fn user(path: &Path, kind: &'static str) -> Entry {
    log::debug!(path:% = path.display(), kind, decision = "user-lock",
        reason = "not a regular file helios created; not followed or read"; "Update lock inspected");
    Entry::User(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Bytes this process read through read(2) so far (`rchar` of /proc/self/io).
    fn bytes_read() -> u64 {
        std::fs::read_to_string("/proc/self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    }

    #[test]
    fn a_huge_sparse_lock_file_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let locks = Locks::new(d.path());
        let lock = locks.ensure_dir("app").unwrap().join("updates.lock");
        // 1 GiB: main's whole read would allocate it; 64 GiB: the case.
        for size in [1u64 << 30, 64 << 30] {
            File::create(&lock).unwrap().set_len(size).unwrap();
            let before = bytes_read();
            assert_eq!(locks.user_locks("app"), vec![lock.clone()], "a user lock");
            assert_eq!(inspect(&lock), Entry::User("file"));
            let read = bytes_read() - before;
            assert!(read < 4096, "{read} bytes of a {size}-byte lock file read");
        }
    }

    #[test]
    fn odd_entries_are_user_locks_and_only_our_marker_file_is_ours() {
        let d = tempfile::tempdir().unwrap();
        let locks = Locks::new(d.path());
        let dir = locks.ensure_dir("app").unwrap();
        let lock = dir.join("updates.lock");
        assert_eq!(inspect(&lock), Entry::Absent);

        // A link to a file holding our marker is not followed: a user lock.
        let host = d.path().join("host-file");
        std::fs::write(&host, MARKER).unwrap();
        std::os::unix::fs::symlink(&host, &lock).unwrap();
        assert_eq!(inspect(&lock), Entry::User("symlink"));
        std::fs::remove_file(&lock).unwrap();

        // A FIFO (no writer) and a link to one answer at once.
        mkfifo(&lock);
        assert_eq!(inspect(&lock), Entry::User("fifo"));
        std::fs::remove_file(&lock).unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        std::os::unix::fs::symlink(&fifo, &lock).unwrap();
        assert_eq!(inspect(&lock), Entry::User("symlink"));
        std::fs::remove_file(&lock).unwrap();

        std::fs::create_dir(&lock).unwrap();
        assert_eq!(inspect(&lock), Entry::User("directory"));
        std::fs::remove_dir(&lock).unwrap();

        // Our marker (a crash's leftover, owned by root here) is ours.
        std::fs::write(&lock, MARKER).unwrap();
        assert_eq!(inspect(&lock), Entry::Ours);
        std::fs::write(&lock, b"helios-update-lock\nX").unwrap();
        assert_eq!(inspect(&lock), Entry::User("file"));
    }

    /// A container swaps the lock path between a plain file and a link to a FIFO while the
    /// state is rendered: the render never blocks on the FIFO.
    #[test]
    fn a_fifo_swapped_in_does_not_hang_the_render() {
        let d = tempfile::tempdir().unwrap();
        let locks = std::sync::Arc::new(Locks::new(d.path()));
        let dir = locks.ensure_dir("app").unwrap();
        let lock = dir.join("updates.lock");
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (dir, lock, fifo, stop) = (dir.clone(), lock.clone(), fifo.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (file, link) = (dir.join("f.tmp"), dir.join("l.tmp"));
                    // As long as our marker, so that only reading it tells.
                    std::fs::write(&file, b"not-a-helios-lock!\n").unwrap();
                    std::fs::rename(&file, &lock).unwrap();
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&fifo, &link).unwrap();
                    std::fs::rename(&link, &lock).unwrap();
                }
            })
        };
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let locks = locks.clone();
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while std::time::Instant::now() < deadline {
                    std::hint::black_box(locks.user_locks("app"));
                }
                let _ = tx.send(());
            });
        }
        let done = rx.recv_timeout(Duration::from_secs(20));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Unblock a render stuck opening the FIFO, so the test process can end.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        swapper.join().unwrap();
        assert!(done.is_ok(), "rendering the locks hung on a FIFO");
    }

    /// A root container swaps our fresh lock file for a link to a host file: the host file is
    /// never chowned to helios's uid.
    #[test]
    fn a_link_swapped_in_is_not_chowned() {
        let d = tempfile::tempdir().unwrap();
        let locks = std::sync::Arc::new(Locks::new(d.path()));
        let dir = locks.ensure_dir("app").unwrap();
        let lock = dir.join("updates.lock");
        let host = d.path().join("host-file");
        std::fs::write(&host, b"host").unwrap();
        let owner = std::fs::metadata(&host).unwrap().uid();
        assert_ne!(owner, AGENT_UID);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (dir, lock, host, stop) = (dir.clone(), lock.clone(), host.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let link = dir.join("l.tmp");
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&host, &link).unwrap();
                    let _ = std::fs::rename(&link, &lock);
                }
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline
            && std::fs::metadata(&host).unwrap().uid() == owner
        {
            let _ = locks.take("app", true);
            locks.release("app");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(
            std::fs::metadata(&host).unwrap().uid(),
            owner,
            "a host file was chowned through a link in the lock dir"
        );
    }

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
