//! `GET/PATCH /v1/device/host-config` (spec/device-api.md) against fake hostnamed and systemd
//! on the private bus: hostnamed on generic Linux, config.json and the redsocks files on
//! balenaOS, the proxy units restarted and waited for, update locks respected.
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::agent::{eventually, Agent, AgentOpts};
use crate::support::fake_host::{FakeHostname, FakeSystemd};
use crate::support::infra::{docker, empty_engine, exec, infra};

const UUID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn start(
    infra: &crate::support::infra::Infra,
    home: &Path,
    boot: &Path,
    services: &[&str],
) -> Agent {
    let agent = Agent::start(
        AgentOpts::new(home)
            .env("DOCKER_HOST", infra.docker_host.clone())
            .env("DBUS_SYSTEM_BUS_ADDRESS", infra.dbus_address.clone())
            .env("BOOT_MOUNTPOINT", boot.display().to_string())
            .env("HELIOS_UUID", UUID),
    );
    let found = eventually(Duration::from_secs(20), || {
        let caps = agent.get("/v3/capabilities").json();
        services
            .iter()
            .all(|s| caps["bus"][s] == true)
            .then_some(())
    });
    assert!(found.is_some(), "{services:?} detected on the bus");
    agent
}

#[tokio::test]
async fn generic_linux_sets_the_hostname_through_hostnamed_and_refuses_a_proxy() {
    let Some(infra) = infra("engine::host_config") else {
        return;
    };
    let hostnamed = FakeHostname::start(&infra.dbus_address, "generic-box");
    let home = tempfile::tempdir().unwrap();
    let boot = tempfile::tempdir().unwrap(); // no config.json: not balenaOS
    let agent = start(infra, home.path(), boot.path(), &["hostname1"]);

    let r = agent.get("/v1/device/host-config");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"network": {"hostname": "generic-box"}}));

    let r = agent.patch_json(
        "/v1/device/host-config",
        r#"{"network": {"hostname": "kitchen-1"}}"#,
    );
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    assert_eq!(hostnamed.hostname(), "kitchen-1");
    assert_eq!(
        agent.get("/v1/device/host-config").json()["network"]["hostname"],
        "kitchen-1"
    );

    // Empty resets to the first 7 characters of the uuid.
    let r = agent.patch_json("/v1/device/host-config", r#"{"network": {"hostname": ""}}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(hostnamed.hostname(), &UUID[..7]);

    // No boot partition: proxy settings are refused, nothing else changes.
    let r = agent.patch_json(
        "/v1/device/host-config",
        r#"{"network": {"hostname": "other", "proxy": {"type": "socks5", "ip": "10.0.0.1", "port": 1080}}}"#,
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("balenaOS"), "{}", r.body);
    assert_eq!(hostnamed.hostname(), &UUID[..7]);

    // Bad input: 400 with a text message; a body without `network` is ignored.
    for (body, why) in [
        ("[]", "not an object"),
        ("{not json", "malformed"),
        (r#"{"network": 5}"#, "network not an object"),
        (r#"{"network": {"hostname": 5}}"#, "hostname not a string"),
        (
            r#"{"network": {"hostname": "bad host!"}}"#,
            "hostname with a space",
        ),
        (r#"{"network": {"proxy": []}}"#, "proxy not an object"),
    ] {
        let r = agent.patch_json("/v1/device/host-config", body);
        assert_eq!(r.status, 400, "{why}: {}", r.body);
        assert!(!r.body.is_empty(), "{why}: a message");
    }
    let r = agent.patch_json("/v1/device/host-config", r#"{"force": true}"#);
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    assert_eq!(hostnamed.hostname(), &UUID[..7], "nothing changed");

    // hostnamed gone: a clear 503, and the agent keeps answering.
    drop(hostnamed);
    let r = agent.patch_json(
        "/v1/device/host-config",
        r#"{"network": {"hostname": "late"}}"#,
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(agent.get("/ping").status, 200);
}

#[tokio::test]
async fn balena_os_writes_config_json_and_the_proxy_and_restarts_its_units() {
    let Some(infra) = infra("engine::host_config") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let systemd = FakeSystemd::start(&infra.dbus_address);
    let home = tempfile::tempdir().unwrap();
    let boot = tempfile::tempdir().unwrap();
    let config_json = boot.path().join("config.json");
    std::fs::write(
        &config_json,
        r#"{"uuid":"a1b2c3d","deviceApiKey":"secret-key","hostname":"old-name"}"#,
    )
    .unwrap();
    let agent = start(infra, home.path(), boot.path(), &["systemd1"]);
    let read_config =
        || serde_json::from_slice::<Value>(&std::fs::read(&config_json).unwrap()).unwrap();

    assert_eq!(
        agent.get("/v1/device/host-config").json(),
        json!({"network": {"hostname": "old-name"}})
    );

    // An app whose user holds its update lock.
    let app = json!({"id": 3, "name": "locked", "releases": {"r1": {"services": {"main": {
        "id": 1, "image": infra.image_a, "composition": {"command": "sleep infinity"}}}}}});
    assert_eq!(
        agent
            .post_json("/v3/device/apps/locked-app", &app.to_string())
            .status,
        202
    );
    agent.wait_status("done", Duration::from_secs(60));
    exec(&d, "main_r1", &["touch", "/tmp/balena/updates.lock"]).await;

    let r = agent.patch_json(
        "/v1/device/host-config",
        r#"{"network": {"hostname": "new-name"}}"#,
    );
    assert_eq!(r.status, 423, "{}", r.body);
    assert_eq!(
        read_config()["hostname"],
        "old-name",
        "nothing written while locked"
    );

    let r = agent.patch_json(
        "/v1/device/host-config",
        r#"{"network": {"hostname": "new-name"}, "force": true}"#,
    );
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    let doc = read_config();
    assert_eq!(doc["hostname"], "new-name");
    assert_eq!(doc["deviceApiKey"], "secret-key", "other keys kept");
    assert!(
        !agent.logs().iter().any(|l| l.contains("secret-key")),
        "no secret in the logs"
    );

    // The proxy: files written, both units restarted, and the answer waits for their jobs.
    systemd.job_delay(Duration::from_millis(1500));
    let asked = Instant::now();
    let r = agent.patch_json(
        "/v1/device/host-config",
        r#"{"network": {"proxy": {"type": "socks5", "ip": "192.168.0.199", "port": 8123, "login": "user",
            "password": "pass", "noProxy": ["152.10.30.4", "253.1.1.0/16"]}}, "force": true}"#,
    );
    let answered = Instant::now();
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    let restarts: Vec<_> = systemd
        .calls()
        .into_iter()
        .filter(|c| c.method == "RestartUnit")
        .collect();
    let units: Vec<_> = restarts
        .iter()
        .map(|c| (c.unit.as_str(), c.mode.as_str()))
        .collect();
    assert_eq!(
        units,
        [
            ("balena-proxy-config.service", "fail"),
            ("redsocks.service", "fail")
        ]
    );
    for c in &restarts {
        let removed = c.job_removed_at.expect("JobRemoved sent");
        assert!(
            removed <= answered,
            "{} answered only after its JobRemoved",
            c.unit
        );
        assert!(c.at >= asked);
    }
    let conf = std::fs::read_to_string(boot.path().join("system-proxy/redsocks.conf")).unwrap();
    assert!(
        conf.contains("type = socks5;") && conf.contains("ip = 192.168.0.199;"),
        "{conf}"
    );
    assert_eq!(
        std::fs::read_to_string(boot.path().join("system-proxy/no_proxy")).unwrap(),
        "152.10.30.4\n253.1.1.0/16\n"
    );
    assert_eq!(
        agent.get("/v1/device/host-config").json()["network"]["proxy"],
        json!({"type": "socks5", "ip": "192.168.0.199", "port": 8123, "login": "user",
            "password": "pass", "noProxy": ["152.10.30.4", "253.1.1.0/16"]})
    );
    assert!(
        !agent
            .logs()
            .iter()
            .any(|l| l.contains("pass\"") || l.contains("password=")),
        "no password in the logs"
    );

    // A failed restart job is an error the caller sees.
    systemd.job_delay(Duration::ZERO);
    systemd.job_result("redsocks.service", "failed");
    let r = agent.patch_json(
        "/v1/device/host-config",
        r#"{"network": {"proxy": {"port": 9000}}, "force": true}"#,
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("redsocks.service") && r.body.contains("failed"),
        "{}",
        r.body
    );

    // Bad proxy fields: 400 and the files stay as they were.
    let r = agent.patch_json(
        "/v1/device/host-config",
        r#"{"network": {"proxy": {"type": "ftp"}}, "force": true}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        std::fs::read_to_string(boot.path().join("system-proxy/redsocks.conf"))
            .unwrap()
            .contains("port = 9000;")
    );

    // `{}` removes the proxy.
    systemd.job_result("redsocks.service", "done");
    let r = agent.patch_json(
        "/v1/device/host-config",
        r#"{"network": {"proxy": {}}, "force": true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!boot.path().join("system-proxy/redsocks.conf").exists());
    assert!(agent.get("/v1/device/host-config").json()["network"]
        .get("proxy")
        .is_none());
    drop(agent);
    empty_engine(&d).await;
}
