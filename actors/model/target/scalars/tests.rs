//! Tests of scalar values: commands, numbers, sizes, durations.
use serde_json::json;

use super::super::tests::{one, rejected};
use super::*;
use crate::model::compose::{DeviceMapping, ServiceConfig};

#[test]
fn command_and_entrypoint() {
    let c = one(json!({"command": ["echo", 1], "entrypoint": "/bin/sh -c"})).unwrap();
    assert_eq!(c.command, Some(vec!["echo".into(), "1".into()]));
    assert_eq!(c.entrypoint, Some(vec!["/bin/sh".into(), "-c".into()]));
    assert!(rejected(json!({"command": "echo 'oops"}), "command").contains("unclosed"));
    rejected(json!({"entrypoint": "a \"b"}), "entrypoint");
    rejected(json!({"command": 5}), "command");
}

#[test]
fn shell_split_cases() {
    let ok = |s: &str, w: &[&str]| assert_eq!(shell_split(s).unwrap(), w, "{s}");
    ok("sleep infinity", &["sleep", "infinity"]);
    ok("  a   b  ", &["a", "b"]);
    ok("", &[]);
    ok(
        "sh -c 'echo $HOME; exit 1'",
        &["sh", "-c", "echo $HOME; exit 1"],
    );
    ok(r#"echo "a \"b\" \$c \n""#, &["echo", r#"a "b" $c \n"#]);
    ok(r"a\ b c", &["a b", "c"]);
    ok(r#"x"y"'z' "" ''"#, &["xyz", "", ""]);
    ok("a\tb\nc", &["a", "b", "c"]);
    ok("echo $PATH", &["echo", "$PATH"]);
    assert!(shell_split("'unclosed").is_err());
    assert!(shell_split("\"unclosed").is_err());
    assert!(shell_split("trailing\\").is_err());
}

#[test]
fn scalar_rules() {
    assert_eq!(
        one(json!({"cpus": 1.5})).unwrap().nano_cpus,
        Some(1_500_000_000)
    );
    assert_eq!(
        one(json!({"cpus": "0.25"})).unwrap().nano_cpus,
        Some(250_000_000)
    );
    rejected(json!({"cpus": -1}), "cpus");
    rejected(json!({"cpus": "inf"}), "cpus");
    rejected(json!({"cpus": "NaN"}), "cpus");
    rejected(
        json!({"devices": ["/dev/ttyUSB0", "nvidia.com/gpu=all"]}),
        "devices[1]",
    );
    rejected(json!({"devices": ["/dev/x:/dev/y:rwx"]}), "devices[0]");
    let c = one(json!({"devices": ["/dev/a", "/dev/b:/dev/c", "/dev/d:r", "/dev/e:/dev/f:rw"]}))
        .unwrap();
    let d = |s: &str, t: &str, p: &str| DeviceMapping {
        source: s.into(),
        target: t.into(),
        permissions: p.into(),
    };
    assert_eq!(
        c.devices,
        [
            d("/dev/a", "/dev/a", "rwm"),
            d("/dev/b", "/dev/c", "rwm"),
            d("/dev/d", "/dev/d", "r"),
            d("/dev/e", "/dev/f", "rw")
        ]
    );
    rejected(json!({"privileged": "yes"}), "privileged");
    rejected(json!({"oom_score_adj": 2000}), "oom_score_adj");
    rejected(json!({"cgroup": "shared"}), "cgroup");
    rejected(json!({"mem_limit": "lots"}), "mem_limit");
    rejected(json!({"stop_grace_period": "soon"}), "stop_grace_period");
    rejected(
        json!({"healthcheck": {"test": ["echo"]}}),
        "healthcheck.test",
    );
    rejected(
        json!({"ulimits": {"nofile": {"soft": 1}}}),
        "ulimits.nofile.hard",
    );
    rejected(json!({"extra_hosts": ["nohost"]}), "extra_hosts[0]");
    rejected(json!({"cpu_shares": 1.5}), "cpu_shares");
    rejected(json!({"environment": {"A=B": "x"}}), "environment.A=B");
}

/// Values the engine takes in narrower integers are refused when they do not fit, instead
/// of wrapping on the way (`stop_grace_period` went `as i32` into the stop request).
#[test]
fn numbers_the_engine_takes_narrower_must_fit() {
    let secs = |c: ServiceConfig| c.stop_timeout_secs();
    assert_eq!(
        secs(one(json!({"stop_grace_period": "596523h14m7s"})).unwrap()),
        Some(2_147_483_647)
    );
    assert_eq!(
        secs(one(json!({"stop_grace_period": 2_147_483_647u64})).unwrap()),
        Some(2_147_483_647)
    );
    for big in [
        json!("596523h14m8s"),
        json!("1193046h28m21s"),
        json!(4_294_967_301u64),
        json!(1e300),
    ] {
        let m = rejected(json!({ "stop_grace_period": big }), "stop_grace_period");
        assert!(
            m.contains("2147483647") || m.contains("seconds"),
            "{big}: {m}"
        );
    }
    assert!(one(json!({"healthcheck": {"interval": "2562047h"}})).is_ok());
    rejected(
        json!({"healthcheck": {"interval": "2562048h"}}),
        "healthcheck.interval",
    );
    rejected(
        json!({"healthcheck": {"start_period": 1e12}}),
        "healthcheck.start_period",
    );
}

#[test]
fn sizes() {
    assert_eq!(parse_bytes("100"), Ok(100));
    assert_eq!(parse_bytes("100b"), Ok(100));
    assert_eq!(parse_bytes("2k"), Ok(2048));
    assert_eq!(parse_bytes("64M"), Ok(64 << 20));
    assert_eq!(parse_bytes("1.5gb"), Ok(3 << 29));
    assert!(parse_bytes("1x").is_err());
    assert!(parse_bytes("").is_err());
}
