//! The read-only and simple supervisor `/v1` and `/v2` endpoints (spec/device-api.md §4)
//! against an agent running a single-service app on the real engine: success codes and body
//! shapes, and the documented errors (bad app id, unknown app, malformed tags). The agent is
//! unmanaged and has no device API key, so no request needs one.
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use serde_json::{json, Value};

use crate::support::agent::{http, Agent, AgentOpts, Response};
use crate::support::infra::{docker, empty_engine, infra, Infra};

const APP: &str = "dapi-app-uuid";
const APP_ID: u32 = 7;
const SERVICE_ID: u32 = 71;

fn release(infra: &Infra) -> Value {
    json!({"id": APP_ID, "name": "dapi", "releases": {"rel-1": {"services": {
        "main": {"id": SERVICE_ID, "image": infra.image_a,
            "environment": {"FOO": "bar", "BALENA_API_KEY": "must-not-show"},
            "composition": {"command": "sleep infinity"}}
    }}}})
}

fn failed(r: &Response, status: u16, message: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"status": "failed", "message": message}),
        "{}",
        r.body
    );
}

fn text(r: &Response, status: u16, body: &str) {
    assert_eq!((r.status, r.body.as_str()), (status, body));
}

fn patch_tags(agent: &Agent, body: &str) -> Response {
    http(
        agent.addr,
        "PATCH",
        "/v2/device/tags",
        Some(("application/json", body)),
    )
}

#[tokio::test]
async fn read_only_endpoints_describe_a_single_service_app() {
    let Some(infra) = infra("engine::device_api") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path())
        .env("DOCKER_HOST", infra.docker_host.clone())
        .arg("--uuid")
        .arg("dapi-device-uuid")
        .arg("--local-retry-interval-ms")
        .arg("1000");
    let store_dir = opts.state_dir();
    let mut agent = Agent::start(opts);

    let r = agent.post_json(
        &format!("/v3/device/apps/{APP}"),
        &release(infra).to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    agent.wait_status("done", Duration::from_secs(120));
    let container = d
        .inspect_container("main_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();
    let cid = container.id.clone().unwrap();
    let image_id = container.image.clone().unwrap();

    // GET /v1/healthy: engine found, apply done.
    text(&agent.get("/v1/healthy"), 200, "OK");

    // GET /v1/device
    let r = agent.get("/v1/device");
    assert_eq!(r.status, 200, "{}", r.body);
    let dev = r.json();
    assert_eq!(dev["api_port"], agent.addr.port());
    assert_eq!(dev["update_pending"], false);
    assert_eq!(dev["update_failed"], false);
    assert_eq!(dev["update_downloaded"], false);
    assert_eq!(dev["commit"], "rel-1");
    assert_eq!(dev["status"], "Idle");
    assert_eq!(dev["download_progress"], Value::Null);
    assert!(dev["supervisor_version"].is_string(), "{dev}");

    // GET /v1/apps/:appId
    let r = agent.get(&format!("/v1/apps/{APP_ID}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let app = r.json();
    assert_eq!(app["appId"], APP_ID);
    assert_eq!(app["commit"], "rel-1");
    assert_eq!(app["containerId"], cid.as_str());
    assert_eq!(app["imageId"], image_id.as_str());
    assert_eq!(app["releaseId"], Value::Null);
    assert_eq!(app["env"]["FOO"], "bar");
    assert_eq!(app["env"]["BALENA_APP_ID"], APP_ID.to_string());
    assert_eq!(app["env"]["BALENA_APP_UUID"], APP);
    assert_eq!(app["env"]["BALENA_DEVICE_UUID"], "dapi-device-uuid");
    assert!(app["env"].get("BALENA_API_KEY").is_none(), "{app}");
    text(&agent.get("/v1/apps/seven"), 400, "Missing app id");
    text(&agent.get("/v1/apps/999"), 400, "App not found");

    // GET /v2/applications/state
    let r = agent.get("/v2/applications/state");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"dapi": {"appId": APP_ID, "appUuid": APP, "commit": "rel-1",
            "updateStatus": "done", "services": {"main": {"status": "Running",
            "image": infra.image_a, "downloadProgress": null, "releaseId": null}}}})
    );

    // GET /v2/applications/:appId/state
    let r = agent.get(&format!("/v2/applications/{APP_ID}/state"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"commit": "rel-1", "local": {APP_ID.to_string(): {"services": {
            SERVICE_ID.to_string(): {"status": "Running", "releaseId": null,
                "download_progress": null}}}}})
    );
    failed(
        &agent.get("/v2/applications/x1/state"),
        400,
        "Invalid application ID: x1",
    );
    failed(
        &agent.get("/v2/applications/999/state"),
        409,
        "Application ID does not exist: 999",
    );

    // GET /v2/state/status
    let r = agent.get("/v2/state/status");
    assert_eq!(r.status, 200, "{}", r.body);
    let st = r.json();
    assert_eq!(st["status"], "success");
    assert_eq!(st["appState"], "applied");
    assert_eq!(st["overallDownloadProgress"], Value::Null);
    assert_eq!(st["release"], "rel-1");
    let c = &st["containers"][0];
    assert_eq!(
        (
            &c["status"],
            &c["serviceName"],
            &c["appId"],
            &c["serviceId"],
            &c["containerId"]
        ),
        (
            &json!("Running"),
            &json!("main"),
            &json!(APP_ID),
            &json!(SERVICE_ID),
            &json!(cid)
        )
    );
    assert!(c["createdAt"].is_string(), "{st}");
    let i = &st["images"][0];
    assert_eq!(i["name"], infra.image_a.as_str());
    assert_eq!(i["status"], "Downloaded");
    assert_eq!(i["dockerImageId"], image_id.as_str());
    assert_eq!(i["downloadProgress"], Value::Null);

    // GET /v2/version, /v2/device/name, /v2/device/vpn
    let v = agent.get("/v2/version");
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.json()["status"], "success");
    assert!(v.json()["version"].is_string());
    let n = agent.get("/v2/device/name");
    assert_eq!(
        (n.status, n.json()),
        (200, json!({"status": "success", "deviceName": "local"}))
    );
    let vpn = agent.get("/v2/device/vpn");
    assert_eq!(vpn.status, 200, "{}", vpn.body);
    assert_eq!(vpn.json()["status"], "success");
    assert_eq!(vpn.json()["vpn"]["enabled"], false);
    assert!(vpn.json()["vpn"]["connected"].is_boolean());

    // GET /v2/containerId
    let r = agent.get("/v2/containerId");
    assert_eq!(
        (r.status, r.json()),
        (
            200,
            json!({"status": "success", "services": {"main": cid.as_str()}})
        )
    );
    for q in ["serviceName=main", "service=main"] {
        let r = agent.get(&format!("/v2/containerId?{q}"));
        assert_eq!(
            (r.status, r.json()),
            (
                200,
                json!({"status": "success", "containerId": cid.as_str()})
            )
        );
    }
    failed(
        &agent.get("/v2/containerId?serviceName=nope"),
        503,
        "Could not find service with that name",
    );

    // Device tags: reading needs the cloud; writing is validated and queued.
    let r = agent.get("/v2/device/tags");
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json()["status"], "failed");
    let shape = "Invalid tags body, must be an object like {[tagKey: string]: string}";
    failed(&patch_tags(&agent, "[1, 2]"), 400, shape);
    failed(&patch_tags(&agent, r#"{"room": 3}"#), 400, shape);
    failed(&patch_tags(&agent, "{not json"), 400, shape);
    failed(
        &patch_tags(&agent, r#"{"my room": "x"}"#),
        400,
        "Tag keys cannot contain whitespace",
    );
    let r = patch_tags(&agent, r#"{"room": "lab", "floor": "2"}"#);
    assert_eq!(
        (r.status, r.json()),
        (202, json!({"status": "success"})),
        "{}",
        r.body
    );
    let r = patch_tags(&agent, r#"{"room": "hall"}"#);
    assert_eq!(r.status, 202, "{}", r.body);

    // Local mode endpoints.
    let r = agent.get("/v2/local/target-state");
    assert_eq!(r.status, 200, "{}", r.body);
    let local = &r.json()["state"]["local"];
    assert_eq!(local["name"], "local");
    assert!(local["config"].is_object(), "{local}");
    let app = &local["apps"][APP_ID.to_string()];
    assert_eq!(app["name"], "dapi");
    assert_eq!(app["commit"], "rel-1");
    assert_eq!(app["services"][0]["serviceName"], "main");
    assert_eq!(app["services"][0]["image"], infra.image_a.as_str());
    failed(
        &agent.post_json("/v2/local/target-state", r#"{"local": {}}"#),
        400,
        "Target state can only set when device is in local mode",
    );
    let r = agent.get("/v2/local/device-info");
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json()["status"], "failed");

    // Volume cleanup keeps what the target uses (removal is tested in engine::actions).
    let r = agent.get("/v2/cleanup-volumes");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "success");

    // POST /v1/blink answers at once, LED or not.
    text(&agent.post_json("/v1/blink", ""), 200, "OK");

    // The pending tags were persisted (read back once the agent has let go of the store).
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).is_some());
    drop(agent);
    let (store, _) = helios_actors::ports::store::Store::open(&store_dir, 1 << 20).unwrap();
    assert_eq!(
        store.get_json("tags/pending").unwrap(),
        Some(json!({"room": "hall", "floor": "2"}))
    );
    drop(store);
    empty_engine(&d).await;
}

#[test]
fn healthy_is_500_without_the_engine() {
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentOpts::new(home.path()));
    text(&agent.get("/v1/healthy"), 500, "Unhealthy");
    text(&agent.get("/ping"), 200, "OK");
}
