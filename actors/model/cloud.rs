//! The cloud target document (spec/target-state-v3.md §2, spec/helios-api-v3.md §5.1):
//! `{"<uuid>": {"name", "config", "apps"}}`, validated and converted into the planner's target.
//! A document that cannot be understood is rejected whole; an app whose release fails
//! validation is rejected alone and keeps what it had.
//!
//! Rejected whole (the device keeps its current target, status `rejected`): a document that is
//! not an object or has no entry for our uuid; a device name missing, not a string, longer
//! than 255 bytes or with a newline; `config` or `apps` not objects; an app that does not
//! parse (an `id` missing, a field of the wrong type), has no name or more than one release;
//! more than one host app. Rejected alone: an app whose release fails validation (the /v3 app
//! target rules, model/target/) keeps its previous target, or its current state when it had
//! none, and is reported with that release `rejected`.
//!
//! The host app (`is_host`) is not an app helios runs but the host part of the target
//! (spec/helios-api-v3.md §9): from its single release, the service labelled
//! `io.balena.image.class: hostapp` (its own `labels` over `composition.labels`) gives the OS
//! image, `io.balena.private.updater` the updater image and
//! `io.balena.private.hostapp.board-rev` the build. Anything missing rejects the host app
//! alone (reported `rejected`); the target then says `hostapp: null`, which HostActor reads as
//! "this remote target has no usable hostapp". Every app of the document, the host app
//! included, is authorized: only those are reported. `BALENA_SUPERVISOR_POLL_INTERVAL` (or
//! `RESIN_`) in `config` is the poll interval, in milliseconds.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::device::{AppTarget as ModelApp, DeviceTarget};
use super::host::{HostTarget, HOSTAPP_KEY};
use super::target::{app_from_target_within, normalise_image, AppTarget, PortBudget};

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
    /// The hostapp's release (spec/helios-api-v3.md §9); None when the document has no
    /// hostapp or it was rejected.
    pub host: Option<HostTarget>,
}

impl Converted {
    /// The target document for the TargetBus: the planner's target plus the host part under
    /// [`HOSTAPP_KEY`] (`null` without a hostapp, which tells a remote target from a local one).
    pub fn target_value(&self) -> Result<Value, serde_json::Error> {
        let mut v = serde_json::to_value(&self.target)?;
        if let Value::Object(m) = &mut v {
            m.insert(HOSTAPP_KEY.into(), serde_json::to_value(&self.host)?);
        }
        Ok(v)
    }
}

/// Labels of the hostapp service that carry the host release (spec/target-state-v3.md §2.6).
const IMAGE_CLASS: &str = "io.balena.image.class";
const UPDATER: &str = "io.balena.private.updater";
const BOARD_REV: &str = "io.balena.private.hostapp.board-rev";

/// The host release of an `is_host` app (spec/helios-api-v3.md §5.1): its single release must
/// have a service labelled `io.balena.image.class: hostapp` (service `labels` or
/// `composition.labels`, the service's own winning) with the updater and board-rev labels.
fn host_target(app: &str, wire: &AppTarget) -> Result<HostTarget, String> {
    let (release, rel) = wire
        .releases
        .iter()
        .next()
        .ok_or_else(|| "the host app has no release".to_string())?;
    let safe = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if release.is_empty() || release.len() > 128 || !release.chars().all(safe) {
        return Err(format!(
            "release {release:?}: not a valid release uuid (letters, digits, '-', '_')"
        ));
    }
    let labels = |s: &super::target::ServiceTarget| -> BTreeMap<String, String> {
        let mut l: BTreeMap<String, String> =
            match s.composition.as_ref().and_then(|c| c.get("labels")) {
                Some(Value::Object(m)) => m
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                _ => BTreeMap::new(),
            };
        l.extend(s.labels.clone());
        l
    };
    let (name, svc, labels) = rel
        .services
        .iter()
        .map(|(n, s)| (n, s, labels(s)))
        .find(|(_, _, l)| l.get(IMAGE_CLASS).map(String::as_str) == Some("hostapp"))
        .ok_or_else(|| format!("no service labelled {IMAGE_CLASS}: hostapp"))?;
    let label = |k: &str| {
        labels
            .get(k)
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .ok_or_else(|| format!("service {name}: label {k} missing"))
    };
    let updater = normalise_image(&label(UPDATER)?)
        .map_err(|e| format!("service {name}: label {UPDATER}: {e}"))?;
    normalise_image(&svc.image).map_err(|e| format!("service {name}: image: {e}"))?;
    Ok(HostTarget {
        app: app.to_string(),
        release: release.clone(),
        image: svc.image.clone(),
        build: label(BOARD_REV)?,
        updater,
    })
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
        host: None,
    };
    let mut hosts = 0;
    // The document's apps share one port budget: an app whose ports go beyond what is left
    // is rejected like any invalid release (spec/helios-api-v3.md §5.1).
    let mut ports = PortBudget::default();
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
            // Host OS releases are handled by the host OS updater (HostActor), not as
            // containers; a rejected host app is dropped (the device keeps its OS).
            match host_target(&app_uuid, &wire) {
                Ok(h) => out.host = Some(h),
                Err(reason) => {
                    let release = wire.releases.keys().next().cloned().unwrap_or_default();
                    out.rejected.insert(app_uuid, (release, reason));
                }
            }
            continue;
        }
        let release = wire.releases.keys().next().cloned().unwrap_or_default();
        match app_from_target_within(&app_uuid, wire, &mut ports) {
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

    /// The apps of one document share [`super::super::target::MAX_PORT_MAPPINGS`]: many apps
    /// of one full range each cannot multiply it. The app that goes past it is rejected alone
    /// (naming its service and field) and keeps what it had.
    #[test]
    fn the_apps_of_a_document_share_one_port_budget() {
        let full = json!({"ports": ["1-65535:1-65535/udp"]});
        let mut apps = serde_json::Map::new();
        for i in 0..50 {
            apps.insert(format!("app-{i:02}"), app("rel-1", "alpine", full.clone()));
        }
        let c = convert(&doc(Value::Object(apps)), "dev-1", |_| None).unwrap();
        assert_eq!(c.target.apps.len(), 1, "only the first app fits");
        assert!(c.target.apps.contains_key("app-00"));
        assert_eq!(c.rejected.len(), 49);
        let (rel, reason) = &c.rejected["app-01"];
        assert_eq!(rel, "rel-1");
        assert!(
            reason.starts_with(
                "releases.rel-1.services.main.composition.ports[0]: 65535 port mappings"
            ),
            "{reason}"
        );
        // A rejected app takes nothing from the budget.
        let c = convert(
            &doc(json!({
                "a": app("rel-1", "alpine", json!({"ports": ["1-40000:1-40000"]})),
                "b": app("rel-1", "alpine", json!({"ports": ["1-30000:1-30000"], "command": "'"})),
                "c": app("rel-1", "alpine", json!({"ports": ["1-25535:1-25535"]})),
            })),
            "dev-1",
            |_| None,
        )
        .unwrap();
        assert!(
            c.rejected.contains_key("b") && c.rejected.len() == 1,
            "{:?}",
            c.rejected
        );
        assert!(c.target.apps.contains_key("c"));
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

    fn hostapp(labels: Value, composition: Value) -> Value {
        json!({"id": 3, "name": "generic-amd64", "is_host": true, "releases": {"hrel-1": {"id": 4,
            "services": {"main": {"id": 1, "image_id": 2, "image": "reg:5000/hostos@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "labels": labels, "composition": composition}}}}})
    }

    #[test]
    fn the_hostapp_becomes_the_host_target_from_service_or_composition_labels() {
        let full = json!({"io.balena.image.class": "hostapp", "io.balena.image.store": "root",
            "io.balena.private.updater": "reg:5000/updater",
            "io.balena.private.hostapp.board-rev": "rev-2"});
        let want = HostTarget {
            app: "host-1".into(),
            release: "hrel-1".into(),
            image: "reg:5000/hostos@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            build: "rev-2".into(),
            updater: "reg:5000/updater:latest".into(),
        };
        for (labels, composition) in [
            (full.clone(), json!({})),
            (json!({}), json!({"labels": full.clone()})),
            (
                json!({"io.balena.private.hostapp.board-rev": "rev-2"}),
                json!({"labels": ["io.balena.image.class=hostapp", "io.balena.private.updater=reg:5000/updater"]}),
            ),
        ] {
            let c = convert(
                &doc(json!({"host-1": hostapp(labels, composition)})),
                "dev-1",
                |_| None,
            )
            .unwrap();
            assert_eq!(c.host.as_ref(), Some(&want));
            assert!(c.authorized.contains("host-1"));
            assert!(c.target.apps.is_empty(), "the hostapp is no container app");
            let v = c.target_value().unwrap();
            assert_eq!(v[HOSTAPP_KEY]["release"], "hrel-1");
        }
    }

    #[test]
    fn a_hostapp_missing_a_label_is_rejected_alone() {
        let labels =
            json!({"io.balena.image.class": "hostapp", "io.balena.private.updater": "reg/updater"});
        let c = convert(
            &doc(json!({"host-1": hostapp(labels, json!({})), "app-1": app("rel-1", "alpine", json!({}))})),
            "dev-1",
            |_| None,
        )
        .unwrap();
        assert_eq!(c.host, None);
        let (rel, reason) = &c.rejected["host-1"];
        assert_eq!(rel, "hrel-1");
        assert!(reason.contains("board-rev"), "{reason}");
        assert!(c.target.apps.contains_key("app-1"));
        assert_eq!(
            c.target_value().unwrap()[HOSTAPP_KEY],
            Value::Null,
            "a remote target without hostapp"
        );
        let no_class = convert(
            &doc(json!({"host-1": hostapp(json!({"io.balena.private.updater": "u", "io.balena.private.hostapp.board-rev": "r"}), json!({}))})),
            "dev-1",
            |_| None,
        )
        .unwrap();
        assert!(no_class.rejected["host-1"].1.contains("hostapp"));
    }
}
