//! The target split in front of a legacy supervisor, on the real engine (spec/helios-proxy.md
//! §5.1, spec/helios-api-v3.md §8.3): helios runs the app it can, the legacy copy holds the
//! rest, the legacy supervisor is told to apply only after helios's apply, helios never touches
//! an app whose containers the legacy supervisor made, and the reports carry every app.
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, StartContainerOptions,
};
use futures::TryStreamExt;
use serde_json::{json, Value};

use crate::proxy::{managed, opts, request};
use crate::support::agent::{eventually, Agent};
use crate::support::fake_cloud::FakeCloud;
use crate::support::fake_legacy::FakeLegacy;
use crate::support::infra::{docker, empty_engine, infra};

const UUID: &str = "proxy-device-1";
const HELIOS_APP: &str = "aaaa0000000000000000000000000001";
const LEGACY_APP: &str = "bbbb0000000000000000000000000002";
/// An app helios could run, but whose containers the legacy supervisor already made.
const FOREIGN_APP: &str = "cccc0000000000000000000000000003";

fn app(id: u32, image: &str, service: &str, extra: Value) -> Value {
    let mut svc = json!({"id": id, "image_id": id, "image": image, "environment": {},
        "labels": {}, "composition": {"command": "sleep infinity", "stop_grace_period": "1s"}});
    svc.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"id": id, "name": format!("fleet{id}"), "class": "fleet", "releases": {
        format!("rel{id}"): {"id": id, "services": {service: svc}}}})
}

/// Supervised containers by app uuid label → names.
async fn supervised(d: &bollard::Docker) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for c in d
        .list_containers(Some(
            ListContainersOptionsBuilder::default().all(true).build(),
        ))
        .await
        .unwrap()
    {
        let labels = c.labels.unwrap_or_default();
        if let Some(app) = labels.get("io.balena.app-uuid") {
            out.entry(app.clone())
                .or_default()
                .push(c.names.unwrap_or_default()[0].clone());
        }
    }
    out
}

#[tokio::test]
async fn splits_the_target_and_hands_the_rest_to_the_legacy_supervisor() {
    let Some(infra) = infra("engine::proxy") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;

    // The legacy supervisor's container of FOREIGN_APP, made the way it makes them (no helios
    // bookkeeping label, its own naming).
    let _: Vec<_> = d
        .create_image(
            Some(
                CreateImageOptionsBuilder::default()
                    .from_image(&infra.image_a)
                    .build(),
            ),
            None,
            None,
        )
        .try_collect()
        .await
        .unwrap();
    let labels: HashMap<String, String> = [
        ("io.balena.supervised", "true"),
        ("io.balena.app-uuid", FOREIGN_APP),
        ("io.balena.app-id", "3"),
        ("io.balena.service-name", "old"),
        ("io.balena.service-id", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let foreign = d
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name("old_3_3_legacy")
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(infra.image_a.clone()),
                cmd: Some(vec!["sleep".into(), "infinity".into()]),
                labels: Some(labels),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    d.start_container(&foreign.id, None::<StartContainerOptions>)
        .await
        .unwrap();

    let cloud = FakeCloud::start();
    let legacy = FakeLegacy::start();
    // The first /v1/update is refused (a restarting supervisor): helios retries.
    legacy.fail_updates(1, 503);
    cloud.set_target(
        UUID,
        json!({"name": "proxied", "config": {"SOME_VAR": "1"}, "apps": {
            HELIOS_APP: app(1, &infra.image_a, "web", json!({})),
            LEGACY_APP: app(2, &infra.image_a, "gpu", json!({"contract": {"type": "sw.container",
                "requires": [{"type": "hw.device-type", "slug": "jetson-nano"}]}})),
            FOREIGN_APP: app(3, &infra.image_a, "old", json!({})),
        }}),
    );
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        managed(opts(home.path(), &legacy.url), &cloud)
            .env("DOCKER_HOST", infra.docker_host.clone())
            .env("HELIOS_LOCAL_RETRY_INTERVAL_MS", "500")
            // A balenaOS device: the host OS app is the legacy supervisor's, and helios's own
            // applies must still end `done` for the hand-off to happen.
            .env("HELIOS_HOST_OS_VERSION", "balenaOS 6.0.39@rev-1"),
    );

    // One decision per app, with its reason.
    for (app, decision) in [
        (HELIOS_APP, "run"),
        (LEGACY_APP, "delegate"),
        (FOREIGN_APP, "delegate"),
    ] {
        agent
            .wait_log(
                |l| {
                    l.contains("App owner decided")
                        && l.contains(&format!("app={app}"))
                        && l.contains(&format!("decision={decision}"))
                        && l.contains("reason=")
                },
                Duration::from_secs(30),
            )
            .unwrap_or_else(|| panic!("decision for {app}"));
    }

    // helios runs its app on the engine; never the others.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let running = loop {
        let s = supervised(&d).await;
        if s.contains_key(HELIOS_APP) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "helios runs its app: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!running.contains_key(LEGACY_APP), "{running:?}");
    assert_eq!(running[FOREIGN_APP], ["/old_3_3_legacy"], "{running:?}");
    let web = running[HELIOS_APP][0].trim_start_matches('/').to_string();

    // The legacy supervisor is told to apply after helios's apply, and retried.
    let updates = eventually(Duration::from_secs(30), || {
        let u = legacy.received_at("/v1/update");
        (u.len() >= 2).then_some(u)
    })
    .expect("the legacy supervisor is told to apply, twice (one refusal)");
    assert_eq!(
        updates[0].header("authorization"),
        Some("Bearer legacy-key")
    );
    let body: Value = serde_json::from_slice(&updates[0].body).unwrap();
    assert!(
        body["force"].is_boolean() && body["cancel"].is_boolean(),
        "{body}"
    );
    let started = d
        .inspect_container(&web, None::<InspectContainerOptions>)
        .await
        .unwrap()
        .state
        .and_then(|s| s.started_at)
        .unwrap();
    let started = humantime_secs(&started);
    let told = updates[0]
        .at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= told,
        "helios's container started {started}, /v1/update at {told}"
    );
    let logs = agent.logs();
    let done = logs.iter().position(|l| l.contains("Target reached"));
    let served = logs.iter().position(|l| l.contains("Legacy target served"));
    assert!(
        done.is_some() && served > done,
        "hand-off after helios's apply"
    );
    eventually(Duration::from_secs(10), || {
        (!legacy.received_at("/v2/state/status").is_empty()).then_some(())
    })
    .expect("helios waits for the legacy supervisor's apply");
    // On balenaOS the host app is the legacy supervisor's: helios's own loop ends `done`, not
    // `aborted` for "no hostapp".
    agent.wait_status("done", Duration::from_secs(30));

    // `POST /v1/update` with the target unchanged (a 304): the legacy supervisor is asked to
    // apply again too.
    let told_before = legacy.received_at("/v1/update").len();
    assert_eq!(
        request(
            agent.addr,
            "POST",
            "/v1/update",
            &[("Authorization", &agent.bearer())],
            None
        )
        .status,
        202
    );
    eventually(Duration::from_secs(20), || {
        (legacy.received_at("/v1/update").len() > told_before).then_some(())
    })
    .expect("/v1/update reaches the legacy supervisor through helios's poll");

    // The legacy copy: the same device name and config, only the apps it runs.
    let ua = [
        ("User-Agent", "Supervisor/19.0.5"),
        ("Authorization", "Bearer device-key"),
    ];
    let path = format!("/device/v3/{UUID}/state");
    let t = request(agent.addr, "GET", &path, &ua, None);
    assert_eq!(t.status, 200);
    let doc = t.json();
    let mut apps: Vec<_> = doc[UUID]["apps"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    apps.sort();
    assert_eq!(apps, [LEGACY_APP, FOREIGN_APP]);
    assert_eq!(doc[UUID]["config"], json!({"SOME_VAR": "1"}));
    let etag = t.header("etag").unwrap().to_string();
    let again = request(
        agent.addr,
        "GET",
        &path,
        &[
            ("User-Agent", "Supervisor/19.0.5"),
            ("Authorization", "Bearer device-key"),
            ("If-None-Match", &etag),
        ],
        None,
    );
    assert_eq!(again.status, 304);

    // The legacy supervisor reports its apps through the proxy; helios reports every app,
    // whole, and the legacy PATCH reaches the API without `apps`.
    let report = json!({UUID: {"status": "Idle", "apps": {
        LEGACY_APP: {"release_uuid": "rel2", "releases": {"rel2": {"services": {}}}},
        HELIOS_APP: {"release_uuid": "stale", "releases": {}},
    }}})
    .to_string();
    let a = request(
        agent.addr,
        "PATCH",
        "/device/v3/state",
        &[
            ("User-Agent", "Supervisor/19.0.5"),
            ("Authorization", "Bearer device-key"),
            ("Content-Type", "application/json"),
        ],
        Some((report.len() as u64, &|i| report.as_bytes()[i as usize])),
    );
    assert_eq!(a.status, 200);
    let merged = eventually(Duration::from_secs(20), || {
        cloud.reports().into_iter().rev().find_map(|r| {
            let apps = r[UUID].get("apps")?.as_object()?.clone();
            apps.contains_key(LEGACY_APP).then_some(apps)
        })
    })
    .expect("a helios report with the legacy supervisor's apps");
    assert!(merged.contains_key(HELIOS_APP), "{merged:?}");
    assert_eq!(merged[LEGACY_APP]["release_uuid"], "rel2");
    assert_ne!(
        merged[HELIOS_APP]["release_uuid"], "stale",
        "helios reports its own apps"
    );
    assert!(cloud
        .reports()
        .iter()
        .filter(|r| r[UUID]["status"] == "Idle" && r[UUID].get("api_port").is_none())
        .all(|r| r[UUID].get("apps").is_none()));

    // The legacy supervisor's container is still running, untouched.
    let c = d
        .inspect_container("old_3_3_legacy", None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(c.state.and_then(|s| s.running), Some(true));
    drop(agent);
    empty_engine(&d).await;
}

/// Seconds since the epoch of an RFC 3339 timestamp as the engine writes it (UTC, `Z`).
fn humantime_secs(s: &str) -> f64 {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", s, "+%s.%N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
