//! `helios takeover` / `helios untakeover` (spec/helios-api-v3.md §8.2, spec/helios-proxy.md
//! §3-§4) against a stand-in legacy supervisor: a container named `balena_supervisor` that
//! keeps its settings where the real one does (`/data/database.sqlite`, table `config`), with a
//! shell and the `sqlite3` command, and a fake systemd on the test bus.
use std::path::Path;
use std::process::Command;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, StartContainerOptions};

use crate::support::agent::helios_command;
use crate::support::fake_host::FakeSystemd;
use crate::support::infra::{docker, empty_engine, exec, infra, Infra};

const IMAGE: &str = "helios-test/legacy-standin:1";

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// busybox, sqlite3 and its libraries, and a database with the legacy supervisor's schema
/// and a setting of its own, imported as an image.
fn build_image(infra: &Infra, dir: &Path) {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sed", "sleep", "printf", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let ldd = Command::new("ldd")
        .arg("/usr/bin/sqlite3")
        .output()
        .unwrap();
    let mut files = vec!["/usr/bin/sqlite3".to_string()];
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(p.to_string());
        }
    }
    for f in files {
        let to = root.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(&f).unwrap(), &to).unwrap();
    }
    sh(&format!(
        "sqlite3 {}/data/database.sqlite \"CREATE TABLE config (key VARCHAR(255) NOT NULL \
         PRIMARY KEY, value TEXT); INSERT INTO config VALUES ('apiEndpoint', \
         'https://api.balena-cloud.com'), ('listenPort', '48484');\"",
        root.display()
    ));
    sh(&format!(
        "tar -C {} -c . | env -u DOCKER_HOST -u DOCKER_CONTEXT DOCKER_CONFIG={} docker -H {} \
         import -c 'CMD [\"sleep\",\"infinity\"]' - {IMAGE} >/dev/null",
        root.display(),
        dir.join("docker-cli").display(),
        infra.docker_host
    ));
}

/// The `config` table as `key=value` lines.
async fn settings(d: &bollard::Docker) -> String {
    exec(
        d,
        "balena_supervisor",
        &[
            "sqlite3",
            "-separator",
            "=",
            "/data/database.sqlite",
            "SELECT key, value FROM config ORDER BY key",
        ],
    )
    .await
}

fn helios(infra: &Infra, home: &Path, args: &[&str]) -> (bool, String) {
    let out = helios_command(home)
        .env("DOCKER_HOST", &infra.docker_host)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &infra.dbus_address)
        .args(args)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("{log}");
    (out.status.success(), log)
}

#[tokio::test]
async fn takes_over_idempotently_and_restores() {
    let Some(infra) = infra("engine::takeover") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let take = [
        "takeover",
        "--override-host",
        "http://127.0.0.1:48484",
        "--override-port",
        "48480",
    ];

    // No legacy supervisor: nothing to do, not an error.
    let (ok, log) = helios(infra, home.path(), &take);
    assert!(ok && log.contains("Nothing to take over"), "{log}");

    build_image(infra, home.path());
    let c = d
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name("balena_supervisor")
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(IMAGE.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    d.start_container(&c.id, None::<StartContainerOptions>)
        .await
        .unwrap();
    let original = settings(&d).await;
    assert_eq!(
        original.trim(),
        "apiEndpoint=https://api.balena-cloud.com\nlistenPort=48484"
    );
    let systemd = FakeSystemd::start(&infra.dbus_address);
    let crumb = home.path().join("run/helios-legacy-takeover-breadcrumb");

    // Takeover: both overrides written, the unit restarted, the breadcrumb gone.
    let (ok, log) = helios(infra, home.path(), &take);
    assert!(ok, "{log}");
    let taken = settings(&d).await;
    assert_eq!(
        taken.trim(),
        "apiEndpoint=https://api.balena-cloud.com\napiEndpointOverride=http://127.0.0.1:48484\n\
         listenPort=48484\nlistenPortOverride=48480"
    );
    assert_eq!(systemd.restarted(), ["balena-supervisor.service"]);
    assert!(!crumb.exists());

    // Twice: nothing changes, no restart.
    let (ok, log) = helios(infra, home.path(), &take);
    assert!(ok && log.contains("decision=unchanged"), "{log}");
    assert_eq!(settings(&d).await, taken);
    assert_eq!(systemd.restarted().len(), 1);

    // A crash between the write and the restart left the breadcrumb: the restart happens now.
    std::fs::write(&crumb, b"").unwrap();
    let (ok, log) = helios(infra, home.path(), &take);
    assert!(ok && log.contains("pending=true"), "{log}");
    assert_eq!(systemd.restarted().len(), 2);
    assert!(!crumb.exists());

    // Restore: the original settings are back, and the unit restarted; twice changes nothing.
    let (ok, log) = helios(infra, home.path(), &["untakeover"]);
    assert!(ok, "{log}");
    assert_eq!(settings(&d).await, original);
    assert_eq!(systemd.restarted().len(), 3);
    let (ok, log) = helios(infra, home.path(), &["untakeover"]);
    assert!(ok && log.contains("decision=unchanged"), "{log}");
    assert_eq!(systemd.restarted().len(), 3);

    // A value the database already had before the takeover is put back by the restore.
    exec(
        &d,
        "balena_supervisor",
        &[
            "sqlite3",
            "/data/database.sqlite",
            "INSERT INTO config VALUES ('listenPortOverride', '48999')",
        ],
    )
    .await;
    let before = settings(&d).await;
    assert!(helios(infra, home.path(), &take).0);
    assert!(settings(&d).await.contains("listenPortOverride=48480"));
    assert!(helios(infra, home.path(), &["untakeover"]).0);
    assert_eq!(settings(&d).await, before);

    // The entrypoint behaviour (spec §2.3): started with BALENA_SUPERVISOR_*, helios takes
    // over before it serves, with the override host from BALENA_SUPERVISOR_PORT.
    let mut agent = helios_command(home.path())
        .env("DOCKER_HOST", &infra.docker_host)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &infra.dbus_address)
        .env("BALENA_DEVICE_UUID", "takeover-device")
        .env("BALENA_SUPERVISOR_API_KEY", "legacy-key")
        .env("BALENA_SUPERVISOR_HOST", "127.0.0.1")
        .env("BALENA_SUPERVISOR_PORT", "48484")
        .env("HELIOS_LEGACY_PORT", "48481")
        .args(["--local-api-address", "127.0.0.1:0"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = settings(&d).await;
        if s.contains("listenPortOverride=48481") {
            assert!(
                s.contains("apiEndpointOverride=http://127.0.0.1:48484"),
                "{s}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(helios(infra, home.path(), &["untakeover"]).0);
    assert_eq!(settings(&d).await, before);
    empty_engine(&d).await;
}
