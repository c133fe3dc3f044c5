//! Hostile-input entry points: each takes raw bytes as they would arrive (a cloud target
//! document, a `/v3` app target, a device API body, the config file), must never panic, and
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
    let Ok(layer) = config::parse_file(path, text) else {
        return;
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

#[cfg(test)]
mod tests;
