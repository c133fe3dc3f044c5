//! Tests of a service's fields, its composition keys and the references between services.
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::super::tests::{app, one, parse, rejected, REL};
use super::*;
use crate::model::compose::PortMapping;

#[test]
fn a_service_is_normalised() {
    let a = parse(app(
        json!({"web": {"id": 3, "image": "alpine", "image_id": "55",
        "labels": {"com.example": "x", "io.resin.features.resin-api": "1"},
        "environment": {"FOO": "bar"},
        "composition": {
            "command": "sleep infinity",
            "environment": {"FOO": "overridden", "N": 5, "B": true, "U": null},
            "labels": ["com.example=from-compose", "other=y"],
            "networks": {"front": {"aliases": ["www"]}},
            "volumes": ["data:/data"],
            "ports": ["9000:9000"],
            "unknown_key": {"ignored": true},
        }}}),
        json!({"networks": {"front": null}, "volumes": {"data": {}}}),
    ))
    .unwrap();
    let rel = &a.releases[&REL.to_string()];
    let web = &rel.services[&"web".to_string()];
    assert_eq!(web.id, 3);
    assert_eq!(web.image, "alpine:latest");
    assert!(web.running);
    let c = &web.config;
    assert_eq!(c.command, Some(vec!["sleep".into(), "infinity".into()]));
    assert_eq!(
        c.environment,
        BTreeMap::from([
            ("B".to_string(), "true".to_string()),
            ("FOO".to_string(), "bar".to_string()),
            ("N".to_string(), "5".to_string()),
        ])
    );
    assert_eq!(
        c.labels,
        BTreeMap::from([
            ("com.example".to_string(), "x".to_string()),
            ("io.balena.features.balena-api".to_string(), "1".to_string()),
            ("other".to_string(), "y".to_string()),
        ])
    );
    assert_eq!(c.network_names(), ["front"]);
    assert_eq!(c.networks["front"].aliases, ["www"]);
    assert_eq!(c.restart_policy, RestartPolicy::default());
    assert_eq!(
        c.ports,
        [PortMapping {
            target: 9000,
            published: 9000,
            protocol: "tcp".into(),
            host_ip: None
        }]
    );
    assert_eq!(
        a.networks.keys().collect::<Vec<_>>(),
        ["front"],
        "no default network when every service has networks"
    );
    assert_eq!(
        a.networks[&"front".to_string()].config.driver.as_deref(),
        Some("bridge")
    );
    assert_eq!(
        a.volumes[&"data".to_string()].config.driver.as_deref(),
        Some("local")
    );
}

#[test]
fn top_level_fields_are_validated() {
    let e = parse(app(
        json!({"web": {"id": 1, "image": "Not An Image"}}),
        json!({}),
    ))
    .unwrap_err();
    assert_eq!(e.field, format!("releases.{REL}.services.web.image"));
    let e = parse(app(
        json!({"web": {"id": 1, "image": "alpine", "environment": {" FOO": "x"}}}),
        json!({}),
    ))
    .unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.web.environment. FOO")
    );
    let e = parse(app(
        json!({"web": {"id": 1, "image": "alpine", "labels": {"a b": "x"}}}),
        json!({}),
    ))
    .unwrap_err();
    assert_eq!(e.field, format!("releases.{REL}.services.web.labels.a b"));
    let e = parse(app(
        json!({"web": {"id": 1, "image": "alpine", "composition": "nope"}}),
        json!({}),
    ))
    .unwrap_err();
    assert_eq!(e.field, format!("releases.{REL}.services.web.composition"));
    let e = parse(app(
        json!({"web": {"id": 1, "image": "alpine",
            "labels": {"io.balena.private.config": "{}"}}}),
        json!({}),
    ))
    .unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.web.labels.io.balena.private.config")
    );
}

#[test]
fn running_defaults_to_true_and_the_top_level_wins() {
    let svc = |s: Value| {
        parse(app(json!({ "web": s }), json!({}))).unwrap().releases[&REL.to_string()].services
            [&"web".to_string()]
            .running
    };
    assert!(svc(json!({"id": 1, "image": "a"})));
    assert!(!svc(json!({"id": 1, "image": "a", "running": false})));
    assert!(!svc(
        json!({"id": 1, "image": "a", "composition": {"running": false}})
    ));
    assert!(svc(json!({"id": 1, "image": "a", "running": true,
        "composition": {"running": false}})));
}

#[test]
fn security_opt_is_allow_listed_and_normalised() {
    let c = one(json!({"security_opt": [
        "no-new-privileges:true", "no-new-privileges=false",
        "apparmor:unconfined", "seccomp=unconfined"]}))
    .unwrap();
    assert_eq!(
        c.security_opt,
        [
            "no-new-privileges=true",
            "no-new-privileges=false",
            "apparmor=unconfined",
            "seccomp=unconfined"
        ]
    );
    rejected(
        json!({"security_opt": ["seccomp=unconfined", "label=disable"]}),
        "security_opt[1]",
    );
    rejected(
        json!({"security_opt": ["apparmor=my-profile"]}),
        "security_opt[0]",
    );
    rejected(
        json!({"security_opt": ["no-new-privileges"]}),
        "security_opt[0]",
    );
}

#[test]
fn sysctls_are_namespaced_strings() {
    let c = one(
        json!({"sysctls": {"net.core.somaxconn": 1024, "kernel.sem": "1 2 3",
        "kernel.shmmax": 5, "fs.mqueue.msg_max": "10", "kernel.msgmax": 1}}),
    )
    .unwrap();
    assert_eq!(c.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(c.sysctls.len(), 5);
    let c = one(json!({"sysctls": ["net.ipv4.ip_forward=1"]})).unwrap();
    assert_eq!(c.sysctls["net.ipv4.ip_forward"], "1");
    rejected(
        json!({"sysctls": {"vm.swappiness": 1}}),
        "sysctls.vm.swappiness",
    );
    rejected(
        json!({"sysctls": ["kernel.domainname=x"]}),
        "sysctls.kernel.domainname",
    );
    rejected(
        json!({"sysctls": {"kernel.semx": 1}}),
        "sysctls.kernel.semx",
    );
}

#[test]
fn network_mode_and_networks() {
    assert!(rejected(
        json!({"network_mode": "host", "networks": ["front"]}),
        "network_mode"
    )
    .contains("mutually exclusive"));
    rejected(json!({"network_mode": "container:abc"}), "network_mode");
    rejected(json!({"network_mode": "front"}), "network_mode");
    assert!(rejected(json!({"networks": ["back"]}), "networks.back").contains("declared"));
    let c = one(json!({"networks": ["default", "front"]})).unwrap();
    assert_eq!(c.network_names(), ["default", "front"]);
    let c = one(json!({"networks": {"front": {"priority": 1}, "default": null}})).unwrap();
    assert_eq!(c.network_names(), ["front", "default"]);
    for mode in ["host", "none", "bridge"] {
        let c = one(json!({ "network_mode": mode })).unwrap();
        assert_eq!(c.network_mode.as_deref(), Some(mode));
        assert!(c.networks.is_empty());
    }
}

#[test]
fn service_references_and_cycles() {
    let services = |a: Value, b: Value| {
        parse(app(
            json!({"a": {"id": 1, "image": "x", "composition": a},
                   "b": {"id": 2, "image": "x", "composition": b}}),
            json!({}),
        ))
    };
    let ok = services(
        json!({"depends_on": {"b": {"condition": "service_healthy"}}}),
        json!({"network_mode": "service:c", "depends_on": []}),
    );
    let e = ok.unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.b.composition.network_mode")
    );
    let e = services(json!({"depends_on": ["nope"]}), json!({})).unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.a.composition.depends_on.nope")
    );
    let e = services(json!({"depends_on": ["a"]}), json!({})).unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.a.composition.depends_on.a")
    );
    let e = services(
        json!({"depends_on": ["b"]}),
        json!({"depends_on": {"a": null}}),
    )
    .unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.a.composition.depends_on")
    );
    assert_eq!(e.message, "dependency cycle: a -> b -> a");
    let e = services(
        json!({"network_mode": "service:b"}),
        json!({"depends_on": ["a"]}),
    )
    .unwrap_err();
    assert_eq!(e.message, "dependency cycle: a -> b -> a");
    let e = services(
        json!({"depends_on": {"b": {"condition": "whenever"}}}),
        json!({}),
    )
    .unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.a.composition.depends_on.b.condition")
    );
    let a = services(
        json!({"depends_on": {"b": {"condition": "service_completed_successfully"}}}),
        json!({"network_mode": "service:a"}),
    );
    assert!(a.is_err(), "b joins a's namespace, a waits for b: a cycle");
    let a = services(
        json!({"depends_on": {"b": {"condition": "service_completed_successfully"}}}),
        json!({}),
    )
    .unwrap();
    assert_eq!(
        a.releases[&REL.to_string()].services[&"a".to_string()]
            .config
            .dependencies(),
        BTreeMap::from([("b".to_string(), Condition::ServiceCompletedSuccessfully)])
    );
}

#[test]
fn the_rest_of_the_composition() {
    let c = one(json!({
        "restart": "on-failure:3", "privileged": true, "init": false, "tty": false,
        "read_only": true, "working_dir": "/app", "user": 1000, "hostname": "h",
        "domainname": "d", "stop_signal": "SIGINT", "stop_grace_period": "1m30s",
        "dns": "8.8.8.8", "dns_search": ["example.com"], "dns_opt": ["use-vc"],
        "extra_hosts": {"db": "10.0.0.2"}, "mem_limit": "1g", "mem_reservation": 1024,
        "shm_size": "64mb", "cpu_shares": "512", "cpuset": "0-1", "pids_limit": 100,
        "oom_score_adj": -10, "group_add": ["audio", 44], "cgroup": "host",
        "ulimits": {"nofile": {"soft": 1024, "hard": 2048}, "nproc": 65535},
        "runtime": "runc", "userns_mode": "host", "annotations": ["a=b"],
        "cap_add": ["NET_ADMIN"], "cap_drop": "ALL", "uts": "host", "ipc": "host",
        "healthcheck": {"test": "curl -f localhost", "interval": "30s", "timeout": 10,
            "start_period": "5s", "retries": 3},
    }))
    .unwrap();
    assert_eq!(
        c.restart_policy,
        RestartPolicy {
            name: RestartPolicyName::OnFailure,
            max_retries: Some(3)
        }
    );
    assert_eq!(c.user.as_deref(), Some("1000"));
    assert_eq!(c.stop_grace_period, Some(Duration::from_secs(90)));
    assert_eq!(c.dns, ["8.8.8.8"]);
    assert_eq!(c.extra_hosts, ["db:10.0.0.2"]);
    assert_eq!(c.mem_limit, Some(1 << 30));
    assert_eq!(c.shm_size, Some(64 << 20));
    assert_eq!(c.cpu_shares, Some(512));
    assert_eq!(c.group_add, ["audio", "44"]);
    assert_eq!(
        c.ulimits["nproc"],
        Ulimit {
            soft: 65535,
            hard: 65535
        }
    );
    assert_eq!(c.cap_drop, ["ALL"]);
    assert_eq!(
        c.healthcheck,
        Some(Healthcheck {
            test: Some(vec!["CMD-SHELL".into(), "curl -f localhost".into()]),
            interval: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_secs(10)),
            start_period: Some(Duration::from_secs(5)),
            retries: Some(3),
            ..Default::default()
        })
    );
    let c = one(json!({"healthcheck": {"disable": true, "test": ["CMD", "x"]}})).unwrap();
    assert_eq!(
        c.healthcheck.unwrap(),
        Healthcheck {
            disable: true,
            ..Default::default()
        }
    );
}

#[test]
fn restart_policies() {
    let r = |v: Value| restart(&v);
    let p = |name, max_retries| RestartPolicy { name, max_retries };
    assert_eq!(r(json!("no")), p(RestartPolicyName::No, None));
    assert_eq!(r(json!(false)), p(RestartPolicyName::No, None));
    assert_eq!(
        r(json!(" Unless-Stopped ")),
        p(RestartPolicyName::UnlessStopped, None)
    );
    assert_eq!(
        r(json!("on_failure")),
        p(RestartPolicyName::OnFailure, None)
    );
    assert_eq!(
        r(json!("on-failure:5")),
        p(RestartPolicyName::OnFailure, Some(5))
    );
    assert_eq!(r(json!("sometimes")), p(RestartPolicyName::Always, None));
    assert_eq!(r(json!("always:3")), p(RestartPolicyName::Always, None));
}
