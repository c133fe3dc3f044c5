//! The target split (spec/helios-proxy.md §5.1): for every app of a remote target document,
//! who runs it — helios or the legacy supervisor — and the two documents that follow. Pure:
//! the same document, previous owners and foreign apps give the same split.
//!
//! Safety rule: an app is run by exactly one side, and it never moves from the legacy
//! supervisor to helios while it stays in the target (the legacy supervisor could still be
//! starting it while helios starts its own copy). It may move from helios to the legacy
//! supervisor, because the hand-off orders that move: helios removes its containers in its own
//! apply, and only then is the legacy supervisor given the app.
//!
//! Who runs what: the legacy supervisor keeps the host OS app, the supervisor release (a service
//! named as in [`SUPERVISOR_SERVICES`]), every app it ran in the previous split (ownership is
//! sticky, whatever its release becomes), apps whose containers it made (on the engine but not
//! created by helios: Seek's ForeignApps), apps with a service `contract` (helios does not evaluate
//! contracts), and releases helios cannot read or run; helios takes the rest. A document helios
//! cannot read at all stays whole with helios, whose conversion rejects it. The legacy copy is the
//! document with only the legacy supervisor's apps (device name and config whole). The caller
//! (`ProxyHandle::split` in mod.rs) logs one `App owner decided` line per app
//! (`decision=run|delegate`, `owner`, `moved`, `reason`) and stores the owners (`proxy/owners`).
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::target::{app_from_target, AppTarget};

/// Service names of the supervisor release (spec/helios-proxy.md §2): the legacy supervisor
/// installs `core-next` and `service-relay` itself and never touches its own `core`.
pub const SUPERVISOR_SERVICES: &[&str] = &[
    "core",
    "core-next",
    "service-relay",
    "main",
    "balena-supervisor",
    "resin-supervisor",
];

/// Who runs an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    Helios,
    Legacy,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Owner::Helios => "helios",
            Owner::Legacy => "legacy",
        })
    }
}

/// The decision for one app, with its reason (one log line each).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub app: String,
    pub owner: Owner,
    pub reason: String,
}

/// The split of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The document with only the apps helios runs (goes through helios's own conversion).
    pub helios: Value,
    /// The document served to the legacy supervisor: the same device name and config, only
    /// the apps it runs.
    pub legacy: Value,
    /// Owner of every app of the document (kept for the next split).
    pub owners: BTreeMap<String, Owner>,
    pub decisions: Vec<Decision>,
}

/// Splits `doc` (the remote document, keyed by device uuid). `previous` are the owners of the
/// last split; `foreign` the apps helios found on the engine but did not create (the legacy
/// supervisor's). A document helios cannot read is returned whole to helios, which rejects it.
pub fn split(
    doc: &Value,
    uuid: &str,
    previous: &BTreeMap<String, Owner>,
    foreign: &BTreeSet<String>,
) -> Split {
    let mut out = Split {
        helios: doc.clone(),
        legacy: doc.clone(),
        owners: BTreeMap::new(),
        decisions: vec![],
    };
    let Some(apps) = doc
        .get(uuid)
        .and_then(|d| d.get("apps"))
        .and_then(Value::as_object)
    else {
        return out;
    };
    let mut helios_apps = serde_json::Map::new();
    let mut legacy_apps = serde_json::Map::new();
    for (app, raw) in apps {
        let (owner, reason) = decide(app, raw, previous.get(app).copied(), foreign);
        out.owners.insert(app.clone(), owner);
        out.decisions.push(Decision {
            app: app.clone(),
            owner,
            reason,
        });
        match owner {
            Owner::Helios => helios_apps.insert(app.clone(), raw.clone()),
            Owner::Legacy => legacy_apps.insert(app.clone(), raw.clone()),
        };
    }
    out.helios[uuid]["apps"] = Value::Object(helios_apps);
    out.legacy[uuid]["apps"] = Value::Object(legacy_apps);
    out
}

fn decide(
    app: &str,
    raw: &Value,
    previous: Option<Owner>,
    foreign: &BTreeSet<String>,
) -> (Owner, String) {
    let legacy = |r: &str| (Owner::Legacy, r.to_string());
    let wire: AppTarget = match serde_json::from_value(raw.clone()) {
        Ok(w) => w,
        Err(e) => return (Owner::Legacy, format!("helios cannot read the app: {e}")),
    };
    if wire.is_host {
        return legacy("host OS app: host OS updates stay with the legacy supervisor");
    }
    let services = || wire.releases.values().flat_map(|r| r.services.iter());
    if services().any(|(name, _)| SUPERVISOR_SERVICES.contains(&name.as_str())) {
        return legacy("the supervisor release: the legacy supervisor installs it");
    }
    if previous == Some(Owner::Legacy) {
        return legacy(
            "the legacy supervisor runs it; an app never moves to helios while in the target",
        );
    }
    if foreign.contains(app) {
        return legacy("the legacy supervisor's containers of it are on the engine");
    }
    let has_contract = raw
        .get("releases")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|r| r.values())
        .filter_map(|r| r.get("services").and_then(Value::as_object))
        .flat_map(|s| s.values())
        .any(|s| s.get("contract").is_some_and(|c| !c.is_null()));
    if has_contract {
        return legacy("a service has a contract, which helios does not evaluate");
    }
    match app_from_target(app, wire) {
        Ok(_) if previous == Some(Owner::Helios) => (Owner::Helios, "helios runs it".into()),
        Ok(_) => (Owner::Helios, "helios can run its release".into()),
        Err(e) => (Owner::Legacy, format!("helios cannot run its release: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app(id: u32, services: Value) -> Value {
        json!({"id": id, "name": format!("app{id}"), "class": "fleet", "releases": {
            format!("rel{id}"): {"id": id, "services": services}}})
    }

    fn svc(extra: Value) -> Value {
        let mut s = json!({"id": 1, "image_id": 1, "image": "registry/img", "environment": {},
            "labels": {}});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    }

    fn doc(apps: Value) -> Value {
        json!({"dev": {"name": "d", "config": {"K": "v"}, "apps": apps}})
    }

    fn owners(s: &Split) -> Vec<(String, Owner)> {
        s.owners.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    #[test]
    fn splits_per_app_and_keeps_device_fields() {
        let d = doc(json!({
            "a": app(1, json!({"web": svc(json!({}))})),
            "b": app(2, json!({"gpu": svc(json!({"contract": {"type": "sw.container",
                "requires": [{"type": "hw.device-type", "slug": "jetson-nano"}]}}))})),
            "sup": app(3, json!({"core": svc(json!({})), "core-next": svc(json!({}))})),
            "host": {"id": 4, "name": "os", "class": "app", "is_host": true, "releases": {}},
        }));
        let s = split(&d, "dev", &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(
            owners(&s),
            vec![
                ("a".into(), Owner::Helios),
                ("b".into(), Owner::Legacy),
                ("host".into(), Owner::Legacy),
                ("sup".into(), Owner::Legacy),
            ]
        );
        let keys = |v: &Value| -> Vec<String> {
            v["dev"]["apps"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(keys(&s.helios), ["a"]);
        assert_eq!(keys(&s.legacy), ["b", "host", "sup"]);
        assert_eq!(s.legacy["dev"]["config"], json!({"K": "v"}));
        assert_eq!(s.legacy["dev"]["name"], "d");
        assert!(s.decisions.iter().all(|d| !d.reason.is_empty()));
    }

    #[test]
    fn an_app_the_legacy_supervisor_runs_stays_with_it() {
        let d = doc(json!({"a": app(1, json!({"web": svc(json!({}))}))}));
        let prev = BTreeMap::from([("a".to_string(), Owner::Legacy)]);
        assert_eq!(
            owners(&split(&d, "dev", &prev, &BTreeSet::new())),
            [("a".into(), Owner::Legacy)]
        );
        let foreign = BTreeSet::from(["a".to_string()]);
        assert_eq!(
            owners(&split(&d, "dev", &BTreeMap::new(), &foreign)),
            [("a".into(), Owner::Legacy)]
        );
    }

    #[test]
    fn an_app_helios_cannot_run_any_more_moves_to_the_legacy_supervisor() {
        let prev = BTreeMap::from([("a".to_string(), Owner::Helios)]);
        let d = doc(json!({"a": app(1, json!({"web": svc(json!({"contract": {}}))}))}));
        let s = split(&d, "dev", &prev, &BTreeSet::new());
        assert_eq!(owners(&s), [("a".into(), Owner::Legacy)]);
        // And an app removed from the target has no owner any more.
        let s = split(&doc(json!({})), "dev", &prev, &BTreeSet::new());
        assert!(s.owners.is_empty());
    }

    #[test]
    fn an_unreadable_document_goes_whole_to_helios() {
        let d = json!({"other": {}});
        let s = split(&d, "dev", &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(s.helios, d);
        assert!(s.owners.is_empty());
    }
}
