//! Planner tests: tiny current/target pairs, checked on the order of the planned steps. No IO:
//! without an `Effects` resource the effects do nothing.
use serde_json::{json, Value};

use crate::model::device::{Device, DeviceTarget};
use crate::seek::messages::preview;

fn device(v: Value) -> Device {
    serde_json::from_value(v).expect("device JSON")
}

fn target(v: Value) -> DeviceTarget {
    serde_json::from_value(v).expect("target JSON")
}

fn plan(cur: Value, tgt: Value) -> Vec<String> {
    preview(super::worker(), device(cur), target(tgt)).expect("a plan")
}

/// Index of the first step containing `needle`.
fn at(steps: &[String], needle: &str) -> usize {
    steps
        .iter()
        .position(|s| s.contains(needle))
        .unwrap_or_else(|| panic!("no step with {needle:?} in {steps:#?}"))
}

fn svc(image: &str, labels: Value) -> Value {
    json!({"id": 1, "image": image, "running": true,
           "config": {"networks": {"default": {}}, "labels": labels}})
}

fn app(releases: Value) -> Value {
    json!({"id": 1, "name": "demo", "releases": releases,
           "networks": {"default": {"config": {}}}, "volumes": {}})
}

fn present(images: &[&str]) -> Value {
    images
        .iter()
        .map(|i| {
            (
                i.to_string(),
                json!({"oci_id": format!("sha256:{i}"), "download_progress": 100}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn running(v: Value) -> Value {
    let mut v = v;
    v["container"] = json!({"id": "c", "name": "n", "created": "", "status": "running",
                            "exit_code": 0, "health": "none", "started": true});
    v
}

#[test]
fn install_pulls_then_creates_then_starts() {
    let tgt = json!({"images": {}, "apps": {"a": {"id": 1, "name": "demo",
        "releases": {"r1": {"services": {
            "web": svc("img:1", json!({})),
            "db": {"id": 2, "image": "img:2", "running": true,
                   "config": {"networks": {"default": {}},
                              "volumes": [{"type": "volume", "source": "data", "target": "/data"}]}}}}},
        "networks": {"default": {"config": {}}},
        "volumes": {"data": {"config": {}}}}}});
    let steps = plan(json!({"images": {}, "apps": {}}), tgt);
    assert!(at(&steps, "record app 'a'") < at(&steps, "create network 'default_a'"));
    assert!(at(&steps, "pull image 'img:1'") < at(&steps, "create container 'web_r1'"));
    assert!(at(&steps, "pull image 'img:2'") < at(&steps, "create container 'db_r1'"));
    assert!(at(&steps, "create network 'default_a'") < at(&steps, "create container 'web_r1'"));
    assert!(at(&steps, "create volume 'data_a'") < at(&steps, "create container 'db_r1'"));
    assert!(at(&steps, "create container 'web_r1'") < at(&steps, "start container 'web_r1'"));
    // Services start only once every image of the app is there.
    assert!(at(&steps, "pull image 'img:2'") < at(&steps, "start container 'web_r1'"));
}

#[test]
fn on_target_is_an_empty_plan() {
    let cur = json!({"images": present(&["img:1"]),
        "apps": {"a": app(json!({"r1": {"services": {"web": running(svc("img:1", json!({})))}}}))}});
    let tgt = json!({"images": {}, "apps": {"a": app(json!({"r1": {"services": {"web": svc("img:1", json!({}))}}}))}});
    assert_eq!(plan(cur, tgt), Vec::<String>::new());
}

fn update(strategy: Option<&str>) -> Vec<String> {
    let labels = match strategy {
        Some(s) => json!({"io.balena.update.strategy": s}),
        None => json!({}),
    };
    let cur = json!({"images": present(&["img:1"]),
        "apps": {"a": app(json!({"r1": {"services": {"web": running(svc("img:1", labels.clone()))}}}))}});
    let tgt = json!({"images": {}, "apps": {"a": app(json!({"r2": {"services": {"web": svc("img:2", labels)}}}))}});
    plan(cur, tgt)
}

#[test]
fn download_then_kill_pulls_before_stopping() {
    let s = update(None);
    assert!(
        at(&s, "pull image 'img:2'") < at(&s, "stop container 'web_r1'"),
        "{s:#?}"
    );
    assert!(at(&s, "remove container 'web_r1'") < at(&s, "create container 'web_r2'"));
    assert!(at(&s, "create container 'web_r2'") < at(&s, "start container 'web_r2'"));
    assert!(at(&s, "remove container 'web_r1'") < at(&s, "remove image 'img:1'"));
}

#[test]
fn kill_then_download_stops_before_pulling() {
    let s = update(Some("kill-then-download"));
    assert!(
        at(&s, "stop container 'web_r1'") < at(&s, "pull image 'img:2'"),
        "{s:#?}"
    );
    assert!(at(&s, "pull image 'img:2'") < at(&s, "create container 'web_r2'"));
}

#[test]
fn delete_then_download_removes_the_old_image_before_pulling() {
    let s = update(Some("delete-then-download"));
    assert!(
        at(&s, "remove container 'web_r1'") < at(&s, "remove image 'img:1'"),
        "{s:#?}"
    );
    assert!(at(&s, "remove image 'img:1'") < at(&s, "pull image 'img:2'"));
}

#[test]
fn hand_over_starts_the_new_before_killing_the_old() {
    let s = update(Some("hand-over"));
    assert!(
        at(&s, "start container 'web_r2'") < at(&s, "wait for the hand-over of 'web_r1'"),
        "{s:#?}"
    );
    assert!(at(&s, "wait for the hand-over of 'web_r1'") < at(&s, "stop container 'web_r1'"));
}

#[test]
fn removing_an_app_removes_containers_then_networks_and_volumes() {
    let mut web = running(svc("img:1", json!({})));
    web["config"]["volumes"] = json!([{"type": "volume", "source": "data", "target": "/data"}]);
    let mut a = app(json!({"r1": {"services": {"web": web}}}));
    a["volumes"] = json!({"data": {"config": {}}});
    let cur = json!({"images": present(&["img:1"]), "apps": {"a": a}});
    let s = plan(cur, json!({"images": {}, "apps": {}}));
    assert!(
        at(&s, "stop container 'web_r1'") < at(&s, "remove container 'web_r1'"),
        "{s:#?}"
    );
    assert!(at(&s, "remove container 'web_r1'") < at(&s, "remove network 'default_a'"));
    assert!(at(&s, "remove container 'web_r1'") < at(&s, "remove volume 'data_a'"));
    assert!(at(&s, "remove volume 'data_a'") < at(&s, "forget app 'a'"));
    assert!(at(&s, "remove container 'web_r1'") < at(&s, "remove image 'img:1'"));
}

#[test]
fn depends_on_orders_starts() {
    let tgt = json!({"images": {}, "apps": {"a": {"id": 1, "name": "demo",
        "releases": {"r1": {"services": {
            "web": {"id": 1, "image": "img:1", "running": true,
                    "config": {"networks": {"default": {}}, "depends_on": {"db": "service_started"}}},
            "db": svc("img:1", json!({}))}}},
        "networks": {"default": {"config": {}}}, "volumes": {}}}});
    let s = plan(json!({"images": {}, "apps": {}}), tgt);
    assert!(
        at(&s, "start container 'db_r1'") < at(&s, "start container 'web_r1'"),
        "{s:#?}"
    );
}

#[test]
fn changed_config_in_the_same_release_recreates() {
    let cur = json!({"images": present(&["img:1"]),
        "apps": {"a": app(json!({"r1": {"services": {"web": running(svc("img:1", json!({"x": "1"})))}}}))}});
    let tgt = json!({"images": {}, "apps": {"a": app(json!({"r1": {"services": {"web": svc("img:1", json!({"x": "2"}))}}}))}});
    let s = plan(cur, tgt);
    assert!(
        at(&s, "stop container 'web_r1'") < at(&s, "remove container 'web_r1'"),
        "{s:#?}"
    );
    assert!(at(&s, "remove container 'web_r1'") < at(&s, "create container 'web_r1'"));
    assert!(at(&s, "create container 'web_r1'") < at(&s, "start container 'web_r1'"));
}
