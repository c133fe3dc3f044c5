//! Faults under a real engine: a bad release is given up after `seek.max_attempts` failures
//! (the previous release keeps running, the report and `/v3/status` say `aborted`), and tried
//! again only when the target changes or a forced `/v1/update` asks.
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use serde_json::{json, Value};

use crate::support::agent::{eventually, field, Agent, AgentOpts};
use crate::support::fake_cloud::FakeCloud;
use crate::support::infra::{docker, empty_engine, infra, Infra};

const UUID: &str = "faults-device-1";
const APP: &str = "faults-app-1";
const KEY: &str = "faultsapikey";

fn device_target(image: &str, release: &str) -> Value {
    json!({"name": "faults-device", "config": {}, "apps": {APP: {"id": 91, "name": "faults-fleet",
        "class": "fleet", "releases": {release: {"id": 1, "services": {"main": {"id": 9,
        "image_id": 10, "image": image, "environment": {}, "labels": {},
        "composition": {"command": "sleep infinity", "stop_grace_period": "1s"}}}}}}}})
}

fn release_status(cloud: &FakeCloud, release: &str) -> Option<String> {
    cloud.reports().iter().rev().find_map(|r| {
        r[UUID].get("apps")?[APP]["releases"][release]["update_status"]
            .as_str()
            .map(str::to_string)
    })
}

fn update(agent: &Agent, body: &str) {
    let r = agent.post_json(&format!("/v1/update?apikey={KEY}"), body);
    assert!(matches!(r.status, 202 | 204), "{r:?}");
}

fn count(agent: &Agent, needle: &str) -> usize {
    agent.logs().iter().filter(|l| l.contains(needle)).count()
}

/// Waits for the next `decision=give_up` line after `mark` and returns its `attempts`.
fn wait_give_up(agent: &Agent, mark: usize) -> String {
    let line = agent
        .wait_log_after(
            mark,
            |l| l.contains("decision=give_up"),
            Duration::from_secs(60),
        )
        .expect("the bad release is given up");
    assert!(line.contains("error="), "the reason is logged: {line}");
    field(&line, "attempts").unwrap()
}

async fn running(d: &bollard::Docker, name: &str) -> bool {
    d.inspect_container(name, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state?.running)
        == Some(true)
}

fn bad_image(infra: &Infra) -> String {
    format!("{}/helios-test/does-not-exist:1", infra.registry)
}

#[tokio::test]
async fn a_bad_release_is_given_up_and_retried_only_on_change_or_force() {
    let Some(infra) = infra("engine::faults") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let cloud = FakeCloud::start();
    cloud.add_device(UUID, "device-key", 42);
    cloud.set_target(UUID, device_target(&infra.image_a, "rel-1"));
    let home = tempfile::tempdir().unwrap();
    let mut opts = AgentOpts::new(home.path())
        .env("DOCKER_HOST", infra.docker_host.clone())
        .env("HELIOS_REMOTE_REPORT_MIN_INTERVAL_MS", "200")
        .env("HELIOS_REMOTE_POLL_MIN_INTERVAL_MS", "200")
        .env("HELIOS_REMOTE_POLL_MAX_JITTER_MS", "0")
        .env("HELIOS_LOCAL_RETRY_INTERVAL_MS", "300");
    for a in [
        "--uuid",
        UUID,
        "--remote-api-endpoint",
        &cloud.url,
        "--remote-api-key",
        "device-key",
        "--remote-poll-interval-ms",
        "600000",
        "--device-api-key",
        KEY,
        "--max-apply-attempts",
        "3",
    ] {
        opts = opts.arg(a);
    }
    let agent = Agent::start(opts);
    let done = eventually(Duration::from_secs(90), || {
        (release_status(&cloud, "rel-1").as_deref() == Some("done")).then_some(())
    });
    assert!(done.is_some(), "rel-1 is installed and reported done");

    // A release whose image does not exist: every attempt fails at the pull.
    cloud.set_target(UUID, device_target(&bad_image(infra), "rel-2"));
    let mark = agent.logs().len();
    update(&agent, "");
    assert_eq!(wait_give_up(&agent, mark), "3");
    let applies = count(&agent, "decision=apply ");
    assert_eq!(
        agent.logs()[mark..]
            .iter()
            .filter(|l| l.contains("decision=apply "))
            .count(),
        3,
        "exactly max_attempts attempts"
    );
    agent.wait_status("aborted", Duration::from_secs(5));
    assert!(running(&d, "main_rel-1").await, "rel-1 keeps running");
    let reported = eventually(Duration::from_secs(30), || {
        (release_status(&cloud, "rel-2").as_deref() == Some("aborted")).then_some(())
    });
    assert!(reported.is_some(), "the report says rel-2 aborted");
    let v1 = agent.get(&format!("/v1/device?apikey={KEY}")).json();
    assert_eq!(v1["update_failed"], true, "{v1}");

    // Asked again without force, with the same target: not retried.
    let mark = agent.logs().len();
    update(&agent, r#"{"force": false}"#);
    agent
        .wait_log_after(
            mark,
            |l| l.contains("decision=skip") && l.contains("given up"),
            Duration::from_secs(20),
        )
        .expect("an unforced update of the same target is skipped");
    // Several retry intervals later there is still no new attempt.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&agent, "decision=apply "), applies, "no new attempt");
    assert_eq!(agent.get("/v3/status").json()["status"], "aborted");

    // A forced update tries the same target again, max_attempts more times.
    let mark = agent.logs().len();
    update(&agent, r#"{"force": true}"#);
    assert_eq!(wait_give_up(&agent, mark), "3");
    assert!(running(&d, "main_rel-1").await, "rel-1 still runs");

    // A changed target is applied.
    cloud.set_target(UUID, device_target(&infra.image_b, "rel-3"));
    update(&agent, "");
    let done = eventually(Duration::from_secs(90), || {
        (release_status(&cloud, "rel-3").as_deref() == Some("done")).then_some(())
    });
    assert!(
        done.is_some(),
        "the next release is applied and reported done"
    );
    assert!(running(&d, "main_rel-3").await);
    assert_eq!(agent.get("/v3/status").json()["status"], "done");
    drop(agent);
    empty_engine(&d).await;
}
