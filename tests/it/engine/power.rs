//! `/v1/reboot` and `/v1/shutdown` through a fake logind on the private bus: refused while a
//! user holds an update lock, called exactly once after the answer when forced (its locks kept
//! through applies that end meanwhile), and a clear error without logind.
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::agent::{eventually, Agent, AgentOpts};
use crate::support::fake_host::FakeLogin1;
use crate::support::infra::{docker, empty_engine, exec, infra};

/// An agent on the test engine and bus, once it has seen logind.
fn agent_with_logind(infra: &crate::support::infra::Infra, home: &std::path::Path) -> Agent {
    let agent = Agent::start(
        AgentOpts::new(home)
            .env("DOCKER_HOST", infra.docker_host.clone())
            .env("DBUS_SYSTEM_BUS_ADDRESS", infra.dbus_address.clone()),
    );
    let found = eventually(Duration::from_secs(20), || {
        (agent.get("/v3/capabilities").json()["bus"]["login1"] == true).then_some(())
    });
    assert!(found.is_some(), "logind detected on the bus");
    agent
}

#[tokio::test]
async fn reboot_respects_locks_and_calls_logind_once_after_answering() {
    let Some(infra) = infra("engine::power") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let login1 = FakeLogin1::start(&infra.dbus_address);
    let home = tempfile::tempdir().unwrap();
    let agent = agent_with_logind(infra, home.path());

    let app = json!({"id": 9, "name": "power", "releases": {"r1": {"services": {"main": {
        "id": 1, "image": infra.image_a, "composition": {"command": "sleep infinity"}}}}}});
    assert_eq!(
        agent
            .post_json("/v3/device/apps/power-app", &app.to_string())
            .status,
        202
    );
    agent.wait_status("done", Duration::from_secs(60));

    // A user lock refuses the reboot; logind is not called.
    exec(&d, "main_r1", &["touch", "/tmp/balena/updates.lock"]).await;
    let r = agent.post_json("/v1/reboot", "{}");
    assert_eq!(r.status, 423, "{}", r.body);
    assert_eq!(r.json()["Data"], "");
    assert!(
        r.json()["Error"]
            .as_str()
            .is_some_and(|e| e.contains("locked")),
        "{}",
        r.body
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(login1.calls().is_empty(), "no reboot while locked");

    // Forced: 202 first, then exactly one Reboot.
    let r = agent.post_json("/v1/reboot", r#"{"force": true}"#);
    let answered = Instant::now();
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json(), json!({"Data": "OK", "Error": null}));
    let called = eventually(Duration::from_secs(10), || {
        let c = login1.calls();
        (!c.is_empty()).then_some(c)
    })
    .expect("logind Reboot called");
    std::thread::sleep(Duration::from_secs(1));
    let calls = login1.calls();
    assert_eq!(calls.len(), 1, "exactly once: {calls:?}");
    assert_eq!(calls[0].0, "Reboot");
    assert!(called[0].1 >= answered, "called after the API answered");

    // The reboot keeps the app's locks, also through an apply that ends meanwhile (the end of
    // an apply releases the locks it holds, never kept ones).
    let ours = home
        .path()
        .join("run/update-locks/power-app/resin-updates.lock");
    assert!(ours.exists(), "the reboot holds the app's locks");
    let mark = agent.logs().len();
    let r = agent.post_json("/v1/update", "{}");
    assert!(matches!(r.status, 202 | 204), "{r:?}");
    agent
        .wait_log_after(
            mark,
            |l| l.contains("decision=reapply"),
            Duration::from_secs(10),
        )
        .expect("the target is re-applied");
    agent.wait_status("done", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        ours.exists(),
        "an apply ending meanwhile left the reboot's locks"
    );
    drop(agent);
    empty_engine(&d).await;
}

#[test]
fn without_logind_power_actions_fail_clearly() {
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentOpts::new(home.path()));
    let r = agent.post_json("/v1/shutdown", "{}");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.json()["Error"]
            .as_str()
            .is_some_and(|e| e.contains("login1")),
        "{}",
        r.body
    );
    assert_eq!(agent.get("/ping").status, 200, "nothing else is affected");
}

/// spec/behaviours.md §5.5, §13.5: a requires-reboot service is created but not started; the
/// breadcrumb is written and, once the rest is on target, logind is asked to reboot once.
#[tokio::test]
async fn a_requires_reboot_service_waits_for_the_reboot_it_asks_for() {
    let Some(infra) = infra("engine::power") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let login1 = FakeLogin1::start(&infra.dbus_address);
    let home = tempfile::tempdir().unwrap();
    let agent = agent_with_logind(infra, home.path());

    let app = json!({"id": 9, "name": "driver", "releases": {"r1": {"services": {
        "main": {"id": 1, "image": infra.image_a, "composition": {"command": "sleep infinity"}},
        "driver": {"id": 2, "image": infra.image_a, "composition": {"command": "sleep infinity",
            "labels": {"io.balena.update.requires-reboot": "1"}}}}}}});
    assert_eq!(
        agent
            .post_json("/v3/device/apps/driver-app", &app.to_string())
            .status,
        202
    );
    agent.wait_status("done", Duration::from_secs(60));
    let called = eventually(Duration::from_secs(10), || {
        let c = login1.calls();
        (!c.is_empty()).then_some(c)
    })
    .expect("logind Reboot called");
    std::thread::sleep(Duration::from_secs(2));
    let calls = login1.calls();
    assert_eq!(calls.len(), 1, "exactly once: {calls:?}");
    assert_eq!(called[0].0, "Reboot");
    assert!(
        home.path().join("run/reboot-after-apply").exists(),
        "breadcrumb written"
    );
    let state = |name: &str| {
        let d = d.clone();
        let name = name.to_string();
        async move {
            d.inspect_container(
                &name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .unwrap()
            .state
            .unwrap()
        }
    };
    assert_eq!(state("main_r1").await.running, Some(true));
    let driver = state("driver_r1").await;
    assert_eq!(
        driver.running,
        Some(false),
        "created, not started before the reboot"
    );
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("decision=schedule_reboot") && l.contains("driver")));
    drop(agent);
    empty_engine(&d).await;
}
