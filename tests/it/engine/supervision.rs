//! Supervision under a real fault: the agent's engine socket goes away under it. SeekActor fails,
//! is restarted with backoff, waits for the engine, and recovers once the socket is back, while
//! the API keeps answering.
use std::time::Duration;

use crate::support::agent::{Agent, AgentOpts};
use crate::support::infra::infra;
use crate::support::relay::Relay;

#[test]
fn seek_restarts_on_engine_loss_and_recovers() {
    let Some(infra) = infra("engine") else { return };
    let home = tempfile::tempdir().unwrap();
    let upstream = infra.docker_host.trim_start_matches("unix://").to_string();
    let sock = home.path().join("engine.sock");
    let relay = Relay::start(&sock, upstream.as_ref());
    let cfg = home.path().join("helios.toml");
    std::fs::write(
        &cfg,
        "[supervision]\nbackoff_initial_ms = 200\nbackoff_max_ms = 1000\n",
    )
    .unwrap();

    let agent = Agent::start(
        AgentOpts::new(home.path())
            .arg("--config")
            .arg(cfg.to_str().unwrap())
            .env("DOCKER_HOST", format!("unix://{}", sock.display())),
    );
    let found = |l: &str| l.contains("capability=engine") && l.contains("decision=found");
    agent
        .wait_log(found, Duration::from_secs(20))
        .expect("engine found through the relay");
    assert!(agent.get("/v3/capabilities").json()["engine"]["api_version"].is_string());

    // The fault: the socket disappears and open connections are reset.
    let mark = agent.logs().len();
    relay.cut();
    agent
        .wait_log_after(
            mark,
            |l| l.contains("actor=seek") && l.contains("Actor failed"),
            Duration::from_secs(20),
        )
        .expect("seek fails when its event stream breaks");
    agent
        .wait_log_after(
            mark,
            |l| l.contains("actor=seek") && l.contains("Actor restarting after backoff"),
            Duration::from_secs(10),
        )
        .expect("seek is restarted by its supervisor");
    agent
        .wait_log_after(
            mark,
            |l| l.contains("capability=engine") && l.contains("decision=wait"),
            Duration::from_secs(10),
        )
        .expect("after the restart it waits for the engine");
    assert_eq!(agent.get("/ping").status, 200, "the API keeps answering");
    assert!(agent.get("/v3/capabilities").json()["engine"].is_null());

    // The fault goes away: seek reconnects on its own.
    let mark = agent.logs().len();
    let _relay = Relay::start(&sock, upstream.as_ref());
    agent
        .wait_log_after(mark, found, Duration::from_secs(60))
        .expect("engine found again once the socket is back");
    assert!(agent.get("/v3/capabilities").json()["engine"]["version"].is_string());
    assert_eq!(agent.get("/v3/status").status, 200);
}

/// Self-configuring: started before the engine exists, helios keeps its API up, takes a
/// target, and converges as soon as the engine appears, without a restart.
#[test]
fn converges_once_an_engine_appears() {
    let Some(infra) = infra("engine") else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = rt.block_on(crate::support::infra::docker(infra));
    rt.block_on(crate::support::infra::empty_engine(&d));
    let home = tempfile::tempdir().unwrap();
    let upstream = infra.docker_host.trim_start_matches("unix://").to_string();
    let sock = home.path().join("engine.sock");
    let agent = Agent::start(
        AgentOpts::new(home.path()).env("DOCKER_HOST", format!("unix://{}", sock.display())),
    );
    assert!(agent.get("/v3/capabilities").json()["engine"].is_null());
    let app = serde_json::json!({"id": 1, "name": "late", "releases": {"r1": {"services": {"main": {
        "id": 1, "image": infra.image_a, "composition": {"command": "sleep infinity"}}}}}});
    assert_eq!(
        agent
            .post_json("/v3/device/apps/late-app", &app.to_string())
            .status,
        202
    );
    assert_eq!(agent.get("/v3/status").json()["status"], "applying changes");

    let _relay = Relay::start(&sock, upstream.as_ref());
    let done = crate::support::agent::eventually(Duration::from_secs(90), || {
        let dev = agent.get("/v3/device").json();
        (agent.get("/v3/status").json()["status"] == "done"
            && dev["apps"]["late-app"]["releases"]["r1"]["services"]["main"]["oci"]["status"]
                == "running")
            .then_some(())
    });
    assert!(done.is_some(), "converged once the engine appeared");
    assert!(agent.get("/v3/capabilities").json()["engine"]["api_version"].is_string());
    rt.block_on(crate::support::infra::empty_engine(&d));
}
