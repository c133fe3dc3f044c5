//! Seek against the real engine: a 3-service release installs with the specified names, labels
//! and configuration, heals drift, survives SIGKILL mid-apply, and is removed by DELETE. Images
//! are pulled from the local registry.
use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use serde_json::json;

use crate::support::agent::{eventually, Agent, AgentOpts};
use crate::support::infra::{docker, empty_engine, infra, Infra};

const APP: &str = "app-uuid-1";

fn agent(infra: &Infra, home: &std::path::Path) -> Agent {
    Agent::start(
        AgentOpts::new(home)
            .env("DOCKER_HOST", infra.docker_host.clone())
            .arg("--uuid")
            .arg("device-uuid-1")
            .arg("--local-retry-interval-ms")
            .arg("1000"),
    )
}

/// The issue's release: two images, networks front/back plus default, a named volume, a bind
/// mount, a tmpfs, a published port range, a sysctl, and one service on the host network.
fn release(infra: &Infra, release: &str) -> serde_json::Value {
    json!({"id": 1, "name": "demo", "releases": {release: {
        "services": {
            "web": {"id": 11, "image": infra.image_a,
                "environment": {"GREETING": "hello"},
                "labels": {"com.example.tier": "front"},
                "composition": {
                    "command": ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www"],
                    "networks": ["front", "back"],
                    "ports": ["41080-41081:80"],
                    "volumes": ["data:/data", "/sys:/host/sys:ro",
                                {"type": "tmpfs", "target": "/scratch", "tmpfs": {"size": 1048576}}],
                    "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"}
                }},
            "worker": {"id": 12, "image": infra.image_b,
                "composition": {"command": "sleep infinity", "volumes": ["data:/data"],
                                "depends_on": ["web"]}},
            "hostnet": {"id": 13, "image": infra.image_a,
                "composition": {"command": "sleep infinity", "network_mode": "host"}}
        },
        "networks": {"front": {}, "back": {"driver": "bridge"}},
        "volumes": {"data": {}}
    }}})
}

async fn containers(d: &Docker) -> HashMap<String, bollard::models::ContainerSummary> {
    d.list_containers(Some(
        ListContainersOptionsBuilder::default().all(true).build(),
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|c| {
        let name = c.names.clone().unwrap_or_default()[0]
            .trim_start_matches('/')
            .to_string();
        (name, c)
    })
    .collect()
}

#[tokio::test]
async fn installs_a_release_heals_drift_and_removes_it() {
    let Some(infra) = infra("engine::apply") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let agent = agent(infra, home.path());

    let r = agent.post_json(
        &format!("/v3/device/apps/{APP}"),
        &release(infra, "rel-1").to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    agent.wait_status("done", Duration::from_secs(120));

    // Names, labels and configuration on the engine.
    let all = containers(&d).await;
    let mut names: Vec<_> = all.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["hostnet_rel-1", "web_rel-1", "worker_rel-1"]);
    let web = d
        .inspect_container("web_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();
    let labels = web.config.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(
        labels.get("io.balena.supervised").map(String::as_str),
        Some("")
    );
    assert_eq!(
        labels.get("io.balena.app-uuid").map(String::as_str),
        Some(APP)
    );
    assert_eq!(
        labels.get("io.balena.service-name").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        labels.get("io.balena.service-id").map(String::as_str),
        Some("11")
    );
    assert_eq!(
        labels.get("com.example.tier").map(String::as_str),
        Some("front")
    );
    let env = web.config.as_ref().unwrap().env.clone().unwrap();
    for want in [
        "GREETING=hello",
        &format!("BALENA_APP_UUID={APP}"),
        "BALENA_SERVICE_NAME=web",
        "BALENA_DEVICE_UUID=device-uuid-1",
    ] {
        assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
    }
    let host = web.host_config.clone().unwrap();
    assert_eq!(
        host.restart_policy.unwrap().name,
        Some(bollard::models::RestartPolicyNameEnum::ALWAYS)
    );
    assert_eq!(
        host.sysctls
            .unwrap()
            .get("net.ipv4.ip_unprivileged_port_start")
            .map(String::as_str),
        Some("0")
    );
    let ports = host.port_bindings.unwrap();
    let mut published: Vec<String> = ports["80/tcp"]
        .clone()
        .unwrap()
        .into_iter()
        .filter_map(|b| b.host_port)
        .collect();
    published.sort();
    assert_eq!(published, ["41080", "41081"]);
    let mounts = web.mounts.clone().unwrap();
    let dest = |m: &bollard::models::MountPoint| m.destination.clone().unwrap_or_default();
    assert!(mounts
        .iter()
        .any(|m| dest(m) == "/data" && m.name.as_deref() == Some(&format!("data_{APP}"))));
    assert!(mounts
        .iter()
        .any(|m| dest(m) == "/host/sys" && m.source.as_deref() == Some("/sys")));
    assert!(mounts.iter().any(|m| dest(m) == "/tmp/balena"));
    let tmpfs = host.mounts.unwrap_or_default();
    assert!(
        tmpfs
            .iter()
            .any(|m| m.target.as_deref() == Some("/scratch")),
        "{tmpfs:?}"
    );
    let nets = web.network_settings.unwrap().networks.unwrap();
    for n in ["front", "back"] {
        let ep = nets
            .get(&format!("{n}_{APP}"))
            .unwrap_or_else(|| panic!("web not on {n}: {nets:?}"));
        assert!(ep
            .aliases
            .clone()
            .unwrap_or_default()
            .contains(&"web".to_string()));
    }
    let hostnet = d
        .inspect_container("hostnet_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(
        hostnet.host_config.unwrap().network_mode.as_deref(),
        Some("host")
    );
    let worker = d
        .inspect_container("worker_rel-1", None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert!(worker
        .network_settings
        .unwrap()
        .networks
        .unwrap()
        .contains_key(&format!("default_{APP}")));
    for n in ["front", "back", "default"] {
        let net = d
            .inspect_network(&format!("{n}_{APP}"), None)
            .await
            .unwrap();
        assert_eq!(
            net.labels
                .unwrap()
                .get("io.balena.network-name")
                .map(String::as_str),
            Some(n)
        );
    }
    d.inspect_volume(&format!("data_{APP}"))
        .await
        .expect("named volume");

    // The published port answers.
    let page = eventually(Duration::from_secs(20), || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:41080").ok()?;
        use std::io::{Read, Write};
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains("hello-from-web").then_some(out)
    });
    assert!(page.is_some(), "the published port serves the page");

    // The document reads back as specified.
    let dev = agent.get("/v3/device").json();
    assert_eq!(dev["uuid"], "device-uuid-1");
    let app = &dev["apps"][APP];
    assert_eq!(app["id"], 1);
    assert_eq!(app["name"], "demo");
    assert_eq!(app["locked"], false);
    let web_doc = &app["releases"]["rel-1"]["services"]["web"];
    assert_eq!(web_doc["oci"]["name"], "web_rel-1");
    assert_eq!(web_doc["oci"]["status"], "running");
    assert_eq!(web_doc["started"], true);
    assert_eq!(web_doc["image"], infra.image_a);
    assert_eq!(app["releases"]["rel-1"]["installed"], true);
    assert_eq!(
        app["releases"]["rel-1"]["networks"]["front"]["oci_name"],
        format!("front_{APP}")
    );
    assert_eq!(
        app["releases"]["rel-1"]["volumes"]["data"]["oci_name"],
        format!("data_{APP}")
    );
    assert!(dev["images"][&infra.image_a]["oci_id"]
        .as_str()
        .is_some_and(|s| s.starts_with("sha256:")));
    assert_eq!(agent.get(&format!("/v3/device/apps/{APP}")).json(), *app);
    assert_eq!(agent.get("/v3/device/apps/nope").status, 404);

    // Drift: a service container removed by hand comes back on its own.
    let old_id = web.id.clone().unwrap();
    d.remove_container(
        "web_rel-1",
        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
    )
    .await
    .unwrap();
    let mut healed = None;
    for _ in 0..120 {
        if let Ok(c) = d
            .inspect_container("web_rel-1", None::<InspectContainerOptions>)
            .await
        {
            if c.id != Some(old_id.clone()) && c.state.and_then(|s| s.running) == Some(true) {
                healed = c.id;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(healed.is_some(), "helios recreated the removed container");
    let drift = agent
        .logs()
        .into_iter()
        .find(|l| l.contains("cause=drift") && l.contains("decision=apply"))
        .expect("the drift is logged as the reason of the apply");
    assert!(drift.contains("reason=\"drift"), "{drift}");
    assert!(
        agent
            .logs()
            .iter()
            .any(|l| l.contains("decision=plan") && l.contains("create container 'web_rel-1'")),
        "the plan says what it recreates"
    );

    // DELETE removes the app, its networks, volumes and images.
    let r = http_delete(&agent, &format!("/v3/device/apps/{APP}"));
    assert_eq!(r, 202);
    let gone = eventually(Duration::from_secs(120), || {
        let s = agent.get("/v3/status").json();
        let dev = agent.get("/v3/device").json();
        (s["status"] == "done" && dev["apps"].get(APP).is_none()).then_some(())
    });
    assert!(gone.is_some(), "app gone from the document");
    assert!(containers(&d).await.is_empty(), "no containers left");
    for n in ["front", "back", "default"] {
        assert!(
            d.inspect_network(&format!("{n}_{APP}"), None)
                .await
                .is_err(),
            "{n} left"
        );
    }
    assert!(
        d.inspect_image(&infra.image_a).await.is_err(),
        "image A removed"
    );
    assert!(
        d.inspect_image(&infra.image_b).await.is_err(),
        "image B removed"
    );
    assert_eq!(agent.get("/v3/device").json()["apps"], json!({}));
}

fn http_delete(agent: &Agent, path: &str) -> u16 {
    crate::support::agent::http(agent.addr, "DELETE", path, None).status
}

#[tokio::test]
async fn converges_after_sigkill_mid_apply_with_one_container_per_service() {
    let Some(infra) = infra("engine::apply") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let first = agent(infra, home.path());
    let r = first.post_json(
        &format!("/v3/device/apps/{APP}"),
        &release(infra, "rel-1").to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    first
        .wait_log(
            |l| l.contains("step=create") && l.contains("Step started"),
            Duration::from_secs(60),
        )
        .expect("the apply reaches container creation");
    first.signal(libc::SIGKILL);
    drop(first);

    let second = agent(infra, home.path());
    second.wait_status("done", Duration::from_secs(120));
    let all = containers(&d).await;
    let mut names: Vec<_> = all.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        ["hostnet_rel-1", "web_rel-1", "worker_rel-1"],
        "exactly one per service"
    );
    for (name, c) in &all {
        assert_eq!(
            c.state,
            Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            "{name}"
        );
    }
    empty_engine(&d).await;
}

#[tokio::test]
async fn invalid_targets_are_rejected_and_change_nothing() {
    let Some(infra) = infra("engine::apply") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let agent = agent(infra, home.path());
    let path = format!("/v3/device/apps/{APP}");
    let svc = |composition: serde_json::Value| {
        json!({"id": 1, "name": "x", "releases": {"r": {"services": {"s": {
            "id": 1, "image": infra.image_a, "composition": composition}}}}})
        .to_string()
    };
    let cases = [
        (svc(json!({"volumes": ["/etc:/host-etc"]})), 422, "volumes"),
        (
            svc(json!({"security_opt": ["seccomp=/tmp/x.json"]})),
            422,
            "security_opt",
        ),
        (
            svc(json!({"sysctls": {"kernel.panic": "1"}})),
            422,
            "sysctls",
        ),
        (svc(json!({"depends_on": ["ghost"]})), 422, "depends_on"),
        (r#"{"id": 1, "name": "x", "#.to_string(), 400, "JSON"),
        (r#"{"name": "no id"}"#.to_string(), 422, "id"),
    ];
    for (body, status, field) in cases {
        let r = agent.post_json(&path, &body);
        assert_eq!(r.status, status, "{body} → {}", r.body);
        assert!(
            r.body.contains(field),
            "{body}: the error names {field}: {}",
            r.body
        );
    }
    let r = crate::support::agent::http(agent.addr, "POST", &path, Some(("text/plain", "{}")));
    assert_eq!(r.status, 415);
    let r = agent.post_json(&format!("{path}?force=yes"), &svc(json!({})));
    assert_eq!(r.status, 400);
    assert_eq!(agent.get("/v3/status").json()["status"], "done");
    assert!(
        containers(&d).await.is_empty(),
        "nothing on the engine changed"
    );
    assert_eq!(agent.get("/v3/device").json()["apps"], json!({}));
}

/// The README's example app, with its public images swapped for the local registry's.
#[tokio::test]
async fn the_readme_example_app_converges() {
    let Some(infra) = infra("engine::apply") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.json"))
        .unwrap()
        .replace("busybox:1.36", &infra.image_a)
        .replace("alpine:3.20", &infra.image_b);
    let home = tempfile::tempdir().unwrap();
    let agent = agent(infra, home.path());
    assert_eq!(
        agent.post_json("/v3/device/apps/hello-app", &text).status,
        202
    );
    agent.wait_status("done", Duration::from_secs(120));
    let page = eventually(Duration::from_secs(30), || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:8080").ok()?;
        use std::io::{Read, Write};
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains("hello from helios").then_some(out)
    });
    assert!(
        page.is_some(),
        "the web service answers on the published port"
    );
    // The ticker reaches web by its service name on the app's network and writes the volume.
    let mut ticked = false;
    for _ in 0..60 {
        let out =
            crate::support::infra::exec(&d, "ticker_hello-release-1", &["cat", "/data/ticks"])
                .await;
        if out.contains("hello from helios") {
            ticked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ticked, "ticker fetched the page through the service alias");
    empty_engine(&d).await;
}
