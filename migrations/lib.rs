//! Ordered migrations of the helios sled store, one file per migration.
//!
//! The store keeps its schema version in tree [`META_TREE`] under
//! [`SCHEMA_VERSION_KEY`] as a big-endian `u32`. [`migrate`] reads it, applies
//! every migration from there up to [`CURRENT`] in order (each one atomic, its
//! version bump included) and stamps an empty store with [`CURRENT`].
//!
//! Schema history:
//! - **1**: everything in sled's default tree: `target` (raw JSON of the target
//!   document), `target_etag` (UTF-8, optional), `current` (raw JSON); no
//!   version stamp, or `meta/schema_version` = 1.
//! - **2** ([`CURRENT`]): tree [`STATE_TREE`]: [`TARGET_KEY`] holds the envelope
//!   `{"target": <doc>, "etag": <string|null>, "stored_at_ms": <u64>}`, every other
//!   key (e.g. [`CURRENT_KEY`]) plain JSON; the default tree is empty.

mod m0002_target_envelope;

use log::{debug, info};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

/// The schema version this build reads and writes.
pub const CURRENT: u32 = 2;
/// Tree holding the schema version.
pub const META_TREE: &str = "meta";
/// Key of the schema version (big-endian `u32`) in [`META_TREE`].
pub const SCHEMA_VERSION_KEY: &str = "schema_version";
/// Tree holding the agent's documents (schema 2).
pub const STATE_TREE: &str = "state";
/// Key of the target envelope in [`STATE_TREE`] (schema 2).
pub const TARGET_KEY: &str = "target";
/// Key of the last known current state in [`STATE_TREE`] (schema 2).
pub const CURRENT_KEY: &str = "current";

/// One step from schema `from` to schema `to`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub from: u32,
    pub to: u32,
    pub name: &'static str,
    /// Applies the migration atomically, version bump included.
    run: fn(&sled::Db) -> Result<(), MigrationError>,
}

/// Every migration, ordered by `from`.
pub const MIGRATIONS: &[Migration] = &[Migration {
    from: 1,
    to: 2,
    name: m0002_target_envelope::NAME,
    run: m0002_target_envelope::run,
}];

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Schema version found on disk; `None` for an empty (fresh) store.
    pub found: Option<u32>,
    /// Schema version after migrating: always [`CURRENT`].
    pub to: u32,
    /// Names of the migrations applied, in order.
    pub applied: Vec<&'static str>,
}

impl MigrationReport {
    /// The store was empty and has just been stamped with [`CURRENT`].
    pub fn is_fresh(&self) -> bool {
        self.found.is_none()
    }

    /// At least one migration ran.
    pub fn migrated(&self) -> bool {
        !self.applied.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("store schema {found} is newer than the newest this agent knows ({current})")]
    TooNew { found: u32, current: u32 },
    #[error("no migration from store schema {found}")]
    NoMigration { found: u32 },
    #[error("schema version in {META_TREE}/{SCHEMA_VERSION_KEY} is {len} bytes long, expected 4")]
    BadVersion { len: usize },
    #[error("store has data outside the default tree but no schema version (trees: {trees})")]
    Unversioned { trees: String },
    #[error("value under key {key:?} is not valid JSON")]
    InvalidJson {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("value under key {key:?} is not valid UTF-8")]
    InvalidUtf8 {
        key: String,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("read or write the store")]
    Sled(#[source] sled::Error),
}

impl From<sled::Error> for MigrationError {
    fn from(e: sled::Error) -> Self {
        MigrationError::Sled(e)
    }
}

impl From<TransactionError<MigrationError>> for MigrationError {
    fn from(e: TransactionError<MigrationError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => MigrationError::Sled(e),
        }
    }
}

/// Brings `db` to [`CURRENT`]: stamps an empty store, applies the migrations
/// from the stored version on, in order, and flushes once if anything changed.
pub fn migrate(db: &sled::Db) -> Result<MigrationReport, MigrationError> {
    let found = stored_version(db)?;
    let Some(found) = found else {
        db.open_tree(META_TREE)?
            .insert(SCHEMA_VERSION_KEY, &CURRENT.to_be_bytes())?;
        db.flush()?;
        debug!(to = CURRENT, decision = "stamp"; "Store stamped");
        return Ok(MigrationReport {
            found: None,
            to: CURRENT,
            applied: Vec::new(),
        });
    };
    if found > CURRENT {
        return Err(MigrationError::TooNew {
            found,
            current: CURRENT,
        });
    }
    let mut applied = Vec::new();
    let mut version = found;
    while version < CURRENT {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.from == version)
            .ok_or(MigrationError::NoMigration { found: version })?;
        (m.run)(db)?;
        info!(from = m.from, to = m.to, name = m.name, decision = "migrate"; "Store migrated");
        applied.push(m.name);
        version = m.to;
    }
    if !applied.is_empty() {
        db.flush()?;
    }
    Ok(MigrationReport {
        found: Some(found),
        to: CURRENT,
        applied,
    })
}

/// The schema version stored in `db`: `None` when every tree is empty,
/// 1 for an unstamped store with data only in the default tree (the first layout).
pub fn stored_version(db: &sled::Db) -> Result<Option<u32>, MigrationError> {
    if let Some(v) = db.open_tree(META_TREE)?.get(SCHEMA_VERSION_KEY)? {
        return decode_version(&v).map(Some);
    }
    let mut non_empty = Vec::new();
    for name in db.tree_names() {
        if !db.open_tree(&name)?.is_empty() {
            non_empty.push(name);
        }
    }
    let default: &[u8] = &db.name();
    match non_empty.as_slice() {
        [] => Ok(None),
        [only] if only.as_ref() == default => Ok(Some(1)),
        trees => Err(MigrationError::Unversioned {
            trees: trees
                .iter()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect::<Vec<_>>()
                .join(","),
        }),
    }
}

fn decode_version(bytes: &[u8]) -> Result<u32, MigrationError> {
    let arr: [u8; 4] = bytes
        .try_into()
        .map_err(|_| MigrationError::BadVersion { len: bytes.len() })?;
    Ok(u32::from_be_bytes(arr))
}

/// Writes the version bump inside a migration's transaction.
fn set_version(
    meta: &TransactionalTree,
    to: u32,
) -> Result<(), ConflictableTransactionError<MigrationError>> {
    meta.insert(SCHEMA_VERSION_KEY, &to.to_be_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn temp_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path().join("store"))
            .cache_capacity(1 << 20)
            .open()
            .expect("open temp db");
        (dir, db)
    }

    #[test]
    fn fresh_db_is_stamped_current_without_migrations() {
        let (_dir, db) = temp_db();
        let report = migrate(&db).unwrap();
        assert_eq!(
            report,
            MigrationReport {
                found: None,
                to: CURRENT,
                applied: vec![]
            }
        );
        assert!(report.is_fresh());
        assert_eq!(stored_version(&db).unwrap(), Some(CURRENT));
        // A stamped db with no documents is not fresh any more.
        let again = migrate(&db).unwrap();
        assert_eq!(
            again,
            MigrationReport {
                found: Some(CURRENT),
                to: CURRENT,
                applied: vec![]
            }
        );
    }

    #[test]
    fn too_new_db_is_an_error() {
        let (_dir, db) = temp_db();
        db.open_tree(META_TREE)
            .unwrap()
            .insert(SCHEMA_VERSION_KEY, &(CURRENT + 1).to_be_bytes())
            .unwrap();
        let err = migrate(&db).unwrap_err();
        assert!(
            matches!(err, MigrationError::TooNew { found, current } if found == CURRENT + 1 && current == CURRENT),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_version_is_an_error() {
        let (_dir, db) = temp_db();
        db.open_tree(META_TREE)
            .unwrap()
            .insert(SCHEMA_VERSION_KEY, &0u32.to_be_bytes())
            .unwrap();
        assert!(matches!(
            migrate(&db),
            Err(MigrationError::NoMigration { found: 0 })
        ));
    }

    #[test]
    fn malformed_version_is_an_error() {
        let (_dir, db) = temp_db();
        db.open_tree(META_TREE)
            .unwrap()
            .insert(SCHEMA_VERSION_KEY, b"2".as_ref())
            .unwrap();
        assert!(matches!(
            migrate(&db),
            Err(MigrationError::BadVersion { len: 1 })
        ));
    }

    #[test]
    fn unversioned_data_outside_default_tree_is_an_error() {
        let (_dir, db) = temp_db();
        db.open_tree(STATE_TREE)
            .unwrap()
            .insert(CURRENT_KEY, b"{}".as_ref())
            .unwrap();
        let err = migrate(&db).unwrap_err();
        assert!(
            matches!(&err, MigrationError::Unversioned { trees } if trees == STATE_TREE),
            "{err:?}"
        );
    }
}
