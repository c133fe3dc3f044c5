//! Writes the schema-1 fixture store used by the migration and store tests.
//!
//! Usage: `cargo run -p helios-migrations --example write_schema1_fixture -- <dir>`
//!
//! This is deliberately frozen schema-1 code: it writes the first store layout
//! (everything in sled's default tree, no `meta` tree) with literal keys, and must
//! not follow later changes to the crate. `<dir>` must not exist yet.

use std::path::PathBuf;
use std::process::ExitCode;

/// The target document of the fixture; the tests compare against the same literal.
const TARGET: &str = r#"{"name":"fixture-device","apps":{"app-uuid-1":{"id":1,"name":"fixture-app","releases":{}}}}"#;
/// A strong ETag, quotes included, as the cloud sends it.
const ETAG: &str = "\"fixture-etag-1\"";
const CURRENT: &str = r#"{"name":"fixture-device","apps":{}}"#;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: write_schema1_fixture <dir>");
        return ExitCode::from(2);
    };
    if dir.exists() {
        eprintln!("{} already exists; remove it first", dir.display());
        return ExitCode::from(2);
    }
    match write(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write schema-1 fixture to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &std::path::Path) -> sled::Result<()> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(8 * 1024 * 1024)
        .open()?;
    db.insert("target", TARGET.as_bytes())?;
    db.insert("target_etag", ETAG.as_bytes())?;
    db.insert("current", CURRENT.as_bytes())?;
    db.flush()?;
    Ok(())
}
