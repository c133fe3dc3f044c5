//! Migrates a copy of the committed schema-1 fixture store (see `examples/write_schema1_fixture.rs`).

use std::path::{Path, PathBuf};

use helios_migrations::{
    migrate, stored_version, MigrationReport, CURRENT, STATE_TREE, TARGET_KEY,
};
use serde_json::{json, Value};

const FIXTURE_ETAG: &str = "\"fixture-etag-1\"";

fn fixture_target() -> Value {
    json!({"name":"fixture-device","apps":{"app-uuid-1":{"id":1,"name":"fixture-app","releases":{}}}})
}

fn fixture_current() -> Value {
    json!({"name":"fixture-device","apps":{}})
}

/// Copies the fixture into a temp dir so the committed files are never opened by sled.
fn open_fixture_copy() -> (tempfile::TempDir, sled::Db) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/schema1");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dst = tmp.path().join("store");
    copy_dir(&src, &dst);
    let db = sled::Config::new()
        .path(&dst)
        .cache_capacity(1 << 20)
        .open()
        .expect("open fixture copy");
    (tmp, db)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create copy dir");
    for entry in std::fs::read_dir(src).expect("read fixture dir") {
        let entry = entry.expect("fixture dir entry");
        let to: PathBuf = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy fixture file");
        }
    }
}

#[test]
fn fixture_is_schema_1() {
    let (_tmp, db) = open_fixture_copy();
    assert_eq!(stored_version(&db).unwrap(), Some(1));
    assert_eq!(
        serde_json::from_slice::<Value>(&db.get("target").unwrap().unwrap()).unwrap(),
        fixture_target()
    );
}

#[test]
fn fixture_migrates_to_current_with_target_and_etag_in_the_envelope() {
    let (_tmp, db) = open_fixture_copy();
    let report = migrate(&db).unwrap();
    assert_eq!(
        report,
        MigrationReport {
            found: Some(1),
            to: CURRENT,
            applied: vec!["m0002_target_envelope"]
        }
    );
    assert_eq!(stored_version(&db).unwrap(), Some(2));

    let state = db.open_tree(STATE_TREE).unwrap();
    let envelope: Value = serde_json::from_slice(&state.get(TARGET_KEY).unwrap().unwrap()).unwrap();
    let obj = envelope.as_object().expect("envelope is an object");
    assert_eq!(obj.len(), 3, "{envelope}");
    assert_eq!(obj["target"], fixture_target());
    assert_eq!(obj["etag"], json!(FIXTURE_ETAG));
    assert!(
        obj["stored_at_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000),
        "{envelope}"
    );

    let current: Value = serde_json::from_slice(&state.get("current").unwrap().unwrap()).unwrap();
    assert_eq!(current, fixture_current());
    assert!(db.is_empty(), "schema-1 keys left in the default tree");
}

#[test]
fn migrating_twice_is_a_no_op() {
    let (_tmp, db) = open_fixture_copy();
    migrate(&db).unwrap();
    let checksum = db.checksum().unwrap();
    let envelope = db.open_tree(STATE_TREE).unwrap().get(TARGET_KEY).unwrap();
    db.flush().unwrap();

    let again = migrate(&db).unwrap();
    assert_eq!(
        again,
        MigrationReport {
            found: Some(CURRENT),
            to: CURRENT,
            applied: vec![]
        }
    );
    assert!(!again.migrated());
    assert_eq!(db.checksum().unwrap(), checksum);
    assert_eq!(
        db.open_tree(STATE_TREE).unwrap().get(TARGET_KEY).unwrap(),
        envelope
    );
    assert_eq!(db.flush().unwrap(), 0, "second migrate wrote to the store");
}
