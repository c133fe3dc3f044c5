//! Hostile-input entry points: each takes raw bytes as they would arrive (a cloud target
//! document, a `/v3` app target, a device API body, the config file, what a container leaves
//! at an update-lock path), must never panic, and
//! checks what an accepted input promises. Run by the cargo-fuzz targets in `fuzz/`
//! (`scripts/fuzz`) and, briefly, by the proptest fuzz tests of the normal suite.
use std::path::Path;

use serde_json::Value;

use helios_actors::model::cloud;
use helios_actors::model::device::App;
use helios_actors::model::target::{
    app_from_target, bind_source, is_device_path, normalise_image, AppTarget, MAX_PORT_MAPPINGS,
};

use crate::api::{actions, v2};
use crate::config;

/// The cloud target document (spec/target-state-v3.md §2), converted for the first uuid it
/// names. Accepted: every app is authorized, rejections name authorized apps.
pub fn cloud_target(data: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let uuid = doc
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_else(|| "dev".to_string());
    let Ok(c) = cloud::convert(&doc, &uuid, |_| None) else {
        return;
    };
    for app in c.target.apps.keys().chain(c.rejected.keys()) {
        assert!(
            c.authorized.contains(app),
            "{app} converted but not authorized"
        );
    }
    let mut ports = 0;
    for (uuid, app) in c.target.apps.iter() {
        let json = serde_json::to_value(app).expect("a converted app serialises");
        let model: App = serde_json::from_value(json).expect("a converted app is a model app");
        ports += check_app(uuid, &model);
    }
    assert!(
        ports <= MAX_PORT_MAPPINGS as usize,
        "the document publishes {ports} ports"
    );
}

/// The body of `POST /v3/device/apps/{uuid}` (spec/helios-api-v3.md §4.5).
pub fn app_target(data: &[u8]) {
    let Ok(wire) = serde_json::from_slice::<AppTarget>(data) else {
        return;
    };
    if let Ok(app) = app_from_target("fuzzapp", wire) {
        check_app("fuzzapp", &app);
    }
}

/// What an accepted app promises: bind sources allow-listed and normalised, devices below
/// `/dev`, images normalised, at most [`MAX_PORT_MAPPINGS`] ports, and a lossless round trip
/// through the stored JSON form. Returns how many port mappings it publishes.
fn check_app(uuid: &str, app: &App) -> usize {
    let mut ports = 0;
    for rel in app.releases.values() {
        for (name, svc) in rel.services.iter() {
            ports += svc.config.ports.len();
            for m in svc.config.volumes.iter().filter(|m| m.kind == "bind") {
                let src = m.source.as_deref().expect("a bind has a source");
                assert_eq!(
                    bind_source(src).as_deref(),
                    Ok(src),
                    "{uuid}/{name} binds {src}"
                );
            }
            for d in &svc.config.devices {
                assert!(
                    is_device_path(&d.source),
                    "{uuid}/{name}: device {}",
                    d.source
                );
            }
            assert_eq!(
                normalise_image(&svc.image).as_deref(),
                Ok(svc.image.as_str())
            );
        }
    }
    assert!(
        ports <= MAX_PORT_MAPPINGS as usize,
        "{uuid} publishes {ports} ports"
    );
    let stored = serde_json::to_string(app).expect("an app serialises");
    let back: App = serde_json::from_str(&stored).expect("a stored app reads back");
    assert_eq!(&back, app, "stored form of {uuid} changes it");
    ports
}

/// The device API bodies of `/v1` and `/v2`: `POST /v2/local/target-state` (helios has no
/// local mode: it answers 400 whatever the body), `PATCH /v2/device/tags`, the action bodies
/// (JSON or form) and app ids in paths.
pub fn local_target_state(data: &[u8]) {
    if let Ok(tags) = v2::parse_tags(data) {
        assert!(tags.values().all(Value::is_string));
    }
    for ct in [
        None,
        Some("application/json"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let b = actions::body_of(ct, data);
        let _ = actions::truthy(b.get("force"));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(id) = v2::parse_app_id(s) {
            assert_eq!(Some(id), s.trim().parse().ok(), "app id {s:?}");
        }
    }
}

/// The config file: parsed and resolved as at start; what parses survives being written back
/// (the agent writes its identity into this file), and no secret in it reaches `Debug`.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent/helios/config.toml");
    let layer = match config::parse_file(path, text) {
        Ok(l) => l,
        Err(e) => return check_no_value_echoed(text, &e.to_string()),
    };
    let written = toml::to_string(&layer).expect("a parsed layer serialises");
    let back = config::parse_file(path, &written).expect("a written layer parses");
    assert_eq!(back, layer, "written as:\n{written}");
    if let Ok(cfg) = config::resolve_file_text(path, text) {
        let shown = format!("{cfg:?}");
        let secrets = [
            layer.remote.api_key.as_deref(),
            layer.api.device_api_key.as_deref(),
            layer.provisioning.key.as_deref(),
            layer.legacy.api_key.as_deref(),
        ];
        // A secret's text may also be the value of a field that is not secret.
        let mut public = layer.clone();
        public.remote.api_key = None;
        public.api.device_api_key = None;
        public.provisioning.key = None;
        public.legacy.api_key = None;
        let public = toml::to_string(&public).expect("a parsed layer serialises");
        for s in secrets
            .into_iter()
            .flatten()
            .filter(|s| s.len() >= 16 && !public.contains(*s))
        {
            assert!(!shown.contains(s), "secret {s:?} in {shown}");
        }
    }
}

/// A parse error of the config file locates the fault but never quotes a value: no value
/// (the text right of an `=`, unquoted) of 12 characters or more that is not also a plain
/// name (the error may name keys and the expected ones) appears in it.
fn check_no_value_echoed(text: &str, error: &str) {
    let name = |v: &str| {
        v.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
    };
    for line in text.lines() {
        let Some((_, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches(['"', '\'']);
        if v.chars().count() >= 12 && !name(v) && !"/nonexistent/helios/config.toml".contains(v) {
            assert!(!error.contains(v), "value {v:?} echoed in {error}");
        }
    }
}

static LOCK_CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a container may leave at an update-lock path (its lock dir is bound read-write into
/// it): the first byte picks the kind (file, link to a file, link to a FIFO, FIFO, directory,
/// huge sparse file, dangling link), the rest is the content. The lock reader never follows a
/// link, blocks or reads it whole; only a plain file holding helios's marker is helios's;
/// anything else holds updates off unless forced, and taking over never touches a link's target.
pub fn lock_file(data: &[u8]) {
    use helios_actors::ports::locks::{inspect, Entry, LockError, Locks, MARKER};
    use std::os::unix::fs::MetadataExt;
    let Some((&kind, content)) = data.split_first() else {
        return;
    };
    let n = LOCK_CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("helios-fuzz-locks-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let locks = Locks::new(&root);
    let dir = locks.ensure_dir("app").expect("the lock dir can be made");
    let lock = dir.join("updates.lock");
    let outside = root.join("host-file");
    std::fs::write(&outside, content).expect("a host file can be written");
    let fifo = root.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::mkfifo(c.as_ptr(), 0o666) };
    let kind = kind % 7;
    match kind {
        0 => std::fs::write(&lock, content).expect("written"),
        1 => std::os::unix::fs::symlink(&outside, &lock).expect("linked"),
        2 => std::os::unix::fs::symlink(&fifo, &lock).expect("linked"),
        3 => std::fs::rename(&fifo, &lock).expect("moved"),
        4 => std::fs::create_dir(&lock).expect("made"),
        5 => {
            let f = std::fs::File::create(&lock).expect("created");
            let _ = f.set_len(1 << (30 + content.len() % 8));
        }
        _ => std::os::unix::fs::symlink(root.join("nowhere"), &lock).expect("linked"),
    }
    let owner = std::fs::metadata(&outside).expect("host file").uid();
    let ours = kind == 0
        && (content == MARKER
            || std::fs::metadata(&lock)
                .is_ok_and(|m| m.uid() == helios_actors::ports::locks::AGENT_UID));
    let entry = inspect(&lock);
    assert_eq!(entry == Entry::Ours, ours, "kind {kind}: {entry:?}");
    assert_eq!(locks.user_locks("app").is_empty(), ours, "kind {kind}");
    match locks.take("app", false) {
        Ok(()) => assert!(ours, "kind {kind}: a user lock was taken"),
        Err(LockError::Locked { .. }) => assert!(!ours, "kind {kind}: our own lock blocked"),
        Err(e) => panic!("kind {kind}: {e}"),
    }
    locks.release_all();
    locks.take("app", true).expect("forced");
    assert_eq!(inspect(&lock), Entry::Ours);
    locks.release_all();
    assert_eq!(inspect(&lock), Entry::Absent, "released");
    let host = std::fs::metadata(&outside).expect("the host file stays");
    assert_eq!(host.uid(), owner, "a link's target was chowned");
    assert_eq!(
        std::fs::read(&outside).expect("host file"),
        content,
        "a link's target changed"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[cfg(test)]
mod tests;
