//! Tests of the app-level rules, and the helpers the concerns' tests share.
use serde_json::json;

use super::*;
use crate::model::compose::{NetworkConfig, ServiceConfig};

pub(super) const REL: &str = "rel1";

pub(super) fn app(services: Value, extra: Value) -> Value {
    let mut rel = json!({"id": 1, "services": services});
    if let Value::Object(e) = extra {
        rel.as_object_mut().unwrap().extend(e);
    }
    json!({"id": 12, "name": "demo", "releases": {REL: rel}})
}

pub(super) fn parse(v: Value) -> Result<App, ValidationError> {
    let t: AppTarget = serde_json::from_value(v).expect("wire shape");
    app_from_target("app1", t)
}

pub(super) fn one(composition: Value) -> Result<ServiceConfig, ValidationError> {
    one_with(
        composition,
        json!({"volumes": {"data": {}}, "networks": {"front": {}}}),
    )
}

pub(super) fn one_with(composition: Value, extra: Value) -> Result<ServiceConfig, ValidationError> {
    let a = parse(app(
        json!({"web": {"id": 3, "image": "alpine", "composition": composition}}),
        extra,
    ))?;
    Ok(a.releases[&REL.to_string()].services[&"web".to_string()]
        .config
        .clone())
}

/// Asserts the composition is rejected at `composition.<field>`.
pub(super) fn rejected(composition: Value, field: &str) -> String {
    let e = one(composition).expect_err("should be rejected");
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.web.composition.{field}"),
        "{e}"
    );
    e.message
}

#[test]
fn an_app_without_releases_is_an_empty_app() {
    let a = parse(json!({"id": 0, "name": "my-app"})).unwrap();
    assert_eq!(
        a,
        App {
            id: 0,
            name: Some("my-app".into()),
            ..Default::default()
        }
    );
    let a = parse(
        json!({"id": "7", "releases": null, "class": "fleet", "is_host": false,
        "parent_app": "x"}),
    )
    .unwrap();
    assert_eq!(a.id, 7);
    assert!(serde_json::from_value::<AppTarget>(json!({"id": -1})).is_err());
    assert!(serde_json::from_value::<AppTarget>(json!({"id": "x"})).is_err());
}

#[test]
fn a_default_network_is_added_for_services_without_networks() {
    let a = parse(app(
        json!({"a": {"id": 1, "image": "alpine"},
               "b": {"id": 2, "image": "alpine", "composition": {"network_mode": "host"}}}),
        json!({}),
    ))
    .unwrap();
    let rel = &a.releases[&REL.to_string()];
    assert_eq!(
        rel.services[&"a".to_string()].config.network_names(),
        ["default"]
    );
    assert!(rel.services[&"b".to_string()]
        .config
        .network_names()
        .is_empty());
    assert_eq!(a.networks.keys().collect::<Vec<_>>(), ["default"]);
    assert_eq!(
        a.networks[&"default".to_string()].config,
        NetworkConfig {
            driver: Some("bridge".into()),
            ..Default::default()
        }
    );
    let only_host = parse(app(
        json!({"b": {"id": 2, "image": "alpine", "composition": {"network_mode": "host"}}}),
        json!({}),
    ))
    .unwrap();
    assert!(only_host.networks.is_empty());
}

#[test]
fn at_most_one_release() {
    let e = parse(json!({"id": 1, "releases": {"a": {}, "b": {}}})).unwrap_err();
    assert_eq!(e.field, "releases");
}

#[test]
fn names_are_validated() {
    let e = parse(json!({"id": 1, "releases": {"bad_rel": {}}})).unwrap_err();
    assert_eq!(e.field, "releases.bad_rel");
    let e = parse(app(
        json!({"-web": {"id": 1, "image": "alpine"}}),
        json!({}),
    ))
    .unwrap_err();
    assert_eq!(e.field, format!("releases.{REL}.services.-web"));
    let e = parse(app(json!({}), json!({"networks": {"a b": {}}}))).unwrap_err();
    assert_eq!(e.field, format!("releases.{REL}.networks.a b"));
    let e = parse(app(json!({}), json!({"volumes": {"x/y": {}}}))).unwrap_err();
    assert_eq!(e.field, format!("releases.{REL}.volumes.x/y"));
    let t: AppTarget = serde_json::from_value(json!({"id": 1})).unwrap();
    assert_eq!(app_from_target("a_b", t).unwrap_err().field, "uuid");
}
