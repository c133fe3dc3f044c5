//! The report body (spec/state-report-v3.md §2–§5): device fields, the `apps` section built from
//! the current state, the target and the remote info, and the two-level diff.
use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::model::device::{Device, DeviceTarget, Service};
use crate::model::host::{repository, HostState, HostStatus, HOSTAPP_SERVICE};
use crate::model::{RemoteInfo, UpdateStatus};
use crate::ports::sysinfo::HostFacts;

/// Device-level fields that come from configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceFields {
    /// `supervisor_version`; None when a legacy supervisor runs and reports its own.
    pub supervisor_version: Option<String>,
    pub api_port: u16,
    /// `os_version` when configured (else the host's os-release).
    pub os_version: Option<String>,
}

/// The device-level fields (spec §2.1, §2.2).
pub fn device_fields(f: &DeviceFields, facts: &HostFacts) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("status".into(), json!("Idle"));
    m.insert("api_port".into(), json!(f.api_port));
    m.insert("provisioning_progress".into(), Value::Null);
    m.insert("provisioning_state".into(), json!(""));
    if let Some(v) = &f.supervisor_version {
        m.insert("supervisor_version".into(), json!(v));
    }
    for (k, v) in facts.to_json() {
        m.insert(k, v);
    }
    if let Some(os) = &f.os_version {
        m.insert("os_version".into(), json!(os));
    }
    m
}

/// `api_secret`: the device API's global key, `null` when there is none (spec §2.1).
pub fn api_secret(global: Option<crate::Secret>) -> Value {
    global.map_or(Value::Null, |k| json!(k.expose()))
}

fn container_status(s: &Service) -> &'static str {
    match s.container.as_ref().map(|c| c.status.as_str()) {
        Some("running") => "Running",
        Some("created") => "Installed",
        Some("stopping") => "Stopping",
        Some("dead") => "Dead",
        Some(_) => "exited",
        None => "Installing",
    }
}

/// The host app (spec/helios-api-v3.md §5.2): one release per known host release, service
/// `hostapp` with the host OS image repository; the running build is `Running`/`done` and the
/// `release_uuid`, any other `Installing` with `applying changes` (or `aborted`).
fn host_app(uuid: &str, host: &HostState, remote: &RemoteInfo, loop_status: UpdateStatus) -> Value {
    let mut releases = Map::new();
    let mut release_uuid = None;
    for (rel, r) in host.releases.iter().filter(|(_, r)| r.app == uuid) {
        let running = r.status == HostStatus::Running;
        let (status, service) = match (running, loop_status) {
            (true, _) => ("done", "Running"),
            (false, UpdateStatus::Aborted) => ("aborted", "Installing"),
            (false, _) => ("applying changes", "Installing"),
        };
        if running {
            release_uuid = Some(rel.clone());
        }
        releases.insert(
            rel.clone(),
            json!({"update_status": status, "services": {HOSTAPP_SERVICE:
                {"image": repository(&r.image), "status": service}}}),
        );
    }
    app_entry(uuid, releases, release_uuid, remote)
}

/// One app of the report: its releases plus a rejected target release (as `rejected` with no
/// services), and `release_uuid` when one release is current.
fn app_entry(
    uuid: &str,
    mut releases: Map<String, Value>,
    release_uuid: Option<String>,
    remote: &RemoteInfo,
) -> Value {
    if let Some((rel, _)) = remote.rejected.get(uuid) {
        releases.insert(
            rel.clone(),
            json!({"update_status": "rejected", "services": {}}),
        );
    }
    let mut app = Map::new();
    if let Some(r) = release_uuid {
        app.insert("release_uuid".into(), json!(r));
    }
    app.insert("releases".into(), Value::Object(releases));
    Value::Object(app)
}

/// The `apps` section: only apps of the last remote target, each whole (spec §3).
pub fn apps(
    dev: &Device,
    target: Option<&DeviceTarget>,
    remote: &RemoteInfo,
    loop_status: UpdateStatus,
    host: Option<&HostState>,
) -> Value {
    let mut apps = Map::new();
    for uuid in &remote.authorized {
        if let Some(h) = host.filter(|h| h.releases.values().any(|r| &r.app == uuid)) {
            apps.insert(uuid.clone(), host_app(uuid, h, remote, loop_status));
            continue;
        }
        let cur = dev.apps.get(uuid);
        let tgt = target.and_then(|t| t.apps.get(uuid));
        if cur.is_none() && tgt.is_none() && !remote.rejected.contains_key(uuid) {
            continue;
        }
        let mut releases = Map::new();
        let mut names: BTreeSet<&String> = BTreeSet::new();
        if let Some(c) = cur {
            names.extend(c.releases.keys());
        }
        if let Some(t) = tgt {
            names.extend(t.releases.keys());
        }
        // Hand-over: the same service running in two releases.
        let running_in = |svc: &str| {
            cur.map(|c| {
                c.releases
                    .iter()
                    .filter(|(_, r)| {
                        r.services
                            .get(svc)
                            .is_some_and(|s| container_status(s) == "Running")
                    })
                    .count()
            })
            .unwrap_or(0)
        };
        let tgt_release = tgt.and_then(|t| t.releases.keys().next());
        let mut release_uuid = None;
        for rel in names {
            let cur_rel = cur.and_then(|c| c.releases.get(rel));
            let tgt_rel = tgt.and_then(|t| t.releases.get(rel));
            let mut services = Map::new();
            let mut status = "done";
            let mut all_running = true;
            if let Some(t) = tgt_rel {
                for (name, ts) in t.services.iter() {
                    let mut o = Map::new();
                    o.insert("image".into(), json!(ts.image));
                    match cur_rel.and_then(|r| r.services.get(name)) {
                        Some(s) => {
                            let mut st = container_status(s);
                            if st == "Running" && running_in(name) > 1 {
                                st = if Some(rel) == tgt_release {
                                    "Awaiting handover"
                                } else {
                                    "Handing over"
                                };
                            }
                            if st != "Running" && ts.running {
                                all_running = false;
                            }
                            o.insert("status".into(), json!(st));
                        }
                        None => {
                            all_running = false;
                            match dev.images.get(&ts.image) {
                                Some(i) if i.download_progress >= 100 && i.oci_id.is_some() => {
                                    o.insert("status".into(), json!("Downloaded"));
                                }
                                Some(i) => {
                                    o.insert("status".into(), json!("Downloading"));
                                    o.insert(
                                        "download_progress".into(),
                                        json!(i.download_progress),
                                    );
                                }
                                None => {
                                    o.insert("status".into(), json!("Downloading"));
                                    o.insert("download_progress".into(), json!(0));
                                }
                            }
                        }
                    }
                    services.insert(name.clone(), Value::Object(o));
                }
            }
            if let Some(c) = cur_rel {
                for (name, s) in c.services.iter() {
                    if services.contains_key(name) {
                        continue;
                    }
                    let st = if running_in(name) > 1 && container_status(s) == "Running" {
                        "Handing over"
                    } else {
                        container_status(s)
                    };
                    services.insert(name.clone(), json!({"image": s.image, "status": st}));
                }
            }
            // spec §3.3, in order of precedence.
            for s in services.values() {
                let st = s["status"].as_str().unwrap_or("");
                if s.get("download_progress").is_some_and(|p| p != 100) {
                    status = "downloading";
                } else if status != "downloading" && st == "Downloaded" {
                    status = "downloaded";
                } else if status == "done"
                    && matches!(st, "Installing" | "Installed" | "Awaiting handover")
                {
                    status = "applying changes";
                }
            }
            if Some(rel) == tgt_release {
                if status == "done" && !all_running {
                    status = "applying changes";
                }
                if loop_status == UpdateStatus::Aborted && status != "done" {
                    status = "aborted";
                }
                if status == "done" && cur.is_some_and(|c| c.releases.len() == 1) {
                    release_uuid = Some(rel.clone());
                }
            } else if tgt_release.is_some() {
                // An old release being replaced.
                if status == "done" {
                    status = "applying changes";
                }
            }
            releases.insert(
                rel.clone(),
                json!({"update_status": status, "services": services}),
            );
        }
        apps.insert(
            uuid.clone(),
            app_entry(uuid, releases, release_uuid, remote),
        );
    }
    for (uuid, app) in &remote.legacy_apps {
        apps.entry(uuid.clone()).or_insert_with(|| app.clone());
    }
    Value::Object(apps)
}

/// The two-level diff (spec §5.1): top-level fields that changed, each whole.
pub fn diff(current: &Map<String, Value>, last: Option<&Map<String, Value>>) -> Map<String, Value> {
    current
        .iter()
        .filter(|(k, v)| last.and_then(|l| l.get(*k)) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(apps: &[&str]) -> RemoteInfo {
        RemoteInfo {
            authorized: apps.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn device(v: Value) -> Device {
        serde_json::from_value(v).unwrap()
    }

    fn target(v: Value) -> DeviceTarget {
        serde_json::from_value(v).unwrap()
    }

    fn running() -> Value {
        json!({"id": 1, "image": "img:1", "running": true, "config": {},
               "container": {"id": "c", "name": "main_r1", "created": "", "status": "running",
                             "exit_code": 0, "health": "none", "started": true}})
    }

    #[test]
    fn a_running_release_is_done_with_its_release_uuid() {
        let dev = device(
            json!({"images": {"img:1": {"oci_id": "sha256:1", "download_progress": 100}},
            "apps": {"a": {"id": 1, "releases": {"r1": {"services": {"main": running()}}}, "networks": {}, "volumes": {}}}}),
        );
        let tgt = target(
            json!({"apps": {"a": {"id": 1, "releases": {"r1": {"services": {"main":
            {"id": 1, "image": "img:1", "running": true, "config": {}}}}}, "networks": {}, "volumes": {}}}}),
        );
        let apps = apps(&dev, Some(&tgt), &remote(&["a"]), UpdateStatus::Done, None);
        assert_eq!(
            apps,
            json!({"a": {"release_uuid": "r1", "releases": {"r1": {"update_status": "done",
                "services": {"main": {"image": "img:1", "status": "Running"}}}}}})
        );
        assert_eq!(
            super::apps(&dev, Some(&tgt), &remote(&[]), UpdateStatus::Done, None),
            json!({}),
            "only authorized apps"
        );
    }

    #[test]
    fn downloading_and_rejected_releases() {
        let dev = device(
            json!({"images": {"img:2": {"oci_id": null, "download_progress": 37}},
            "apps": {"a": {"id": 1, "releases": {"r1": {"services": {"main": running()}}}, "networks": {}, "volumes": {}}}}),
        );
        let tgt = target(
            json!({"apps": {"a": {"id": 1, "releases": {"r2": {"services": {"main":
            {"id": 1, "image": "img:2", "running": true, "config": {}}}}}, "networks": {}, "volumes": {}}}}),
        );
        let mut r = remote(&["a", "b"]);
        r.rejected.insert("b".into(), ("rb".into(), "bad".into()));
        let apps = apps(&dev, Some(&tgt), &r, UpdateStatus::ApplyingChanges, None);
        assert_eq!(apps["a"]["releases"]["r2"]["update_status"], "downloading");
        assert_eq!(
            apps["a"]["releases"]["r2"]["services"]["main"]["download_progress"],
            37
        );
        assert_eq!(
            apps["a"]["releases"]["r1"]["services"]["main"]["status"],
            "Running"
        );
        assert!(apps["a"].get("release_uuid").is_none());
        assert_eq!(
            apps["b"]["releases"]["rb"],
            json!({"update_status": "rejected", "services": {}})
        );
    }

    #[test]
    fn the_host_app_reports_one_release_per_known_host_release() {
        use crate::model::host::{HostPhase, HostRelease};
        let rel = |build: &str, status| HostRelease {
            app: "host".into(),
            image: "reg:5000/hostos:6.1".into(),
            build: build.into(),
            updater: "reg:5000/updater:latest".into(),
            status,
            install_attempts: 0,
        };
        let host = HostState {
            meta: crate::model::host::OsVersion::parse("balenaOS 6.0@b1").unwrap(),
            releases: [
                ("old".to_string(), rel("b1", HostStatus::Running)),
                ("new".to_string(), rel("b2", HostStatus::Installed)),
            ]
            .into(),
            seq: 1,
            phase: HostPhase::Aborted,
        };
        let dev = device(json!({"images": {}, "apps": {}}));
        let apps = apps(
            &dev,
            None,
            &remote(&["host"]),
            UpdateStatus::Aborted,
            Some(&host),
        );
        assert_eq!(
            apps,
            json!({"host": {"release_uuid": "old", "releases": {
                "old": {"update_status": "done", "services": {"hostapp": {"image": "reg:5000/hostos", "status": "Running"}}},
                "new": {"update_status": "aborted", "services": {"hostapp": {"image": "reg:5000/hostos", "status": "Installing"}}}}}})
        );
        let working = super::apps(
            &dev,
            None,
            &remote(&["host"]),
            UpdateStatus::ApplyingChanges,
            Some(&host),
        );
        assert_eq!(
            working["host"]["releases"]["new"]["update_status"],
            "applying changes"
        );
        assert_eq!(
            super::apps(&dev, None, &remote(&[]), UpdateStatus::Done, Some(&host)),
            json!({}),
            "only when authorized"
        );
    }

    #[test]
    fn diff_is_two_levels_with_apps_whole() {
        let last: Map<String, Value> =
            serde_json::from_value(json!({"status": "Idle", "apps": {"a": {"x": 1}, "b": {}}}))
                .unwrap();
        let cur: Map<String, Value> = serde_json::from_value(
            json!({"status": "Idle", "apps": {"a": {"x": 2}, "b": {}}, "cpu_temp": 40}),
        )
        .unwrap();
        let d = diff(&cur, Some(&last));
        assert_eq!(
            Value::Object(d),
            json!({"apps": {"a": {"x": 2}, "b": {}}, "cpu_temp": 40})
        );
        assert!(diff(&cur, Some(&cur)).is_empty());
    }
}
