//! Capability detection (issue: host and self-configuration): the set served at
//! `GET /v3/capabilities` with and without a bus, host services coming and going, the bus
//! itself lost and found again, the host OS kind, a runtime dir that cannot be written.
use std::time::Duration;

use serde_json::Value;

use crate::support::agent::{eventually, Agent, AgentOpts};
use crate::support::fake_host::FakeHostname;
use crate::support::infra::PrivateBus;

fn caps(agent: &Agent) -> Value {
    agent.get("/v3/capabilities").json()
}

fn wait_caps(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(20), || {
        let c = caps(agent);
        pred(&c).then_some(c)
    })
    .unwrap_or_else(|| panic!("capabilities never showed {what}: {}", caps(agent)))
}

#[test]
fn without_a_bus_or_engine_the_agent_runs_and_says_what_is_missing() {
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentOpts::new(home.path()));
    let c = wait_caps(&agent, "the runtime dir", |c| !c["runtime_dir"].is_null());
    assert!(c["bus"].is_null(), "{c}");
    assert!(c["engine"].is_null(), "{c}");
    assert_eq!(c["remote"], "unmanaged");
    assert!(c["remote_reachable"].is_null());
    assert_eq!(c["legacy_supervisor"], "not_configured");
    assert_eq!(c["runtime_dir"]["writable"], true);
    assert_eq!(
        c["os"]["kind"], "generic Linux",
        "this test machine is not balenaOS"
    );
    for (cap, decision) in [("dbus", "missing"), ("engine", "wait")] {
        assert!(
            agent
                .wait_log(
                    |l| l.contains(&format!("capability={cap} "))
                        && l.contains(&format!("decision={decision}")),
                    Duration::from_secs(10)
                )
                .is_some(),
            "a line saying {cap} is missing"
        );
    }
    assert_eq!(agent.get("/ping").status, 200);
}

#[test]
fn a_configured_balena_os_version_and_an_unwritable_runtime_dir_are_detected() {
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        AgentOpts::new(home.path())
            .env("HELIOS_HOST_OS_VERSION", "balenaOS 6.0.39@rev-1")
            // Nothing can be created under /proc.
            .env("XDG_RUNTIME_DIR", "/proc/helios-cannot-write"),
    );
    let c = wait_caps(&agent, "the runtime dir", |c| !c["runtime_dir"].is_null());
    assert_eq!(c["os"]["kind"], "balenaOS");
    assert_eq!(c["os"]["name"], "balenaOS 6.0.39@rev-1");
    assert_eq!(c["runtime_dir"]["writable"], false, "{c}");
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("capability=runtime_dir") && l.contains("decision=missing")));
}

#[test]
fn host_services_and_the_bus_itself_come_and_go_under_a_running_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut bus = PrivateBus::start(dir.path());
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        AgentOpts::new(home.path()).env("DBUS_SYSTEM_BUS_ADDRESS", bus.address.clone()),
    );
    let c = wait_caps(&agent, "the bus", |c| !c["bus"].is_null());
    assert_eq!(c["bus"]["hostname1"], false);

    // A service appears: found without polling (NameOwnerChanged).
    let hostnamed = FakeHostname::start(&bus.address, "box");
    wait_caps(&agent, "hostname1", |c| c["bus"]["hostname1"] == true);
    drop(hostnamed);
    wait_caps(&agent, "hostname1 gone", |c| c["bus"]["hostname1"] == false);

    // The bus dies: lost, with a log line; it comes back: found again without a restart.
    bus.stop();
    wait_caps(&agent, "the bus lost", |c| c["bus"].is_null());
    assert!(agent
        .wait_log(
            |l| l.contains("capability=dbus")
                && (l.contains("decision=lost") || l.contains("decision=missing")),
            Duration::from_secs(5)
        )
        .is_some());
    bus.restart();
    let _hostnamed = FakeHostname::start(&bus.address, "box");
    wait_caps(&agent, "the bus back", |c| c["bus"]["hostname1"] == true);
    assert_eq!(agent.get("/ping").status, 200);
}
