//! Unfinished-work markers: a small file that exists while a step runs that could take the
//! process down with it (release builds abort on panic, `panic = "abort"` in Cargo.toml). A
//! start that finds the marker knows how many earlier processes died inside that step for the
//! same key, and stops repeating a step that crashes every time instead of crash-looping.
//!
//! File format: `<count> <key>\n`, written whole (temp file + rename), no fsync: the markers
//! live where a lost write costs one more attempt at most.
//!
//! Three steps use them, those that a restart would run again and that could crash again; steps
//! on a document key their marker by the document's [`digest`]:
//! - **Opening the store** (ports/store.rs; sled may panic on damaged files):
//!   `<store dir>/helios-opening`, key `open`, inside the store dir because a hardened unit may
//!   write nowhere else. After [`REPEATED`] deaths the store is moved aside and rebuilt
//!   (`decision=move-aside`): the directory renamed to `<dir>.corrupt-<secs>[-n]`, or, where
//!   that fails (the store dir is a mount point, as a systemd `StateDirectory` or a container
//!   volume, or its parent is read-only), its contents moved into `<dir>/corrupt-<secs>[-n]`,
//!   which later opens ignore.
//! - **Planning the target** (seek/mod.rs; a planner panic): `<runtime dir>/helios-planning`,
//!   keyed by the target's digest (FNV-1a of its JSON, the `digest` field of `Plan computed`).
//!   Written right before the planner runs and removed inside its blocking task when it
//!   returns, so an interrupted apply does not end the marker of a planning still running; a
//!   planning of that target that completed in this process needs no marker again (the drift
//!   checks that follow write nothing, and the runtime dir is a tmpfs: an idle device still
//!   writes nothing to disk). After [`REPEATED`] deaths the target is given up without
//!   planning (`decision=give_up`, status `aborted`, stored as `seek/given-up`), and tried
//!   again when it changes or on a forced update.
//! - **Converting a cloud document** (poll/mod.rs; split and conversion of an untrusted
//!   document): `<runtime dir>/helios-converting`, keyed by the document's digest. After
//!   [`REPEATED`] deaths the document is given up (`decision=give_up`, rejected as an unusable
//!   document: status `rejected`, its ETag kept so it is not fetched again, what runs stays).
//!
//! One death is retried: it may have been a power cut or a kill. A step removes its marker when
//! it ends while the process lives, also when a panic unwinds through it (test and debug
//! builds, where the store's `catch_unwind` and Seek's `JoinError` path recover in-process),
//! and only its own: a later step for another key may have replaced it.
use std::io;
use std::path::{Path, PathBuf};

/// Earlier deaths in the same step for the same key after which it is not tried again: one
/// death may be a power cut or a kill, two in a row are the step itself.
pub const REPEATED: u32 = 2;

/// A step in progress. Dropping it (the step ended and the process is alive, also when a
/// panic unwinds through it) removes the marker; an abort or a kill leaves it.
#[derive(Debug)]
pub struct Unfinished {
    path: PathBuf,
    key: String,
}

impl Unfinished {
    /// Marks the step for `key` as running and returns how many earlier processes started it
    /// for the same key without finishing (0 when the marker is absent or names another key).
    pub fn begin(path: &Path, key: &str) -> io::Result<(Unfinished, u32)> {
        let died = earlier(path, key);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {key}\n", died.saturating_add(1)))?;
        std::fs::rename(&tmp, path)?;
        Ok((
            Unfinished {
                path: path.to_owned(),
                key: key.to_owned(),
            },
            died,
        ))
    }
}

impl Drop for Unfinished {
    /// Removes the marker if it is still this step's (a later step for another key may have
    /// replaced it meanwhile: that one stays).
    fn drop(&mut self) {
        if earlier(&self.path, &self.key) > 0 {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// FNV-1a of a JSON document's text (serde_json maps are sorted): the same document gives the
/// same digest in every process.
pub fn digest(doc: &serde_json::Value) -> u64 {
    doc.to_string().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How many processes died in the step for `key`, as the marker at `path` says.
pub fn earlier(path: &Path, key: &str) -> u32 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let line = text.trim_end_matches('\n');
    match line.split_once(' ') {
        Some((n, k)) if k == key => n.parse().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_deaths_per_key_and_forgets_finished_steps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("step");
        let (m, died) = Unfinished::begin(&p, "a").unwrap();
        assert_eq!(died, 0);
        // The process "dies": the marker stays, and the next start sees one death.
        std::mem::forget(m);
        let (m, died) = Unfinished::begin(&p, "a").unwrap();
        assert_eq!(died, 1);
        std::mem::forget(m);
        assert_eq!(earlier(&p, "a"), 2);
        // Another key starts from zero; the step it replaced ending leaves it alone.
        let (old, _) = Unfinished::begin(&p, "a").unwrap();
        let (m, died) = Unfinished::begin(&p, "b").unwrap();
        assert_eq!(died, 0);
        drop(old);
        assert_eq!(earlier(&p, "b"), 1, "another key's marker stays");
        drop(m);
        assert!(!p.exists());
        assert_eq!(earlier(&p, "b"), 0);
        assert!(!p.with_extension("tmp").exists());
    }

    #[test]
    fn a_garbled_marker_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("step");
        std::fs::write(&p, "x y z").unwrap();
        assert_eq!(earlier(&p, "y z"), 0);
        std::fs::write(&p, "").unwrap();
        assert_eq!(earlier(&p, ""), 0);
    }
}
