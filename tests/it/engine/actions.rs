//! Device API actions against the real engine: restart, stop and start a service, restart and
//! purge an app, with user locks (423 unless forced) and the error codes of device-api.md.
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use bollard::Docker;
use serde_json::json;

use crate::support::agent::{http, Agent, AgentOpts};
use crate::support::infra::{docker, empty_engine, exec, infra, Infra};

const APP: &str = "actions-app";

fn release(infra: &Infra) -> String {
    let svc = |id: u32| {
        json!({"id": id, "image": infra.image_a,
               "composition": {"command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                               "volumes": ["data:/data"], "stop_grace_period": "1s"}})
    };
    json!({"id": 5, "name": "actions", "releases": {"rel-1": {
        "services": {"web": svc(51), "db": svc(52)}, "volumes": {"data": {}}}}})
    .to_string()
}

async fn id_of(d: &Docker, name: &str) -> Option<String> {
    d.inspect_container(name, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.id)
}

async fn running(d: &Docker, name: &str) -> Option<bool> {
    d.inspect_container(name, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.running)
}

fn done(agent: &Agent) {
    agent.wait_status("done", Duration::from_secs(60));
}

fn post(agent: &Agent, path: &str, body: serde_json::Value) -> (u16, String) {
    let r = agent.post_json(path, &body.to_string());
    (r.status, r.body)
}

async fn wait_new(d: &Docker, name: &str, old: &Option<String>) -> bool {
    for _ in 0..120 {
        if let Some(id) = id_of(d, name).await {
            if Some(&id) != old.as_ref() && running(d, name).await == Some(true) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test]
async fn service_and_app_actions_change_containers() {
    let Some(infra) = infra("engine::actions") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let agent =
        Agent::start(AgentOpts::new(home.path()).env("DOCKER_HOST", infra.docker_host.clone()));
    assert_eq!(
        agent
            .post_json(&format!("/v3/device/apps/{APP}"), &release(infra))
            .status,
        202
    );
    done(&agent);
    let web = id_of(&d, "web_rel-1").await;
    let db = id_of(&d, "db_rel-1").await;

    // restart-service: a new web container, db untouched.
    let (s, b) = post(
        &agent,
        "/v2/applications/5/restart-service",
        json!({"serviceName": "web"}),
    );
    assert_eq!((s, b.as_str()), (200, "OK"));
    assert!(wait_new(&d, "web_rel-1", &web).await, "web re-created");
    assert_eq!(id_of(&d, "db_rel-1").await, db, "db untouched");
    done(&agent);

    // stop-service keeps the container, stopped, also after the agent re-checks the target.
    let (s, _) = post(
        &agent,
        "/v2/applications/5/stop-service",
        json!({"serviceName": "db"}),
    );
    assert_eq!(s, 200);
    done(&agent);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        running(&d, "db_rel-1").await,
        Some(false),
        "stopped but present"
    );
    assert_eq!(id_of(&d, "db_rel-1").await, db);
    let (s, _) = post(
        &agent,
        "/v2/applications/5/start-service",
        json!({"serviceName": "db"}),
    );
    assert_eq!(s, 200);
    assert_eq!(running(&d, "db_rel-1").await, Some(true));

    // A user lock: 423 for actions that stop things, unless forced.
    exec(&d, "db_rel-1", &["touch", "/tmp/balena/updates.lock"]).await;
    let (s, b) = post(
        &agent,
        "/v2/applications/5/restart-service",
        json!({"serviceName": "db"}),
    );
    assert_eq!(s, 423, "{b}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&b).unwrap()["status"],
        "failed"
    );
    assert_eq!(
        id_of(&d, "db_rel-1").await,
        db,
        "nothing stopped while locked"
    );
    let (s, b) = post(
        &agent,
        "/v2/applications/5/restart-service",
        json!({"serviceName": "db", "force": true}),
    );
    assert_eq!(s, 200, "{b}");
    assert!(
        wait_new(&d, "db_rel-1", &db).await,
        "forced restart re-creates db"
    );
    done(&agent);

    // /v1/restart: every container new.
    let web = id_of(&d, "web_rel-1").await;
    let db = id_of(&d, "db_rel-1").await;
    let (s, b) = post(&agent, "/v1/restart", json!({"appId": 5}));
    assert_eq!((s, b.as_str()), (200, "OK"));
    assert!(wait_new(&d, "web_rel-1", &web).await && wait_new(&d, "db_rel-1", &db).await);
    done(&agent);

    // /v1/purge: the volume comes back empty.
    exec(&d, "web_rel-1", &["sh", "-c", "echo kept > /data/file"]).await;
    assert_eq!(
        exec(&d, "db_rel-1", &["cat", "/data/file"]).await.trim(),
        "kept"
    );
    let (s, b) = post(&agent, "/v1/purge", json!({"appId": 5}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&b).unwrap(),
        json!({"Data": "OK", "Error": ""})
    );
    done(&agent);
    let mut emptied = false;
    for _ in 0..60 {
        if running(&d, "web_rel-1").await == Some(true) {
            let out = exec(&d, "web_rel-1", &["ls", "/data"]).await;
            if !out.contains("file") {
                emptied = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(emptied, "purge empties the volume");

    assert_eq!(
        post(&agent, "/v1/apps/5/stop", json!({})).0,
        400,
        "multi-container app"
    );

    // A volume the target no longer uses is kept, until /v2/cleanup-volumes removes it.
    let no_volume = json!({"id": 5, "name": "actions", "releases": {"rel-2": {"services": {"web": {
        "id": 51, "image": infra.image_a, "composition": {"command": "sleep infinity", "stop_grace_period": "1s"}}}}}});
    assert_eq!(
        agent
            .post_json(&format!("/v3/device/apps/{APP}"), &no_volume.to_string())
            .status,
        202
    );
    done(&agent);
    let vol = format!("data_{APP}");
    assert!(
        d.inspect_volume(&vol).await.is_ok(),
        "volumes are kept while the app stays"
    );
    let r = agent.get("/v2/cleanup-volumes");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"status": "success"}));
    assert!(
        d.inspect_volume(&vol).await.is_err(),
        "the unused volume is removed"
    );

    // /v1/apps/:appId/stop|start on the now single-container app.
    let (s, b) = post(&agent, "/v1/apps/5/stop", json!({}));
    assert_eq!(s, 200, "{b}");
    let web = id_of(&d, "web_rel-2").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&b).unwrap()["containerId"],
        json!(web)
    );
    assert_eq!(running(&d, "web_rel-2").await, Some(false));
    assert_eq!(post(&agent, "/v1/apps/5/start", json!({})).0, 200);
    assert_eq!(running(&d, "web_rel-2").await, Some(true));

    // Error codes.
    assert_eq!(post(&agent, "/v1/restart", json!({})).0, 400);
    assert_eq!(post(&agent, "/v1/restart", json!({"appId": 99})).0, 503);
    assert_eq!(
        post(
            &agent,
            "/v2/applications/x/restart-service",
            json!({"serviceName": "web"})
        )
        .0,
        400
    );
    assert_eq!(
        post(&agent, "/v2/applications/5/restart-service", json!({})).0,
        400
    );
    assert_eq!(
        post(
            &agent,
            "/v2/applications/5/stop-service",
            json!({"serviceName": "ghost"})
        )
        .0,
        404
    );
    let r = http(
        agent.addr,
        "POST",
        "/v1/purge",
        Some(("application/json", "{not json")),
    );
    assert_eq!(r.status, 400);
    empty_engine(&d).await;
}
