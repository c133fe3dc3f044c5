//! A container with the `io.balena.features.supervisor-api` label calls the device API from
//! inside, with the key and address helios injected, and sees only its own app; `/v1/healthy`
//! follows the engine; oversized bodies are refused.
use std::time::Duration;

use serde_json::json;

use crate::support::agent::{eventually, http, Agent, AgentOpts};
use crate::support::infra::{docker, empty_engine, exec, infra};
use crate::support::relay::Relay;

#[tokio::test]
async fn a_labelled_container_calls_the_api_with_its_scoped_key() {
    let Some(infra) = infra("engine::supervisor_api") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        AgentOpts::new(home.path())
            .env("DOCKER_HOST", infra.docker_host.clone())
            .arg("--device-api-key")
            .arg("globalkey0123456789"),
    );
    let app = |id: u32, name: &str, labels: serde_json::Value| {
        json!({"id": id, "name": name, "releases": {format!("r{id}"): {"services": {"main": {
            "id": id, "image": infra.image_a, "labels": labels,
            "composition": {"command": "sleep infinity", "network_mode": "host"}}}}}})
        .to_string()
    };
    let label = json!({"io.balena.features.supervisor-api": "1"});
    assert_eq!(
        agent
            .post_json("/v3/device/apps/app-one", &app(1, "one", label))
            .status,
        202
    );
    assert_eq!(
        agent
            .post_json("/v3/device/apps/app-two", &app(2, "two", json!({})))
            .status,
        202
    );
    let done = eventually(Duration::from_secs(60), || {
        let dev = agent.get("/v3/device").json();
        (agent.get("/v3/status").json()["status"] == "done"
            && dev["apps"].as_object().is_some_and(|a| a.len() == 2))
        .then_some(())
    });
    assert!(done.is_some());

    let env = exec(&d, "main_r1", &["env"]).await;
    assert!(env.contains("BALENA_SUPERVISOR_API_KEY="), "{env}");
    assert!(
        env.contains(&format!(
            "BALENA_SUPERVISOR_ADDRESS=http://127.0.0.1:{}",
            agent.addr.port()
        )),
        "{env}"
    );
    let other = exec(&d, "main_r2", &["env"]).await;
    assert!(
        !other.contains("BALENA_SUPERVISOR_API_KEY"),
        "only labelled services get a key"
    );

    // From inside the container, with its own key and address.
    let call = |path: &str| {
        format!("wget -q -O- \"$BALENA_SUPERVISOR_ADDRESS{path}?apikey=$BALENA_SUPERVISOR_API_KEY\" 2>&1; echo \" exit=$?\"")
    };
    let out = exec(
        &d,
        "main_r1",
        &["sh", "-c", &call("/v2/applications/state")],
    )
    .await;
    assert!(out.contains("\"one\""), "its own app: {out}");
    assert!(!out.contains("\"two\""), "not the other app: {out}");
    let out = exec(
        &d,
        "main_r1",
        &["sh", "-c", &call("/v2/applications/2/state")],
    )
    .await;
    assert!(
        out.contains("409") || out.contains("exit=1"),
        "out of scope: {out}"
    );
    // The scoped key is not the global key, and a wrong key is refused.
    let key = env
        .lines()
        .find_map(|l| l.strip_prefix("BALENA_SUPERVISOR_API_KEY="))
        .unwrap()
        .to_string();
    assert_ne!(key, "globalkey0123456789");
    let r = http(
        agent.addr,
        "GET",
        &format!("/v2/applications/state?apikey={key}"),
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.json().get("two").is_none());
    let r = http(
        agent.addr,
        "POST",
        &format!("/v2/applications/2/restart?apikey={key}"),
        Some(("application/json", "{}")),
    );
    assert_eq!(r.status, 401, "an out-of-scope action is refused");
    assert_eq!(
        http(
            agent.addr,
            "GET",
            "/v2/applications/state?apikey=nope",
            None
        )
        .status,
        401
    );
    let no_key =
        crate::support::agent::http_with(agent.addr, "GET", "/v2/applications/state", &[], None);
    assert_eq!(no_key.status, 401);

    // Regenerated from inside the container: the old key stops working at once, and the next
    // apply recreates the container with the new one (the env difference).
    let before = d
        .inspect_container(
            "main_r1",
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap()
        .id;
    let out = exec(
        &d,
        "main_r1",
        &["sh", "-c", "wget -q -O- --post-data='' \"$BALENA_SUPERVISOR_ADDRESS/v1/regenerate-api-key?apikey=$BALENA_SUPERVISOR_API_KEY\""],
    )
    .await;
    let new_key = out.trim().to_string();
    assert_eq!(new_key.len(), 32, "the new key is the answer: {out}");
    let r = http(
        agent.addr,
        "GET",
        &format!("/v2/applications/state?apikey={key}"),
        None,
    );
    assert_eq!(r.status, 401, "the old key stopped working");
    let r = http(
        agent.addr,
        "POST",
        "/v1/update?apikey=globalkey0123456789",
        Some(("application/json", "{}")),
    );
    assert!(r.status == 202 || r.status == 204, "{}", r.status);
    let want = format!("BALENA_SUPERVISOR_API_KEY={new_key}");
    let mut after = None;
    for _ in 0..120 {
        let c = d
            .inspect_container(
                "main_r1",
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await;
        if let Ok(c) = c {
            let env = c.config.and_then(|cf| cf.env).unwrap_or_default();
            if env.contains(&want) {
                after = Some(c.id);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = after.expect("recreated with the new key");
    assert_ne!(before, after, "a new container");
    agent.wait_status("done", Duration::from_secs(60));
    assert!(
        !agent.get("/v3/device").body.contains("<regenerated>"),
        "on target again"
    );

    // Oversized bodies are refused with 413; the API keeps answering.
    let big = format!("{{\"id\": 1, \"name\": \"{}\"}}", "x".repeat(2 << 20));
    let r = agent.post_json("/v3/device/apps/app-big", &big);
    assert_eq!(r.status, 413);
    assert_eq!(agent.get("/ping").status, 200);
    empty_engine(&d).await;
}

#[tokio::test]
async fn healthy_follows_the_engine() {
    let Some(infra) = infra("engine::supervisor_api") else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let sock = home.path().join("engine.sock");
    let upstream = infra.docker_host.trim_start_matches("unix://").to_string();
    let relay = Relay::start(&sock, upstream.as_ref());
    let agent = Agent::start(
        AgentOpts::new(home.path()).env("DOCKER_HOST", format!("unix://{}", sock.display())),
    );
    let healthy = |want: u16| {
        eventually(Duration::from_secs(60), || {
            (agent.get("/v1/healthy").status == want).then_some(())
        })
    };
    assert!(healthy(200).is_some(), "healthy with the engine");
    relay.cut();
    assert!(healthy(500).is_some(), "unhealthy once the engine is gone");
    let _relay = Relay::start(&sock, upstream.as_ref());
    assert!(healthy(200).is_some(), "healthy again when it is back");
}
