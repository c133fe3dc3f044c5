//! Tests of a service's volumes and tmpfs.
use serde_json::json;

use super::super::tests::{one, rejected};
use super::*;

#[test]
fn volumes_short_and_long_form() {
    let c = one(json!({"volumes": [
        "data:/data",
        "data:/ro:ro",
        "/sys:/sys",
        "/run/dbus:/host/run/dbus:ro,rshared",
        "/anon",
        {"type": "volume", "source": "data", "target": "/v", "read_only": true,
         "volume": {"nocopy": true, "subpath": "sub/dir"}},
        {"type": "bind", "source": "/lib/modules/", "target": "/lib/modules",
         "bind": {"propagation": "rslave"}},
        {"type": "tmpfs", "target": "/cache", "tmpfs": {"size": "64m", "mode": 1777}},
    ]}))
    .unwrap();
    let m = |kind: &str, source: Option<&str>, target: &str| Mount {
        kind: kind.into(),
        source: source.map(Into::into),
        target: target.into(),
        ..Default::default()
    };
    assert_eq!(
        c.volumes,
        vec![
            m("volume", Some("data"), "/data"),
            Mount {
                read_only: true,
                ..m("volume", Some("data"), "/ro")
            },
            m("bind", Some("/sys"), "/sys"),
            Mount {
                read_only: true,
                propagation: Some("rshared".into()),
                ..m("bind", Some("/run/dbus"), "/host/run/dbus")
            },
            m("volume", None, "/anon"),
            Mount {
                read_only: true,
                nocopy: true,
                subpath: Some("sub/dir".into()),
                ..m("volume", Some("data"), "/v")
            },
            Mount {
                propagation: Some("rslave".into()),
                ..m("bind", Some("/lib/modules"), "/lib/modules")
            },
            Mount {
                size: Some(64 << 20),
                mode: Some(0o1777),
                ..m("tmpfs", None, "/cache")
            },
        ]
    );
    assert_eq!(c.volume_names(), ["data"]);
}

#[test]
fn other_volume_rules() {
    assert!(rejected(json!({"volumes": ["undeclared:/x"]}), "volumes[0]").contains("declared"));
    rejected(
        json!({"volumes": [{"type": "volume", "source": "nope", "target": "/x"}]}),
        "volumes[0]",
    );
    rejected(json!({"volumes": ["data:relative"]}), "volumes[0]");
    rejected(json!({"volumes": ["data:/x:bogus"]}), "volumes[0]");
    rejected(
        json!({"volumes": [{"type": "npipe", "target": "/x"}]}),
        "volumes[0].type",
    );
    rejected(
        json!({"volumes": [{"type": "tmpfs", "target": "/x", "tmpfs": {"mode": 999}}]}),
        "volumes[0].tmpfs.mode",
    );
    rejected(
        json!({"volumes": [{"type": "volume", "source": "data", "target": "/x",
            "volume": {"subpath": "../up"}}]}),
        "volumes[0].volume.subpath",
    );
    rejected(json!({"volumes": "data:/x"}), "volumes");
    rejected(json!({"tmpfs": ["relative"]}), "tmpfs[0]");
    assert_eq!(
        one(json!({"tmpfs": "/run:size=1m"})).unwrap().tmpfs,
        ["/run:size=1m"]
    );
}
