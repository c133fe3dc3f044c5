//! ARCHITECTURE.md stays true of the tree: its code map names every source folder and file
//! (tests.rs files aside) and names nothing that does not exist; its store schema lists exactly
//! the keys the store knows (`helios_actors::ports::store::keys::ALL`).
use std::collections::BTreeSet;
use std::path::Path;

fn architecture() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the section `## <title>` (up to the next `## `).
fn section<'a>(doc: &'a str, title: &str) -> &'a str {
    let head = format!("\n## {title}\n");
    let start = doc
        .find(&head)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no section {title:?}"))
        + head.len();
    let rest = &doc[start..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// Every `.rs` file and folder below `dir`, by name.
fn sources(root: &Path, dir: &str, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{dir}/{name}");
        if entry.path().is_dir() {
            out.insert(format!("{name}/"));
            sources(root, &rel, out);
        } else if name.ends_with(".rs") {
            out.insert(name);
        }
    }
}

/// What the code map names: every component of its paths, folders as `x/`, files as `x.rs`
/// (`fixtures/schema1/` names `fixtures/` and `schema1/`).
fn named(map: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let words = map
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '(' | ')' | '`' | ';'))
        .filter(|w| {
            (w.ends_with(".rs") || (w.ends_with('/') && w.len() > 1))
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        });
    for word in words {
        let parts: Vec<_> = word.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            if i + 1 < parts.len() || word.ends_with('/') {
                out.insert(format!("{part}/"));
            } else {
                out.insert(part.to_string());
            }
        }
    }
    out
}

#[test]
fn the_code_map_names_every_source_file_and_nothing_else() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = architecture();
    let map = section(&doc, "Code map");
    let mut tree = BTreeSet::new();
    for dir in ["src", "actors", "migrations"] {
        sources(root, dir, &mut tree);
    }
    let named = named(map);
    // mod.rs is its folder; tests.rs files are their module's tests.
    let missing: Vec<_> = tree
        .iter()
        .filter(|f| !matches!(f.as_str(), "mod.rs" | "tests.rs") && !named.contains(*f))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name {missing:?}"
    );
    let mut everything = tree.clone();
    for dir in [
        "tests",
        "scripts",
        "deploy",
        "examples",
        "fuzz/fuzz_targets",
    ] {
        sources(root, dir, &mut everything);
    }
    for top in std::fs::read_dir(root).unwrap().flatten() {
        let name = top.file_name().to_string_lossy().into_owned();
        everything.insert(if top.path().is_dir() {
            format!("{name}/")
        } else {
            name
        });
    }
    let stale: Vec<_> = named.iter().filter(|n| !everything.contains(*n)).collect();
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md's code map names what is not in the tree: {stale:?}"
    );
}

/// The crate-level modules each layer of helios-actors may not import (issue: layers without
/// cycles): the model depends on nothing of the actors, the ports only on the model.
const FORBIDDEN: [(&str, &[&str]); 2] = [
    (
        "actors/model",
        &[
            "bus",
            "host",
            "metrics",
            "poll",
            "ports",
            "proxy",
            "report",
            "seek",
            "supervise",
        ],
    ),
    (
        "actors/ports",
        &[
            "bus",
            "host",
            "metrics",
            "poll",
            "proxy",
            "report",
            "seek",
            "supervise",
        ],
    ),
];

/// The first path segments after every `crate::` in `text` (`crate::{a, b::c}` gives a and b).
fn crate_imports(text: &str) -> Vec<String> {
    let mut out = vec![];
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                out.push(item.trim().split("::").next().unwrap_or("").to_string());
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_string());
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_model_and_the_ports_import_no_layer_above_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut wrong = vec![];
    for (dir, forbidden) in FORBIDDEN {
        let mut files = vec![];
        rust_files(&root.join(dir), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for module in crate_imports(&text) {
                if forbidden.contains(&module.as_str()) {
                    wrong.push(format!(
                        "{} imports crate::{module}",
                        file.strip_prefix(root).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports that run back up: {wrong:#?}");
}

#[test]
fn the_store_schema_lists_exactly_the_store_keys() {
    let doc = architecture();
    let schema = section(&doc, "Store schema");
    let mut listed = BTreeSet::new();
    for line in schema.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or("");
        for key in first.split('`').skip(1).step_by(2) {
            listed.insert(key.to_string());
        }
    }
    let known: BTreeSet<String> = helios_actors::ports::store::keys::ALL
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        listed, known,
        "ARCHITECTURE.md's store schema and ports::store::keys::ALL differ"
    );
}
