//! Migration 1 -> 2: wraps the target document and its ETag into one envelope in tree `state`.
//!
//! Schema 1 kept `target` (raw JSON), `target_etag` (UTF-8) and `current` (raw JSON)
//! in sled's default tree. Schema 2 stores `state/target` =
//! `{"target": <doc>, "etag": <string|null>, "stored_at_ms": <u64>}` so that a restart
//! can still send `If-None-Match`, moves `current` to `state/current` unchanged, and
//! removes the three default-tree keys. `stored_at_ms` is the migration time: schema 1
//! did not record when the target was stored. An ETag without a target is dropped.
//!
//! Frozen: this file describes schema 1 and 2 as they were and must not follow later
//! changes to the store layout.

use std::time::{SystemTime, UNIX_EPOCH};

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use crate::MigrationError;

pub(crate) const NAME: &str = "m0002_target_envelope";

/// Schema-1 keys, in sled's default tree.
pub(crate) const V1_TARGET: &str = "target";
pub(crate) const V1_TARGET_ETAG: &str = "target_etag";
pub(crate) const V1_CURRENT: &str = "current";

/// Schema-2 layout.
const V2_STATE_TREE: &str = "state";
const V2_TARGET: &str = "target";
const V2_CURRENT: &str = "current";

type TxResult<T> = Result<T, ConflictableTransactionError<MigrationError>>;

pub(crate) fn run(db: &sled::Db) -> Result<(), MigrationError> {
    let state = db.open_tree(V2_STATE_TREE)?;
    let meta = db.open_tree(crate::META_TREE)?;
    let stored_at_ms = now_ms();
    (&**db, &state, &meta).transaction(|(default, state, meta)| {
        migrate_in(default, state, stored_at_ms)?;
        crate::set_version(meta, 2)?;
        Ok(())
    })?;
    Ok(())
}

fn migrate_in(
    default: &TransactionalTree,
    state: &TransactionalTree,
    stored_at_ms: u64,
) -> TxResult<()> {
    let target = default.get(V1_TARGET)?;
    let etag = default.get(V1_TARGET_ETAG)?;
    let current = default.get(V1_CURRENT)?;

    if let Some(target) = target {
        let doc = parse_json(V1_TARGET, &target)?;
        let etag = etag
            .map(|e| {
                std::str::from_utf8(&e)
                    .map(str::to_owned)
                    .map_err(|source| {
                        abort(MigrationError::InvalidUtf8 {
                            key: V1_TARGET_ETAG.to_owned(),
                            source,
                        })
                    })
            })
            .transpose()?;
        let envelope = serde_json::json!({
            "target": doc,
            "etag": etag,
            "stored_at_ms": stored_at_ms,
        });
        let bytes = serde_json::to_vec(&envelope).expect("a serde_json::Value always serializes");
        state.insert(V2_TARGET, bytes)?;
    }
    if let Some(current) = current {
        parse_json(V1_CURRENT, &current)?;
        state.insert(V2_CURRENT, current)?;
    }
    for key in [V1_TARGET, V1_TARGET_ETAG, V1_CURRENT] {
        default.remove(key)?;
    }
    Ok(())
}

fn parse_json(key: &str, bytes: &[u8]) -> TxResult<serde_json::Value> {
    serde_json::from_slice(bytes).map_err(|source| {
        abort(MigrationError::InvalidJson {
            key: key.to_owned(),
            source,
        })
    })
}

fn abort(e: MigrationError) -> ConflictableTransactionError<MigrationError> {
    ConflictableTransactionError::Abort(e)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::tests::temp_db;
    use crate::{migrate, stored_version, MigrationReport, CURRENT, META_TREE, SCHEMA_VERSION_KEY};

    fn envelope(db: &sled::Db) -> Option<Value> {
        db.open_tree(V2_STATE_TREE)
            .unwrap()
            .get(V2_TARGET)
            .unwrap()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn target_without_etag_gets_null_etag() {
        let (_dir, db) = temp_db();
        db.insert(V1_TARGET, br#"{"name":"d"}"#.as_ref()).unwrap();
        migrate(&db).unwrap();
        let env = envelope(&db).unwrap();
        assert_eq!(env["target"], json!({"name":"d"}));
        assert_eq!(env["etag"], Value::Null);
    }

    #[test]
    fn no_target_just_moves_current() {
        let (_dir, db) = temp_db();
        db.insert(V1_CURRENT, br#"{"apps":{}}"#.as_ref()).unwrap();
        db.insert(V1_TARGET_ETAG, b"\"orphan\"".as_ref()).unwrap();
        let report = migrate(&db).unwrap();
        assert_eq!(report.found, Some(1));
        assert_eq!(envelope(&db), None);
        let current = db
            .open_tree(V2_STATE_TREE)
            .unwrap()
            .get(V2_CURRENT)
            .unwrap()
            .unwrap();
        assert_eq!(&*current, br#"{"apps":{}}"#);
        assert!(db.is_empty());
    }

    #[test]
    fn explicitly_stamped_schema_1_migrates() {
        let (_dir, db) = temp_db();
        db.open_tree(META_TREE)
            .unwrap()
            .insert(SCHEMA_VERSION_KEY, &1u32.to_be_bytes())
            .unwrap();
        db.insert(V1_TARGET, b"{}".as_ref()).unwrap();
        let report = migrate(&db).unwrap();
        assert_eq!(
            report,
            MigrationReport {
                found: Some(1),
                to: CURRENT,
                applied: vec![NAME]
            }
        );
        assert_eq!(envelope(&db).unwrap()["target"], json!({}));
    }

    #[test]
    fn stamped_schema_1_without_data_migrates() {
        let (_dir, db) = temp_db();
        db.open_tree(META_TREE)
            .unwrap()
            .insert(SCHEMA_VERSION_KEY, &1u32.to_be_bytes())
            .unwrap();
        assert_eq!(migrate(&db).unwrap().applied, vec![NAME]);
        assert_eq!(stored_version(&db).unwrap(), Some(2));
    }

    #[test]
    fn invalid_json_names_the_key_and_changes_nothing() {
        for bad_key in [V1_TARGET, V1_CURRENT] {
            let (_dir, db) = temp_db();
            db.insert(V1_TARGET, br#"{"name":"d"}"#.as_ref()).unwrap();
            db.insert(V1_CURRENT, b"{}".as_ref()).unwrap();
            db.insert(bad_key, b"{not json".as_ref()).unwrap();
            // Opening a tree changes the checksum; the migration opens these two.
            db.open_tree(V2_STATE_TREE).unwrap();
            db.open_tree(META_TREE).unwrap();
            let checksum = db.checksum().unwrap();

            let err = migrate(&db).unwrap_err();
            assert!(
                matches!(&err, MigrationError::InvalidJson { key, .. } if key == bad_key),
                "{err:?}"
            );
            assert!(err.to_string().contains(&format!("{bad_key:?}")), "{err}");
            // The transaction aborted: still schema 1, nothing moved.
            assert_eq!(stored_version(&db).unwrap(), Some(1));
            assert_eq!(db.checksum().unwrap(), checksum);
        }
    }

    #[test]
    fn etag_that_is_not_utf8_names_the_key() {
        let (_dir, db) = temp_db();
        db.insert(V1_TARGET, b"{}".as_ref()).unwrap();
        db.insert(V1_TARGET_ETAG, b"\xff\xfe".as_ref()).unwrap();
        let err = migrate(&db).unwrap_err();
        assert!(
            matches!(&err, MigrationError::InvalidUtf8 { key, .. } if key == V1_TARGET_ETAG),
            "{err:?}"
        );
    }
}
