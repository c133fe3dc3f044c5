//! Device tags written with `PATCH /v2/device/tags` reach the fake cloud as
//! `PATCH /device/v3/tags` (spec/state-report-v3.md §9): only changed values, batched, retried
//! after a failure, and still sent after a restart; `GET /v2/device/tags` reads them back from
//! the cloud.
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::agent::{eventually, http, Agent, AgentOpts};
use crate::support::fake_cloud::{FakeCloud, Fault, Route};

const UUID: &str = "tags-device-1";
const KEY: &str = "device-key-tags";

fn sent(cloud: &FakeCloud) -> Vec<Value> {
    cloud
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Tags && r.method == "PATCH" && r.answered == Some(200))
        .filter_map(|r| r.json())
        .collect()
}

fn patch(agent: &Agent, tags: &str) {
    let r = http(
        agent.addr,
        "PATCH",
        &format!("/v2/device/tags?apikey={KEY}"),
        Some(("application/json", tags)),
    );
    assert_eq!(r.status, 202, "{}", r.body);
}

#[test]
fn local_tags_are_pushed_once_changed_and_survive_failures_and_restarts() {
    let cloud = FakeCloud::start();
    cloud.add_fleet(1, "p");
    cloud.add_device(UUID, KEY, 1);
    cloud.set_target(UUID, json!({"name": "tagged", "config": {}, "apps": {}}));
    let home = tempfile::tempdir().unwrap();
    let start = || {
        Agent::start(
            AgentOpts::new(home.path())
                .arg("--uuid")
                .arg(UUID)
                .arg("--remote-api-endpoint")
                .arg(cloud.url.clone())
                .arg("--remote-api-key")
                .arg(KEY)
                .arg("--device-api-key")
                .arg(KEY),
        )
    };
    let agent = start();
    patch(&agent, r#"{"room": "hall", "floor": "2"}"#);
    let first = eventually(Duration::from_secs(20), || sent(&cloud).into_iter().next())
        .expect("tags pushed");
    assert_eq!(first, json!({UUID: {"room": "hall", "floor": "2"}}));

    // Only what changed goes out; a tag set to its reported value is not sent again.
    patch(&agent, r#"{"room": "hall", "desk": "7"}"#);
    let second =
        eventually(Duration::from_secs(30), || sent(&cloud).get(1).cloned()).expect("second push");
    assert_eq!(second, json!({UUID: {"desk": "7"}}));

    // The cloud fails: retried; while the agent is down the tag waits in the store.
    cloud.inject(
        Route::Tags,
        1,
        Fault::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(1)),
        },
    );
    patch(&agent, r#"{"floor": "3"}"#);
    let third = eventually(Duration::from_secs(40), || sent(&cloud).get(2).cloned())
        .expect("pushed after the failure");
    assert_eq!(third, json!({UUID: {"floor": "3"}}));
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("Device tags report failed")));
    drop(agent);

    cloud.inject(
        Route::Tags,
        100,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    let agent = start();
    patch(&agent, r#"{"room": "attic"}"#);
    drop(agent); // killed before the cloud took it
    cloud.clear_faults();
    let agent = start();
    let fourth = eventually(Duration::from_secs(30), || sent(&cloud).get(3).cloned())
        .expect("pending tag sent after the restart");
    assert_eq!(fourth, json!({UUID: {"room": "attic"}}));

    // Read back from the cloud (GET /v7/device_tag with the looked-up device id), ids included.
    let r = agent.get(&format!("/v2/device/tags?apikey={KEY}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["status"], "success", "{body}");
    let mut tags: Vec<(String, String)> = body["tags"]
        .as_array()
        .expect("a tags list")
        .iter()
        .map(|t| {
            assert!(t["id"].as_u64().is_some_and(|i| i > 0), "{t}");
            (
                t["name"].as_str().unwrap().into(),
                t["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    tags.sort();
    let want = [("desk", "7"), ("floor", "3"), ("room", "attic")]
        .map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(tags, want);
    // The cloud failing: 500 with the reason, as the legacy supervisor answers.
    cloud.inject(
        Route::Tags,
        1,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    let r = agent.get(&format!("/v2/device/tags?apikey={KEY}"));
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json()["status"], "failed");
    assert!(
        !agent.logs().iter().any(|l| l.contains(KEY)),
        "no key in the log"
    );
}

#[test]
fn pending_tags_are_bounded_and_a_write_beyond_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentOpts::new(home.path()).arg("--device-api-key").arg(KEY));
    let many: serde_json::Map<String, Value> = (0..1001)
        .map(|i| (format!("tag-{i}"), json!("v")))
        .collect();
    let r = http(
        agent.addr,
        "PATCH",
        &format!("/v2/device/tags?apikey={KEY}"),
        Some(("application/json", &Value::Object(many).to_string())),
    );
    assert_eq!(r.status, 507, "{}", r.body);
    assert!(r.body.contains("too many device tags"), "{}", r.body);
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("Device tags not queued") && l.contains("decision=refuse")));
    // Nothing of the refused write was stored; a small one still is.
    patch(&agent, r#"{"room": "hall"}"#);
}
