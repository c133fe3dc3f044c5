//! Update strategies and update locks against the real engine. The order of engine operations is
//! read from the engine's own event stream, not from helios's logs.
use std::collections::HashMap;
use std::time::Duration;

use bollard::models::EventMessage;
use bollard::query_parameters::{EventsOptionsBuilder, InspectContainerOptions};
use bollard::Docker;
use futures::StreamExt;
use serde_json::json;

use crate::support::agent::{eventually, Agent, AgentOpts};
use crate::support::infra::{docker, empty_engine, exec, infra, Infra};

const APP: &str = "strategy-app";

fn agent(infra: &Infra, home: &std::path::Path) -> Agent {
    Agent::start(
        AgentOpts::new(home)
            .env("DOCKER_HOST", infra.docker_host.clone())
            .arg("--local-retry-interval-ms")
            .arg("500"),
    )
}

/// One service `main` writing its release into the shared volume.
fn target(image: &str, release: &str, strategy: &str) -> String {
    let cmd = format!(
        "echo {release} >> /data/log; [ -d /tmp/balena ] && touch /tmp/balena/handover-complete; \
         trap 'exit 0' TERM; while true; do sleep 1; done"
    );
    json!({"id": 3, "name": "strategies", "releases": {release: {
        "services": {"main": {"id": 31, "image": image,
            "labels": {"io.balena.update.strategy": strategy,
                       "io.balena.update.handover-timeout": "30000"},
            "composition": {"command": ["sh", "-c", cmd], "volumes": ["data:/data"],
                            "stop_grace_period": "2s"}}},
        "volumes": {"data": {}}}}})
    .to_string()
}

fn done(agent: &Agent) {
    agent.wait_status("done", Duration::from_secs(120));
}

/// Engine events between two unix times, as "type action name" strings.
async fn events(d: &Docker, since_nanos: i64, until: i64) -> Vec<String> {
    let since = since_nanos / 1_000_000_000;
    let filters: HashMap<String, Vec<String>> = HashMap::new();
    let opts = EventsOptionsBuilder::default()
        .since(&since.to_string())
        .until(&until.to_string())
        .filters(&filters)
        .build();
    let evs: Vec<EventMessage> = d
        .events(Some(opts))
        .filter_map(|e| async move { e.ok() })
        .collect()
        .await;
    // Filter here too: the engine's own `since` is whole seconds.
    evs.into_iter()
        .filter(|e| e.time_nano.unwrap_or(0) >= since_nanos)
        .map(|e| {
            let attrs = e.actor.and_then(|a| a.attributes).unwrap_or_default();
            let name = attrs.get("name").cloned().unwrap_or_default();
            format!(
                "{} {} {}",
                e.typ.map(|t| t.to_string()).unwrap_or_default(),
                e.action.unwrap_or_default(),
                name
            )
        })
        .collect()
}

fn pos(evs: &[String], needle: &str) -> usize {
    evs.iter()
        .position(|e| e.contains(needle))
        .unwrap_or_else(|| panic!("no event {needle:?} in {evs:#?}"))
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Installs rel-1 with image A, updates to rel-2 with image B under `strategy`; returns the
/// engine events of the update.
async fn update(strategy: &str) -> Vec<String> {
    let infra = infra("engine::strategies").expect("infra");
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let agent = agent(infra, home.path());
    let path = format!("/v3/device/apps/{APP}");
    assert_eq!(
        agent
            .post_json(&path, &target(&infra.image_a, "rel-1", strategy))
            .status,
        202
    );
    // `done` alone can be the status from before the POST was picked up: wait for rel-1 too.
    let installed = eventually(Duration::from_secs(120), || {
        let dev = agent.get("/v3/device").json();
        let running =
            dev["apps"][APP]["releases"]["rel-1"]["services"]["main"]["oci"]["status"] == "running";
        (running && agent.get("/v3/status").json()["status"] == "done").then_some(())
    });
    assert!(
        installed.is_some(),
        "rel-1 installed: {}",
        agent.get("/v3/device").body
    );
    let since = now_nanos();
    assert_eq!(
        agent
            .post_json(&path, &target(&infra.image_b, "rel-2", strategy))
            .status,
        202
    );
    // The new container runs and the old one is gone.
    let ok = eventually(Duration::from_secs(120), || {
        let dev = agent.get("/v3/device").json();
        let rels = dev["apps"][APP]["releases"].as_object()?.clone();
        (agent.get("/v3/status").json()["status"] == "done"
            && rels.keys().collect::<Vec<_>>() == ["rel-2"])
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "update under {strategy} did not finish: {}",
        agent.get("/v3/device").body
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let evs = events(&d, since, now_nanos() / 1_000_000_000 + 1).await;
    // Volume data survives every strategy.
    let log = exec(&d, "main_rel-2", &["cat", "/data/log"]).await;
    assert_eq!(
        log.split_whitespace().collect::<Vec<_>>(),
        ["rel-1", "rel-2"],
        "{log}"
    );
    empty_engine(&d).await;
    evs
}

#[tokio::test]
async fn download_then_kill_pulls_before_killing() {
    if infra("engine::strategies").is_none() {
        return;
    }
    let e = update("download-then-kill").await;
    assert!(
        pos(&e, "image pull") < pos(&e, "container kill main_rel-1"),
        "{e:#?}"
    );
    assert!(pos(&e, "container destroy main_rel-1") < pos(&e, "container create main_rel-2"));
    assert!(pos(&e, "container create main_rel-2") < pos(&e, "container start main_rel-2"));
}

#[tokio::test]
async fn kill_then_download_kills_before_pulling() {
    if infra("engine::strategies").is_none() {
        return;
    }
    let e = update("kill-then-download").await;
    assert!(
        pos(&e, "container kill main_rel-1") < pos(&e, "image pull"),
        "{e:#?}"
    );
    assert!(pos(&e, "image pull") < pos(&e, "container create main_rel-2"));
}

#[tokio::test]
async fn delete_then_download_deletes_the_old_image_before_pulling() {
    if infra("engine::strategies").is_none() {
        return;
    }
    let e = update("delete-then-download").await;
    assert!(
        pos(&e, "container destroy main_rel-1") < pos(&e, "image delete"),
        "{e:#?}"
    );
    assert!(pos(&e, "image delete") < pos(&e, "image pull"));
    assert!(pos(&e, "image pull") < pos(&e, "container create main_rel-2"));
}

#[tokio::test]
async fn hand_over_starts_the_new_before_killing_the_old() {
    if infra("engine::strategies").is_none() {
        return;
    }
    let e = update("hand-over").await;
    assert!(
        pos(&e, "image pull") < pos(&e, "container create main_rel-2"),
        "{e:#?}"
    );
    assert!(pos(&e, "container start main_rel-2") < pos(&e, "container kill main_rel-1"));
}

#[tokio::test]
async fn a_user_lock_holds_the_update_until_forced() {
    let Some(infra) = infra("engine::strategies") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let agent = agent(infra, home.path());
    let path = format!("/v3/device/apps/{APP}");
    assert_eq!(
        agent
            .post_json(
                &path,
                &target(&infra.image_a, "rel-1", "download-then-kill")
            )
            .status,
        202
    );
    done(&agent);
    // The service takes the lock from inside its container, as users do.
    exec(&d, "main_rel-1", &["touch", "/tmp/balena/updates.lock"]).await;
    let old = d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();

    assert_eq!(
        agent
            .post_json(
                &path,
                &target(&infra.image_b, "rel-2", "download-then-kill")
            )
            .status,
        202
    );
    let locked = eventually(Duration::from_secs(60), || {
        let app = agent.get(&path).json();
        (app["locked"] == true).then_some(app)
    });
    let app = locked.expect("the app shows locked: true");
    assert!(
        app["lockfiles"].to_string().contains("updates.lock"),
        "{app}"
    );
    agent
        .wait_log(
            |l| l.contains("updates are locked"),
            Duration::from_secs(30),
        )
        .expect("the apply fails on the lock and says so");
    // Retries keep failing; the locked service is never stopped.
    std::thread::sleep(Duration::from_secs(3));
    let still = d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(still.id, old.id);
    assert_eq!(
        still.state.unwrap().running,
        Some(true),
        "the locked service keeps running"
    );
    assert_eq!(agent.get("/v3/status").json()["status"], "applying changes");
    assert!(d
        .inspect_container("main_rel-2", None::<InspectContainerOptions>)
        .await
        .is_err());

    // force=true takes the lock over.
    assert_eq!(
        agent
            .post_json(
                &format!("{path}?force=true"),
                &target(&infra.image_b, "rel-2", "download-then-kill")
            )
            .status,
        202
    );
    done(&agent);
    assert!(d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await
        .is_err());
    let new = d
        .inspect_container("main_rel-2", None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(new.state.unwrap().running, Some(true));
    assert_eq!(agent.get(&path).json()["locked"], false);
    empty_engine(&d).await;
}

#[tokio::test]
async fn a_newer_target_with_cancel_interrupts_a_running_apply() {
    let Some(infra) = infra("engine::strategies") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let agent = agent(infra, home.path());
    let path = format!("/v3/device/apps/{APP}");
    assert_eq!(
        agent
            .post_json(&path, &target(&infra.image_a, "rel-1", "hand-over"))
            .status,
        202
    );
    done(&agent);
    // rel-2 never signals hand-over completion (the timeout is long): the apply waits...
    let waiting = json!({"id": 3, "name": "strategies", "releases": {"rel-2": {
        "services": {"main": {"id": 31, "image": infra.image_b,
            "labels": {"io.balena.update.strategy": "hand-over",
                       "io.balena.update.handover-timeout": "600000"},
            "composition": {"command": "sleep infinity", "volumes": ["data:/data"],
                            "stop_grace_period": "1s"}}},
        "volumes": {"data": {}}}}});
    assert_eq!(agent.post_json(&path, &waiting.to_string()).status, 202);
    agent
        .wait_log(
            |l| l.contains("step=\"wait hand-over\"") && l.contains("Step started"),
            Duration::from_secs(60),
        )
        .expect("the apply waits for the hand-over");
    assert_eq!(agent.get("/v3/status").json()["status"], "applying changes");
    // ...until a newer target with cancel=true interrupts it.
    assert_eq!(
        agent
            .post_json(
                &format!("{path}?cancel=true"),
                &target(&infra.image_a, "rel-3", "download-then-kill")
            )
            .status,
        202
    );
    agent
        .wait_log(
            |l| l.contains("decision=interrupt"),
            Duration::from_secs(10),
        )
        .expect("the running apply is interrupted");
    let metrics = agent.get("/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "helios_applies_total{result=\"interrupted\"} 1"),
        "the interrupted apply is counted:\n{metrics}"
    );
    done(&agent);
    let dev = agent.get("/v3/device").json();
    let rels: Vec<&String> = dev["apps"][APP]["releases"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(rels, ["rel-3"], "converged on the newest target");
    empty_engine(&d).await;
}
