//! Remote mode against the fake balena API and the real engine: registration from the
//! quickstart flags, polling with ETags, applying, reporting, `/v1/update`, rejected targets,
//! removal, restart with the stored identity, and a cloud answering 503 for a while.
use std::time::{Duration, Instant};

use bollard::query_parameters::InspectContainerOptions;
use serde_json::{json, Value};

use crate::support::agent::{eventually, Agent, AgentOpts};
use crate::support::fake_cloud::{FakeCloud, Fault, Route};
use crate::support::infra::{docker, empty_engine, infra, Infra};

const UUID: &str = "remote-device-1";
const APP: &str = "remote-app-1";

fn opts(infra: &Infra, home: &std::path::Path) -> AgentOpts {
    AgentOpts::new(home)
        .env("DOCKER_HOST", infra.docker_host.clone())
        .env("HELIOS_REMOTE_REPORT_MIN_INTERVAL_MS", "200")
        .env("HELIOS_REMOTE_POLL_MIN_INTERVAL_MS", "200")
        .env("HELIOS_REMOTE_POLL_MAX_JITTER_MS", "0")
        .env("HELIOS_LOCAL_RETRY_INTERVAL_MS", "500")
}

fn device_target(infra: &Infra, apps: Value) -> Value {
    let _ = infra;
    json!({"name": "remote-device", "config": {}, "apps": apps})
}

fn app(infra: &Infra, release: &str, command: &str) -> Value {
    json!({APP: {"id": 77, "name": "remote-fleet", "class": "fleet", "releases": {release: {"id": 1,
        "services": {"main": {"id": 7, "image_id": 8, "image": infra.image_a,
            "environment": {}, "labels": {},
            "composition": {"command": command, "stop_grace_period": "1s"}}}}}}})
}

/// The last report that has `apps` in it.
fn last_apps(cloud: &FakeCloud) -> Option<Value> {
    cloud
        .reports()
        .iter()
        .rev()
        .find_map(|r| r[UUID].get("apps").cloned())
}

#[tokio::test]
async fn registers_polls_applies_reports_and_keeps_its_identity() {
    let Some(infra) = infra("engine::remote") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let cloud = FakeCloud::start();
    cloud.add_fleet(42, "prov-key-secret");
    cloud.set_target(
        UUID,
        device_target(infra, app(infra, "rel-1", "sleep infinity")),
    );
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        opts(infra, home.path())
            .arg("--uuid")
            .arg(UUID)
            .arg("--remote-api-endpoint")
            .arg(cloud.url.clone())
            .arg("--provisioning-fleet")
            .arg("42")
            .arg("--provisioning-device-type")
            .arg("generic-amd64")
            .arg("--provisioning-key")
            .arg("prov-key-secret")
            .arg("--remote-poll-interval-ms")
            .arg("600000"),
    );

    // Registered, and the identity is in the config file (0600), without the provisioning key.
    let dev = eventually(Duration::from_secs(30), || {
        cloud.devices().into_iter().find(|d| d.uuid == UUID)
    })
    .expect("the device registers");
    let key = dev.api_keys[0].clone();
    let cfg_path = AgentOpts::new(home.path()).config_path();
    let cfg = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&cfg_path)
            .ok()
            .filter(|t| t.contains(&key))
    })
    .expect("identity persisted");
    assert!(
        !cfg.contains("prov-key-secret"),
        "the provisioning key is dropped: {cfg}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cfg_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Poll → apply → a report with the release done and the service running.
    let done = eventually(Duration::from_secs(90), || {
        let apps = last_apps(&cloud)?;
        let rel = &apps[APP]["releases"]["rel-1"];
        (rel["update_status"] == "done" && rel["services"]["main"]["status"] == "Running")
            .then_some(apps)
    })
    .expect("a report says the release is done and running");
    assert_eq!(done[APP]["release_uuid"], "rel-1");
    assert_eq!(
        done[APP]["releases"]["rel-1"]["services"]["main"]["image"],
        infra.image_a
    );
    let running = d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();
    for r in cloud.requests() {
        let ua = r.user_agent().unwrap_or("");
        assert!(
            !ua.starts_with("Supervisor/"),
            "our own requests never use Supervisor/: {ua}"
        );
    }
    let first_report = cloud.reports()[0][UUID].clone();
    assert_eq!(first_report["status"], "Idle");
    assert!(first_report["supervisor_version"].is_string());
    let logs = agent.logs().join("\n");
    assert!(
        !logs.contains("prov-key-secret") && !logs.contains(&key),
        "keys never logged"
    );

    // /v1/update polls right away; the unchanged target answers 304 and no report follows.
    std::thread::sleep(Duration::from_millis(800));
    let reports_before = cloud.reports().len();
    let gets_before = cloud.target_gets();
    let asked = Instant::now();
    assert_eq!(agent.post_json("/v1/update", "{}").status, 202);
    let polled = eventually(Duration::from_secs(10), || {
        cloud
            .requests()
            .into_iter()
            .filter(|r| r.route == Route::Target && r.at > asked)
            .find(|r| r.answered == Some(304))
    });
    assert!(polled.is_some(), "a poll right away, answered 304");
    assert!(cloud.target_gets() > gets_before);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cloud.reports().len(),
        reports_before,
        "nothing changed: no report"
    );

    // A malformed release leaves the running app untouched and is reported rejected.
    let mut bad = app(infra, "rel-2", "sh -c 'unclosed");
    bad[APP]["releases"]["rel-2"]["services"]["main"]["composition"]["command"] =
        json!("sh -c 'unclosed");
    cloud.set_target(UUID, device_target(infra, bad));
    assert_eq!(agent.post_json("/v1/update", "").status, 202);
    let rejected = eventually(Duration::from_secs(30), || {
        let apps = last_apps(&cloud)?;
        (apps[APP]["releases"]["rel-2"]["update_status"] == "rejected").then_some(apps)
    })
    .expect("the rejected release is reported");
    assert_eq!(rejected[APP]["releases"]["rel-2"]["services"], json!({}));
    agent
        .wait_log(
            |l| l.contains("Target release rejected"),
            Duration::from_secs(5),
        )
        .expect("the rejection is logged with its reason");
    let still = d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(still.id, running.id, "the running app is untouched");
    assert_eq!(still.state.unwrap().running, Some(true));

    // A target without the app removes it, and the report shows it gone.
    cloud.set_target(UUID, device_target(infra, json!({})));
    assert_eq!(agent.post_json("/v1/update", "").status, 202);
    let gone = eventually(Duration::from_secs(60), || {
        let apps = last_apps(&cloud)?;
        apps.get(APP).is_none().then_some(())
    });
    assert!(gone.is_some(), "the report shows the app gone");
    let mut removed = None;
    for _ in 0..120 {
        if d.inspect_container("main_rel-1", None::<InspectContainerOptions>)
            .await
            .is_err()
        {
            removed = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(removed.is_some(), "the container is removed");

    // Started again with no arguments it is the same device.
    agent.signal(libc::SIGTERM);
    drop(agent);
    let mark = Instant::now();
    let again = Agent::start(opts(infra, home.path()));
    let poll = eventually(Duration::from_secs(30), || {
        cloud
            .requests()
            .into_iter()
            .find(|r| r.route == Route::Target && r.at > mark)
    })
    .expect("polls again after a restart");
    assert_eq!(poll.path, format!("/device/v3/{UUID}/state"));
    assert_eq!(poll.bearer(), Some(key.as_str()));
    assert_eq!(cloud.devices().len(), 1, "no second registration");
    drop(again);
    empty_engine(&d).await;
}

#[tokio::test]
async fn a_failing_cloud_backs_off_and_the_apps_keep_running() {
    let Some(infra) = infra("engine::remote") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let cloud = FakeCloud::start();
    cloud.add_fleet(1, "p");
    cloud.add_device(UUID, "device-key-1", 1);
    cloud.set_target(
        UUID,
        device_target(infra, app(infra, "rel-1", "sleep infinity")),
    );
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        opts(infra, home.path())
            .arg("--uuid")
            .arg(UUID)
            .arg("--remote-api-endpoint")
            .arg(cloud.url.clone())
            .arg("--remote-api-key")
            .arg("device-key-1")
            .arg("--remote-poll-interval-ms")
            .arg("1600"),
    );
    let ok = eventually(Duration::from_secs(90), || {
        let apps = last_apps(&cloud)?;
        (apps[APP]["releases"]["rel-1"]["update_status"] == "done").then_some(())
    });
    assert!(ok.is_some(), "installed first");
    assert_eq!(
        agent.get("/v3/capabilities").json()["remote_reachable"],
        true
    );
    let running = d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();

    // The cloud answers 503 for a while; meanwhile the fleet moves to rel-2.
    let start = Instant::now();
    cloud.inject(
        Route::Target,
        6,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    cloud.set_target(
        UUID,
        device_target(infra, app(infra, "rel-2", "sleep 1000000")),
    );
    let failed = eventually(Duration::from_secs(60), || {
        let n = cloud
            .requests()
            .into_iter()
            .filter(|r| r.route == Route::Target && r.at > start && r.answered == Some(503))
            .count();
        (n >= 6).then_some(())
    });
    assert!(failed.is_some(), "six failed polls");
    assert_eq!(
        agent.get("/v3/capabilities").json()["remote_reachable"],
        false,
        "a failing remote is a lost capability"
    );
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("capability=remote") && l.contains("decision=lost")));
    let gets: Vec<Instant> = cloud
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Target && r.at > start)
        .map(|r| r.at)
        .collect();
    let gaps: Vec<u128> = gets.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    // 200 ms doubling, capped at the 1600 ms poll interval (generous margins).
    assert!(gaps.len() >= 5, "{gaps:?}");
    assert!(
        gaps[1] > gaps[0] && gaps[2] > gaps[1],
        "backoff grows: {gaps:?}"
    );
    assert!(
        gaps[4] < 3_000,
        "backoff caps at the poll interval: {gaps:?}"
    );
    let still = d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await;
    assert_eq!(
        still.unwrap().id,
        running.id,
        "apps keep running while the cloud fails"
    );

    // Recovery: the new release is applied.
    let converged = eventually(Duration::from_secs(90), || {
        let apps = last_apps(&cloud)?;
        (apps[APP]["releases"]["rel-2"]["update_status"] == "done").then_some(())
    });
    assert!(converged.is_some(), "converges once the cloud recovers");
    assert_eq!(
        agent.get("/v3/capabilities").json()["remote_reachable"],
        true
    );
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("Target fetch failed")));
    drop(agent);
    empty_engine(&d).await;
}

#[tokio::test]
async fn a_lying_cloud_changes_nothing_and_the_agent_keeps_going() {
    let Some(infra) = infra("engine::remote") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let cloud = FakeCloud::start();
    cloud.add_fleet(1, "p");
    cloud.add_device(UUID, "device-key-1", 1);
    cloud.set_target(
        UUID,
        device_target(infra, app(infra, "rel-1", "sleep infinity")),
    );
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        opts(infra, home.path())
            .arg("--uuid")
            .arg(UUID)
            .arg("--remote-api-endpoint")
            .arg(cloud.url.clone())
            .arg("--remote-api-key")
            .arg("device-key-1")
            .arg("--remote-poll-interval-ms")
            .arg("1000")
            .arg("--remote-request-timeout-ms")
            .arg("1000"),
    );
    let ok = eventually(Duration::from_secs(90), || {
        let apps = last_apps(&cloud)?;
        (apps[APP]["releases"]["rel-1"]["update_status"] == "done").then_some(())
    });
    assert!(ok.is_some(), "installed first");
    let running = d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();

    // A slow cloud (beyond the request timeout) is a logged failure.
    cloud.set_target(
        UUID,
        device_target(infra, app(infra, "rel-2", "sleep 1000000")),
    );
    cloud.set_latency(Duration::from_millis(1500));
    let slow = eventually(Duration::from_secs(30), || {
        agent
            .logs()
            .into_iter()
            .find(|l| l.contains("Target fetch failed") && l.contains("within 1000 ms"))
    });
    cloud.set_latency(Duration::ZERO);
    assert!(slow.is_some(), "a slow cloud is a logged failure");

    // Garbage, a huge body, a reset connection and a refused key: each is a logged decision;
    // nothing running changes.
    let start = Instant::now();
    for fault in [
        Fault::Garbage,
        Fault::Huge(12 << 20),
        Fault::Reset,
        Fault::Status {
            status: 401,
            retry_after: None,
        },
    ] {
        cloud.inject(Route::Target, 1, fault);
    }
    let faults_done = eventually(Duration::from_secs(60), || {
        let n = cloud
            .requests()
            .into_iter()
            .filter(|r| r.route == Route::Target && r.at > start)
            .count();
        (n >= 4).then_some(())
    });
    assert!(
        faults_done.is_some(),
        "the agent kept polling through the faults"
    );
    let still = d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(
        still.id, running.id,
        "nothing running changed because of the faults"
    );
    let refused = agent.wait_log(
        |l| l.contains("Target fetch refused"),
        Duration::from_secs(10),
    );
    assert!(refused.is_some(), "401 is logged");

    // Then the cloud tells the truth again: the agent converges.
    let converged = eventually(Duration::from_secs(90), || {
        let apps = last_apps(&cloud)?;
        (apps[APP]["releases"]["rel-2"]["update_status"] == "done").then_some(())
    });
    assert!(
        converged.is_some(),
        "converges once the cloud answers properly"
    );
    assert_eq!(agent.get("/ping").status, 200);
    drop(agent);
    empty_engine(&d).await;
}
