//! The cloud target document (spec/target-state-v3.md §2, spec/helios-api-v3.md §5.1):
//! `{"<uuid>": {"name", "config", "apps"}}`, validated and converted into the planner's target.
//! A document that cannot be understood is rejected whole; an app whose release fails
//! validation is rejected alone and keeps what it had.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::device::{AppTarget as ModelApp, DeviceTarget};
use super::target::{app_from_target, AppTarget};

/// A remote target, ready for the TargetBus, with what reporting needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub target: DeviceTarget,
    /// Apps of the remote document (user apps and the hostapp): the only ones reported.
    pub authorized: BTreeSet<String>,
    /// Apps whose release was rejected: app uuid → (release uuid, reason).
    pub rejected: BTreeMap<String, (String, String)>,
    /// `BALENA_SUPERVISOR_POLL_INTERVAL` / `RESIN_SUPERVISOR_POLL_INTERVAL` from the config.
    pub poll_interval: Option<Duration>,
}

/// Why a whole document was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// Converts the document for `uuid`. `keep` gives, for a rejected app, what it should stay as
/// (its previous target, or its current state), so nothing running changes.
pub fn convert(
    doc: &Value,
    uuid: &str,
    keep: impl Fn(&str) -> Option<ModelApp>,
) -> Result<Converted, Rejected> {
    let dev = doc
        .as_object()
        .ok_or_else(|| Rejected("the document is not a JSON object".into()))?
        .get(uuid)
        .ok_or_else(|| Rejected(format!("no target for uuid {uuid}")))?;
    let dev = dev
        .as_object()
        .ok_or_else(|| Rejected(format!("{uuid}: not an object")))?;
    let name = match dev.get("name") {
        Some(Value::String(s)) if s.len() <= 255 && !s.contains('\n') => s.clone(),
        Some(_) => return Err(Rejected(format!("{uuid}.name: not a valid device name"))),
        None => return Err(Rejected(format!("{uuid}.name: missing"))),
    };
    let config: BTreeMap<String, Value> = match dev.get("config") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m.clone().into_iter().collect(),
        Some(_) => return Err(Rejected(format!("{uuid}.config: not an object"))),
    };
    let apps = match dev.get("apps") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(Rejected(format!("{uuid}.apps: not an object"))),
    };
    let mut out = Converted {
        target: DeviceTarget {
            name: Some(name),
            ..Default::default()
        },
        authorized: BTreeSet::new(),
        rejected: BTreeMap::new(),
        poll_interval: [
            "BALENA_SUPERVISOR_POLL_INTERVAL",
            "RESIN_SUPERVISOR_POLL_INTERVAL",
        ]
        .iter()
        .find_map(|k| config.get(*k))
        .and_then(|v| match v {
            Value::String(s) => s.trim().parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        })
        .map(Duration::from_millis),
    };
    let mut hosts = 0;
    for (app_uuid, raw) in apps {
        let wire: AppTarget = serde_json::from_value(raw)
            .map_err(|e| Rejected(format!("{uuid}.apps.{app_uuid}: {e}")))?;
        if wire.releases.len() > 1 {
            return Err(Rejected(format!(
                "{uuid}.apps.{app_uuid}.releases: more than one release"
            )));
        }
        if wire.name.is_none() {
            return Err(Rejected(format!("{uuid}.apps.{app_uuid}.name: missing")));
        }
        out.authorized.insert(app_uuid.clone());
        if wire.is_host {
            hosts += 1;
            if hosts > 1 {
                return Err(Rejected(format!("{uuid}.apps: more than one host app")));
            }
            // Host OS releases are handled by the host OS updater, not as containers.
            continue;
        }
        let release = wire.releases.keys().next().cloned().unwrap_or_default();
        match app_from_target(&app_uuid, wire) {
            Ok(app) => {
                let app: ModelApp = serde_json::to_value(&app)
                    .and_then(serde_json::from_value)
                    .map_err(|e| Rejected(format!("{uuid}.apps.{app_uuid}: {e}")))?;
                out.target.apps.insert(app_uuid, app);
            }
            Err(e) => {
                let reason = e.to_string();
                if let Some(app) = keep(&app_uuid) {
                    out.target.apps.insert(app_uuid.clone(), app);
                }
                out.rejected.insert(app_uuid, (release, reason));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(apps: Value) -> Value {
        json!({"dev-1": {"name": "quiet-harbor", "config": {"RESIN_SUPERVISOR_POLL_INTERVAL": "600000"}, "apps": apps}})
    }

    fn app(release: &str, image: &str, composition: Value) -> Value {
        json!({"id": 5, "name": "fleet", "releases": {release: {"id": 9, "services": {
            "main": {"id": 1, "image_id": 2, "image": image, "environment": {}, "labels": {},
                     "composition": composition}}}}})
    }

    #[test]
    fn converts_apps_name_and_poll_interval() {
        let c = convert(
            &doc(json!({"app-1": app("rel-1", "alpine", json!({}))})),
            "dev-1",
            |_| None,
        )
        .unwrap();
        assert_eq!(c.target.name.as_deref(), Some("quiet-harbor"));
        assert_eq!(c.poll_interval, Some(Duration::from_secs(600)));
        let a = &c.target.apps.get("app-1").unwrap();
        assert_eq!(a.id, 5);
        assert_eq!(
            a.releases
                .get("rel-1")
                .unwrap()
                .services
                .get("main")
                .unwrap()
                .image,
            "alpine:latest"
        );
        assert!(c.authorized.contains("app-1"));
        assert!(c.rejected.is_empty());
    }

    #[test]
    fn a_bad_release_rejects_only_its_app_and_keeps_what_it_had() {
        let bad = app("rel-2", "alpine", json!({"command": "sh -c 'unclosed"}));
        let good = app("rel-1", "busybox", json!({}));
        let kept = convert(
            &doc(json!({"app-1": app("rel-0", "alpine", json!({}))})),
            "dev-1",
            |_| None,
        )
        .unwrap()
        .target
        .apps
        .get("app-1")
        .unwrap()
        .clone();
        let c = convert(&doc(json!({"app-1": bad, "app-2": good})), "dev-1", |a| {
            (a == "app-1").then(|| kept.clone())
        })
        .unwrap();
        assert_eq!(
            c.target.apps.get("app-1").unwrap(),
            &kept,
            "the rejected app stays as it was"
        );
        assert!(c.target.apps.contains_key("app-2"));
        let (rel, reason) = &c.rejected["app-1"];
        assert_eq!(rel, "rel-2");
        assert!(reason.contains("command"), "{reason}");
    }

    #[test]
    fn fatal_shapes_reject_the_whole_document() {
        assert!(convert(&json!({"other": {}}), "dev-1", |_| None).is_err());
        assert!(
            convert(&json!({"dev-1": {"apps": {}}}), "dev-1", |_| None).is_err(),
            "no name"
        );
        assert!(
            convert(&doc(json!({"a": {"name": "x"}})), "dev-1", |_| None).is_err(),
            "no id"
        );
        let two = json!({"id": 1, "name": "x", "releases": {"r1": {}, "r2": {}}});
        assert!(convert(&doc(json!({"a": two})), "dev-1", |_| None).is_err());
        assert!(convert(&json!("garbage"), "dev-1", |_| None).is_err());
    }
}
