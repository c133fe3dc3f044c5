//! Tests of the release's networks and volumes.
use std::collections::BTreeMap;

use serde_json::json;

use super::super::tests::{app, parse, REL};
use super::*;

#[test]
fn networks_and_volumes_of_the_release() {
    let a = parse(app(
        json!({}),
        json!({
            "networks": {"front": {"driver": "bridge", "driver_opts": {"mtu": 1400},
                "enable_ipv6": true, "internal": true, "config_only": false,
                "labels": ["io.resin.x=1"],
                "ipam": {"config": [{"subnet": "10.1.0.0/16", "gateway": "10.1.0.1",
                    "ip_range": "10.1.1.0/24", "aux_addresses": {"h": "10.1.0.5"}}],
                    "options": {"o": "v"}}}},
            "volumes": {"data": {"driver_opts": {"type": "tmpfs"}, "labels": {"l": "v"}},
                "other": null}
        }),
    ))
    .unwrap();
    let front = &a.networks[&"front".to_string()].config;
    assert_eq!(
        *front,
        NetworkConfig {
            driver: Some("bridge".into()),
            driver_opts: BTreeMap::from([("mtu".to_string(), "1400".to_string())]),
            ipam: Ipam {
                driver: "default".into(),
                config: vec![IpamPool {
                    subnet: Some("10.1.0.0/16".into()),
                    gateway: Some("10.1.0.1".into()),
                    ip_range: Some("10.1.1.0/24".into()),
                    aux_addresses: BTreeMap::from([("h".to_string(), "10.1.0.5".to_string())]),
                }],
                options: BTreeMap::from([("o".to_string(), "v".to_string())]),
            },
            enable_ipv6: true,
            internal: true,
            labels: BTreeMap::from([("io.balena.x".to_string(), "1".to_string())]),
            config_only: false,
        }
    );
    assert_eq!(a.volumes.len(), 2);
    assert_eq!(
        a.volumes[&"other".to_string()].config,
        VolumeConfig {
            driver: Some("local".into()),
            ..Default::default()
        }
    );
    let e = parse(app(
        json!({}),
        json!({"networks": {"n": {"ipam": {"config": "x"}}}}),
    ))
    .unwrap_err();
    assert_eq!(e.field, format!("releases.{REL}.networks.n.ipam.config"));
    let e = parse(app(
        json!({}),
        json!({"volumes": {"v": {"labels": {"io.balena.private.x": "1"}}}}),
    ))
    .unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.volumes.v.labels.io.balena.private.x")
    );
    let e = parse(app(json!({}), json!({"volumes": {"v": 5}}))).unwrap_err();
    assert_eq!(e.field, format!("releases.{REL}.volumes.v"));
}
