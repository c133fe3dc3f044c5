//! What the remote may make the device wait is bounded (actors/poll/limits.rs): a `Retry-After`
//! of years on a poll or a registration waits at most the poll interval, and a device config's
//! `SUPERVISOR_POLL_INTERVAL` of years polls at least daily.
use std::time::Duration;

use serde_json::json;

use crate::support::agent::{eventually, field, Agent, AgentOpts};
use crate::support::fake_cloud::{FakeCloud, Fault, Route};

const YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn opts(home: &std::path::Path, cloud: &FakeCloud, uuid: &str) -> AgentOpts {
    AgentOpts::new(home)
        .arg("--uuid")
        .arg(uuid)
        .arg("--remote-api-endpoint")
        .arg(cloud.url.clone())
        .arg("--remote-poll-interval-ms")
        .arg("2000")
        .arg("--remote-poll-min-interval-ms")
        .arg("200")
        .arg("--remote-poll-max-jitter-ms")
        .arg("0")
}

fn years_of_retry_after(cloud: &FakeCloud, route: Route) {
    cloud.inject(
        route,
        1,
        Fault::Status {
            status: 503,
            retry_after: Some(YEARS),
        },
    );
}

#[test]
fn a_retry_after_of_years_waits_at_most_the_poll_interval() {
    let cloud = FakeCloud::start();
    cloud.add_fleet(1, "prov-key-limits");
    cloud.add_device("limits-1", "key-limits-1", 1);
    cloud.set_target("limits-1", json!({"name": "d", "config": {}, "apps": {}}));
    years_of_retry_after(&cloud, Route::Target);
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        opts(home.path(), &cloud, "limits-1")
            .arg("--remote-api-key")
            .arg("key-limits-1"),
    );
    eventually(Duration::from_secs(20), || {
        (cloud.target_gets() >= 2).then_some(())
    })
    .expect("polled again within the poll interval, not years later");
    let capped = agent
        .wait_log(|l| l.contains("Retry-After capped"), Duration::from_secs(5))
        .expect("the cap is logged");
    assert_eq!(
        field(&capped, "decision").as_deref(),
        Some("cap"),
        "{capped}"
    );
    assert_eq!(
        field(&capped, "delay_ms").as_deref(),
        Some("2000"),
        "{capped}"
    );

    // Registration too.
    let home = tempfile::tempdir().unwrap();
    years_of_retry_after(&cloud, Route::Register);
    let agent = Agent::start(
        opts(home.path(), &cloud, "limits-2")
            .arg("--provisioning-fleet")
            .arg("1")
            .arg("--provisioning-device-type")
            .arg("generic-amd64")
            .arg("--provisioning-key")
            .arg("prov-key-limits"),
    );
    eventually(Duration::from_secs(20), || {
        cloud.devices().into_iter().find(|d| d.uuid == "limits-2")
    })
    .expect("registered after at most the poll interval");
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("Retry-After capped") && l.contains("request=registration")));
}

#[test]
fn a_device_config_poll_interval_of_years_is_capped_at_a_day() {
    let cloud = FakeCloud::start();
    cloud.add_fleet(1, "p");
    cloud.add_device("limits-3", "key-limits-3", 1);
    let years_ms = YEARS.as_millis().to_string();
    cloud.set_target(
        "limits-3",
        json!({"name": "d", "config": {"RESIN_SUPERVISOR_POLL_INTERVAL": years_ms}, "apps": {}}),
    );
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        opts(home.path(), &cloud, "limits-3")
            .arg("--remote-api-key")
            .arg("key-limits-3"),
    );
    let line = agent
        .wait_log(
            |l| l.contains("Poll interval capped"),
            Duration::from_secs(20),
        )
        .expect("the cloud's interval is capped");
    assert_eq!(field(&line, "decision").as_deref(), Some("cap"), "{line}");
    assert_eq!(
        field(&line, "interval_ms").as_deref(),
        Some("86400000"),
        "{line}"
    );
    let changed = agent
        .wait_log(
            |l| l.contains("Poll interval changed"),
            Duration::from_secs(5),
        )
        .expect("the capped interval is used");
    assert_eq!(
        field(&changed, "interval_ms").as_deref(),
        Some("86400000"),
        "{changed}"
    );
}
