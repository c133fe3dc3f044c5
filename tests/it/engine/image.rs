//! The container image (deploy/Dockerfile via scripts/build-image) on the test engine: it builds
//! from local material, carries the labels, volumes and healthcheck of spec/helios-api-v3.md §2.3,
//! and the agent in it answers `/ping` on its unix socket, finds the engine it was given and
//! turns healthy through its own `helios healthcheck`.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
};

use crate::support::infra::{docker, empty_engine, infra};

/// `GET path` over a unix socket: (status, body), or `None` while nothing answers.
fn unix_get(sock: &Path, path: &str) -> Option<(u16, String)> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[tokio::test]
async fn image_builds_and_runs_against_the_engine() {
    let Some(infra) = infra("engine") else { return };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let tag = format!("helios-it-image:{}", std::process::id());

    // The image script, packaging the binary under test (dynamic: with its libraries).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cli_config = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/build-image"))
        .args(["--binary", env!("CARGO_BIN_EXE_helios"), "--tag", &tag])
        .env("DOCKER_HOST", &infra.docker_host)
        .env("DOCKER_CONFIG", cli_config.path())
        .output()
        .expect("scripts/build-image runs");
    assert!(
        out.status.success(),
        "scripts/build-image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let image = d.inspect_image(&tag).await.expect("the image exists");
    let config = image.config.expect("image config");
    let labels = config.labels.unwrap_or_default();
    for feature in ["supervisor-api", "balena-socket", "dbus", "balena-api"] {
        let key = format!("io.balena.features.{feature}");
        assert_eq!(labels.get(&key).map(String::as_str), Some("1"), "{key}");
    }
    let volumes = config.volumes.unwrap_or_default();
    for v in ["/config/helios", "/local/helios", "/cache/helios"] {
        assert!(volumes.iter().any(|x| x == v), "volume {v} in {volumes:?}");
    }
    let health = config.healthcheck.and_then(|h| h.test).unwrap_or_default();
    assert_eq!(health, ["CMD", "/usr/bin/helios", "healthcheck"]);

    // Run it as balenaOS would: its env, the engine socket mounted, the runtime dir shared.
    let run = tempfile::tempdir().unwrap();
    let engine_socket = infra.docker_host.trim_start_matches("unix://");
    let name = format!("helios-it-image-{}", std::process::id());
    let body = ContainerCreateBody {
        image: Some(tag.clone()),
        env: Some(vec![
            "BALENA_DEVICE_UUID=0123456789abcdef0123456789abcdef".into(),
            "DOCKER_HOST=unix:///var/run/balena-engine.sock".into(),
        ]),
        // The image's own HEALTHCHECK command, probed often so the test stays quick.
        healthcheck: Some(HealthConfig {
            interval: Some(500_000_000),
            ..Default::default()
        }),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            binds: Some(vec![
                format!("{engine_socket}:/var/run/balena-engine.sock"),
                format!("{}:/tmp/run", run.path().display()),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    d.create_container(
        Some(CreateContainerOptionsBuilder::default().name(&name).build()),
        body,
    )
    .await
    .expect("container created");
    d.start_container(&name, None)
        .await
        .expect("container starts");

    let sock = run.path().join("helios.sock");
    let mut ping = None;
    let mut caps = None;
    for _ in 0..150 {
        ping = unix_get(&sock, "/ping");
        caps = unix_get(&sock, "/v3/capabilities")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok());
        if caps.as_ref().is_some_and(|c| c["engine"].is_object()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = || {
        Command::new("docker")
            .args(["-H", &infra.docker_host, "logs", &name])
            .env("DOCKER_CONFIG", cli_config.path())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        ping,
        Some((200, "OK".to_string())),
        "/ping over {}; logs:\n{}",
        sock.display(),
        logs()
    );
    let caps = caps.unwrap_or_default();
    assert_eq!(
        caps["engine"]["api_version"],
        "1.41",
        "{caps}; logs:\n{}",
        logs()
    );
    let version = unix_get(&sock, "/v3/version").expect("/v3/version answers");
    let version: serde_json::Value = serde_json::from_str(&version.1).unwrap();
    assert_eq!(version["git_commit"], helios::version::GIT_COMMIT);

    let mut status = String::new();
    for _ in 0..60 {
        let c = d
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
            .expect("inspect");
        status = c
            .state
            .and_then(|s| s.health)
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .unwrap_or_default();
        if status == "healthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, "healthy", "logs:\n{}", logs());

    let rm = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    d.remove_container(&name, Some(rm))
        .await
        .expect("container removed");
    empty_engine(&d).await;
}
