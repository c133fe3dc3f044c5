//! Tests of the bind source and device allow-lists.
use serde_json::{json, Value};

use super::super::tests::{app, one, parse, rejected, REL};
use super::*;

#[test]
fn bind_sources_must_be_allow_listed() {
    for ok in [
        "/var/run/docker.sock",
        "/run/dbus",
        "/sys/class/gpio",
        "/proc",
        "/lib/firmware/",
        "/var/log/journal",
        "/run/log/journal",
        "/etc/machine-id",
    ] {
        assert!(bind_source(ok).is_ok(), "{ok}");
    }
    for bad in [
        "/etc",
        "/sysfoo",
        "/sys/../etc",
        "./data",
        "~/x",
        "/",
        "/run/dbus/./x",
    ] {
        assert!(bind_source(bad).is_err(), "{bad}");
    }
    // Links below /proc lead anywhere on the host: only /proc itself is allowed.
    for bad in [
        "/proc/1/root",
        "/proc/self/root",
        "/proc//1/root/",
        "/proc/thread-self/root",
        "/proc/4242/cwd",
        "/proc/self/fd/3",
        "/proc/1/map_files/400000-452000",
        "/proc/1/task/1/root",
        "/proc/1/ns/net",
        "/proc/net",
        "/proc/sys/kernel",
    ] {
        let e = bind_source(bad).expect_err(bad);
        assert!(e.contains("below /proc"), "{bad}: {e}");
    }
    assert!(
        rejected(json!({"volumes": ["/proc/1/root:/host"]}), "volumes[0]")
            .contains("only /proc itself")
    );
    rejected(
        json!({"volumes": [{"type": "bind", "source": "/proc/self/root", "target": "/h"}]}),
        "volumes[0].source",
    );
    assert!(rejected(json!({"volumes": ["/etc:/etc"]}), "volumes[0]").contains("not allowed"));
    rejected(
        json!({"volumes": ["data:/d", "/sys/../root:/r"]}),
        "volumes[1]",
    );
    rejected(
        json!({"volumes": [{"type": "bind", "source": "/home", "target": "/h"}]}),
        "volumes[0].source",
    );
    rejected(json!({"volumes": ["./rel:/r"]}), "volumes[0]");
}

#[test]
fn devices_are_below_dev() {
    for bad in [
        "/etc/shadow",
        "/dev",
        "/dev/../etc/shadow",
        "/dev/./sda",
        "//etc/x:/dev/x",
        "dev/sda",
    ] {
        rejected(json!({ "devices": [bad] }), "devices[0]");
    }
    assert!(one(json!({"devices": ["/dev/serial/by-id/usb-1:/dev/ttyUSB0"]})).is_ok());
}

#[test]
fn volumes_that_bind_host_paths_follow_the_bind_allow_list() {
    let vol = |opts: Value| {
        app(
            json!({}),
            json!({ "volumes": { "v": { "driver_opts": opts } } }),
        )
    };
    for bad in [
        json!({"type": "none", "o": "bind", "device": "/etc"}),
        json!({"type": "none", "o": "ro,rbind", "device": "/sys/../etc"}),
        json!({"type": "none", "o": "bind", "device": "/proc/1/root"}),
        json!({"o": "bind"}),
    ] {
        let e = parse(vol(bad.clone())).expect_err(&bad.to_string());
        assert_eq!(
            e.field,
            format!("releases.{REL}.volumes.v.driver_opts.device")
        );
    }
    for ok in [
        json!({"type": "none", "o": "bind", "device": "/lib/firmware"}),
        json!({"type": "tmpfs", "device": "tmpfs", "o": "size=10m"}),
    ] {
        assert!(parse(vol(ok.clone())).is_ok(), "{ok}");
    }
    // balena's own apps (class `app`, such as the supervisor app) may bind other paths.
    let mut system = vol(json!({"type": "none", "o": "bind", "device": "/tmp"}));
    system["class"] = json!("app");
    assert!(parse(system).is_ok());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Whatever path a target names, an accepted bind source is normalised and stays
    /// below an allow-listed path: no `..`, `.`, empty or relative trick gets out, and
    /// nothing below `/proc` (`/proc/1/root`, `/proc/self/cwd`, ...) is accepted.
    #[test]
    fn no_bind_source_escapes_the_allow_list(
        parts in proptest::collection::vec(
            "(sys|proc|etc|dev|run|dbus|lib|modules|\\.\\.|\\.|root|var|log|journal|machine-id|docker.sock|1|4242|self|thread-self|cwd|fd|map_files|)",
            0..6,
        ),
        lead in "(/|//|\\.|~|)",
        trail in "(/|)",
    ) {
        let src = format!("{lead}{}{trail}", parts.join("/"));
        if let Ok(norm) = bind_source(&src) {
            proptest::prop_assert!(!norm.split('/').any(|c| c == ".." || c == "."), "{src} → {norm}");
            proptest::prop_assert!(!norm.contains("//") && !norm.ends_with('/'), "{src} → {norm}");
            proptest::prop_assert!(
                BIND_ALLOW_LIST.iter().any(|a| norm == *a || norm.starts_with(&format!("{a}/"))),
                "{src} → {norm}"
            );
            proptest::prop_assert!(!norm.starts_with("/proc/"), "{src} → {norm}");
        }
        let dev = format!("/dev{lead}{}{trail}", parts.join("/"));
        if is_device_path(&dev) {
            proptest::prop_assert!(!dev.split('/').any(|c| c == ".." || c == "."), "{dev}");
        }
    }
}
