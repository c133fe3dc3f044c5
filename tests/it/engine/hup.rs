//! Host OS updates (spec/helios-api-v3.md §9) with the fake cloud serving a hostapp, a fake
//! updater image built here and pulled from the local registry, and the fake systemd on the
//! private bus really running `os-update.service`: the unit's arguments, the breadcrumb, at
//! most three attempts, the report and `/v3/status`, and a bus without systemd.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::agent::{eventually, Agent, AgentOpts};
use crate::support::fake_cloud::FakeCloud;
use crate::support::fake_host::{FakeSystemd, UnitCall};
use crate::support::infra::{docker, empty_engine, infra, push_image_with, Infra};

const UUID: &str = "hup-device-1";
const KEY: &str = "hup-device-key";
const HOST_APP: &str = "hup-host-app";
const USER_APP: &str = "hup-user-app";
const RELEASE: &str = "0123456789abcdef0123456789abcdef";
const NEW_BUILD: &str = "test-board-rev-001";

/// The fake updater: sleeps the seconds in `<runtime dir>/hup-sleep` if there, records its
/// arguments, working dir and the update locks held while it runs into `<runtime
/// dir>/hup-calls`, and exits with the code in `<runtime dir>/hup-exit` (0 without it). It
/// runs on this host (the fake systemd runs it), hence busybox by path.
const ENTRY_SH: &str = r#"#!/bin/busybox sh
b=/bin/busybox
here=$($b pwd)
run=$($b dirname "$here")
[ -e "$run/hup-sleep" ] && $b sleep "$($b cat "$run/hup-sleep")"
{
  for a in "$@"; do echo "arg=$a"; done
  echo "pwd=$here"
  for l in "$run"/update-locks/*/updates.lock; do [ -e "$l" ] && echo "lock=$l"; done
  echo "---"
} >> "$run/hup-calls"
exit "$($b cat "$run/hup-exit" 2>/dev/null || echo 0)"
"#;

struct Setup {
    cloud: FakeCloud,
    home: tempfile::TempDir,
    host_os_image: String,
    /// The device target the cloud serves.
    target: Value,
}

impl Setup {
    fn cloud_target(&self) -> Value {
        self.target.clone()
    }

    fn run_dir(&self) -> PathBuf {
        self.home.path().join("run")
    }

    fn breadcrumb(&self) -> PathBuf {
        self.run_dir()
            .join(format!("balenahup-{RELEASE}-breadcrumb"))
    }

    /// What the fake updater recorded, one `Vec` of lines per run.
    fn updater_runs(&self) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(self.run_dir().join("hup-calls")).unwrap_or_default();
        text.split("---\n")
            .filter(|r| !r.trim().is_empty())
            .map(|r| r.lines().map(str::to_string).collect())
            .collect()
    }

    fn start_agent(&self, infra: &Infra) -> Agent {
        Agent::start(
            AgentOpts::new(self.home.path())
                .env("DOCKER_HOST", infra.docker_host.clone())
                .env("DBUS_SYSTEM_BUS_ADDRESS", infra.dbus_address.clone())
                .env(
                    "HELIOS_HOST_OS_VERSION",
                    "balenaOS 6.0.39@test-board-rev-000",
                )
                .env("HELIOS_REMOTE_REPORT_MIN_INTERVAL_MS", "200")
                .env("HELIOS_REMOTE_POLL_MIN_INTERVAL_MS", "200")
                .env("HELIOS_REMOTE_POLL_MAX_JITTER_MS", "0")
                .env("HELIOS_LOCAL_RETRY_INTERVAL_MS", "500")
                .arg("--uuid")
                .arg(UUID)
                .arg("--remote-api-endpoint")
                .arg(self.cloud.url.clone())
                .arg("--remote-api-key")
                .arg(KEY)
                .arg("--remote-poll-interval-ms")
                .arg("600000"),
        )
    }

    /// The last report's apps.
    fn last_apps(&self) -> Option<Value> {
        self.cloud
            .reports()
            .iter()
            .rev()
            .find_map(|r| r[UUID].get("apps").cloned())
    }
}

/// Empties the engine, pushes the fake updater and serves a target with a user app and a
/// hostapp whose build is not the running one. `exit` is what the updater exits with.
async fn setup(infra: &Infra, exit: Option<&str>) -> Setup {
    let d = docker(infra).await;
    empty_engine(&d).await;
    let updater = push_image_with(
        infra,
        &d,
        "helios-test/updater:hup",
        &[
            ("app/entry.sh", ENTRY_SH.as_bytes(), 0o755),
            // A setuid helper: copied without the bit (the scripts run as root on the host).
            ("app/bin/helper", b"#!/bin/sh\n", 0o4755),
        ],
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("run")).unwrap();
    if let Some(code) = exit {
        std::fs::write(home.path().join("run/hup-exit"), code).unwrap();
    }
    let host_os_image = format!("{}/helios-test/hostos:6.1.0", infra.registry);
    let cloud = FakeCloud::start();
    cloud.add_device(UUID, KEY, 1);
    // The updater label in the composition, the class and board-rev on the service: both
    // places count (spec/target-state-v3.md §2.6).
    let target = json!({"name": "hup-device", "config": {}, "apps": {
            HOST_APP: {"id": 1, "name": "generic-amd64", "is_host": true, "class": "app",
                "releases": {RELEASE: {"id": 2, "services": {"main": {"id": 3, "image_id": 4,
                    "image": host_os_image, "environment": {},
                    "labels": {"io.balena.image.store": "root", "io.balena.image.class": "hostapp",
                        "io.balena.private.hostapp.board-rev": NEW_BUILD},
                    "composition": {"labels": {"io.balena.private.updater": updater}}}}}}},
            USER_APP: {"id": 5, "name": "fleet", "class": "fleet", "releases": {"rel-u1": {"id": 6,
                "services": {"main": {"id": 7, "image_id": 8, "image": infra.image_a,
                    "environment": {}, "labels": {},
                    "composition": {"command": "sleep infinity", "stop_grace_period": "1s"}}}}}}}});
    cloud.set_target(UUID, target.clone());
    Setup {
        cloud,
        home,
        host_os_image,
        target,
    }
}

fn transient_calls(systemd: &FakeSystemd) -> Vec<UnitCall> {
    systemd
        .calls()
        .into_iter()
        .filter(|c| c.method == "StartTransientUnit")
        .collect()
}

fn host_release(agent: &Agent) -> Value {
    agent.get("/v3/device").json()["host"]["releases"][RELEASE].clone()
}

/// The host app in the last report is the release `aborted`, service `hostapp` `Installing`.
fn reported_aborted(s: &Setup) -> Option<Value> {
    let apps = s.last_apps()?;
    let rel = &apps[HOST_APP]["releases"][RELEASE];
    (rel["update_status"] == "aborted").then_some(apps)
}

fn expected_argv(s: &Setup) -> Vec<String> {
    let dir = s.run_dir().join("balenahup");
    vec![
        dir.join("entry.sh").display().to_string(),
        "--app-uuid".into(),
        HOST_APP.into(),
        "--release-commit".into(),
        RELEASE.into(),
        "--target-image-uri".into(),
        s.host_os_image.clone(),
    ]
}

fn assert_engine_clean_of_the_updater(containers: &[String], images: &[String]) {
    assert!(
        !containers
            .iter()
            .any(|n| n.trim_start_matches('/') == "balenahup"),
        "the balenahup container is removed: {containers:?}"
    );
    assert!(
        !images.iter().any(|i| i.contains("updater")),
        "the updater image is removed: {images:?}"
    );
}

async fn engine_names(infra: &Infra) -> (Vec<String>, Vec<String>) {
    let d = docker(infra).await;
    let containers = d
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect();
    let images = d
        .list_images(None::<bollard::query_parameters::ListImagesOptions>)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
    (containers, images)
}

fn lock_files(run: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(run.join("update-locks"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("updates.lock"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_host_os_update_runs_the_updater_once_and_waits_for_the_reboot() {
    let Some(infra) = infra("engine::hup") else {
        return;
    };
    let systemd = FakeSystemd::start(&infra.dbus_address);
    let s = setup(infra, None).await;
    // A user holds the user app's update lock: the OS update waits, counting nothing.
    let user_lock = s
        .run_dir()
        .join(format!("update-locks/{USER_APP}/updates.lock"));
    std::fs::create_dir_all(user_lock.parent().unwrap()).unwrap();
    std::fs::write(&user_lock, b"").unwrap();
    let agent = s.start_agent(infra);
    let wait = agent
        .wait_log(
            |l| l.contains("Host OS update waits") && l.contains("update locks"),
            Duration::from_secs(60),
        )
        .expect("a user lock makes the install wait");
    assert!(wait.contains(USER_APP), "{wait}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        transient_calls(&systemd).is_empty(),
        "nothing runs while locked"
    );
    assert_eq!(host_release(&agent)["install_attempts"], 0);
    assert_eq!(agent.get("/v3/status").json()["status"], "applying changes");
    std::fs::remove_file(&user_lock).unwrap();

    let crumb = eventually(Duration::from_secs(120), || {
        s.breadcrumb().exists().then_some(())
    });
    assert!(
        crumb.is_some(),
        "the breadcrumb is written after the updater succeeded"
    );
    agent.wait_status("aborted", Duration::from_secs(60));

    // Exactly one run of os-update.service, with the three flags, in <runtime dir>/balenahup.
    let calls = transient_calls(&systemd);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].unit, "os-update.service");
    assert_eq!(calls[0].argv, expected_argv(&s));
    let wd = s.run_dir().join("balenahup");
    assert_eq!(calls[0].working_directory, wd.display().to_string());
    assert!(
        systemd
            .calls()
            .iter()
            .any(|c| c.method == "ResetFailedUnit" && c.unit == "os-update.service"),
        "the unit is reset first"
    );
    // The updater really ran (copied out of the image), while every app's lock was held.
    let runs = s.updater_runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let args: Vec<String> = runs[0]
        .iter()
        .filter_map(|l| l.strip_prefix("arg=").map(str::to_string))
        .collect();
    assert_eq!(args, expected_argv(&s)[1..]);
    assert!(
        runs[0].contains(&format!("pwd={}", wd.display())),
        "{runs:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let helper = std::fs::metadata(wd.join("bin/helper")).expect("the updater's /app copied whole");
    assert_eq!(
        helper.permissions().mode() & 0o7777,
        0o755,
        "the setuid bit is not copied"
    );
    assert!(
        runs[0].contains(&format!("lock={}", user_lock.display())),
        "the user app's update lock is held while the updater runs: {runs:?}"
    );
    assert!(
        lock_files(&s.run_dir()).is_empty(),
        "and released afterwards"
    );

    // /v3/device: host meta and the release, installed after one attempt.
    let host = agent.get("/v3/device").json()["host"].clone();
    assert_eq!(
        host["meta"],
        json!({"name": "balenaOS", "version": "6.0.39", "build": "test-board-rev-000"})
    );
    assert_eq!(
        host["releases"][RELEASE],
        json!({"app": HOST_APP, "image": s.host_os_image, "build": NEW_BUILD,
            "updater": format!("{}/helios-test/updater:hup", infra.registry),
            "status": "installed", "install_attempts": 1})
    );

    // The report: the host app aborted/Installing (waiting for the reboot), the user app done.
    let apps = eventually(Duration::from_secs(30), || reported_aborted(&s))
        .expect("a report with the host release aborted");
    assert_eq!(
        apps[HOST_APP],
        json!({"releases": {RELEASE: {"update_status": "aborted", "services": {"hostapp":
            {"image": format!("{}/helios-test/hostos", infra.registry), "status": "Installing"}}}}})
    );
    assert_eq!(
        apps[USER_APP]["releases"]["rel-u1"]["update_status"],
        "done"
    );

    let logs = agent.logs();
    assert!(
        logs.iter().any(|l| l.contains("decision=install")
            && l.contains("attempt=1")
            && l.contains(RELEASE)),
        "the install is a logged decision"
    );
    let (containers, images) = engine_names(infra).await;
    assert_engine_clean_of_the_updater(&containers, &images);

    // A restart does not install again: the breadcrumb says installed.
    drop(agent);
    let agent = s.start_agent(infra);
    agent.wait_status("aborted", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(transient_calls(&systemd).len(), 1, "no second install");
    assert_eq!(host_release(&agent)["status"], "installed");
    drop(agent);
    empty_engine(&docker(infra).await).await;
}

#[tokio::test]
async fn a_failing_updater_is_tried_three_times_then_given_up() {
    let Some(infra) = infra("engine::hup") else {
        return;
    };
    let systemd = FakeSystemd::start(&infra.dbus_address);
    let s = setup(infra, Some("1")).await;
    let agent = s.start_agent(infra);

    let three = eventually(Duration::from_secs(120), || {
        (transient_calls(&systemd).len() >= 3).then_some(())
    });
    assert!(
        three.is_some(),
        "three attempts: {:?}",
        transient_calls(&systemd)
    );
    agent.wait_status("aborted", Duration::from_secs(60));
    agent
        .wait_log(|l| l.contains("decision=give_up"), Duration::from_secs(10))
        .expect("giving up is a logged decision");
    // Many retry intervals later: still three, no breadcrumb.
    std::thread::sleep(Duration::from_secs(4));
    let calls = transient_calls(&systemd);
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| c.argv == expected_argv(&s)));
    assert_eq!(
        s.updater_runs().len(),
        3,
        "the updater really ran three times"
    );
    assert!(!s.breadcrumb().exists(), "no breadcrumb after failures");
    assert_eq!(agent.get("/v3/status").json()["status"], "aborted");
    let rel = host_release(&agent);
    assert_eq!(
        (rel["status"].clone(), rel["install_attempts"].clone()),
        (json!("created"), json!(3))
    );
    let apps = eventually(Duration::from_secs(30), || reported_aborted(&s))
        .expect("a report with the host release aborted");
    assert_eq!(
        apps[HOST_APP]["releases"][RELEASE]["services"]["hostapp"]["status"],
        "Installing"
    );
    let logs = agent.logs();
    let retries = logs
        .iter()
        .filter(|l| l.contains("Host OS update failed") && l.contains("decision=retry"))
        .count();
    assert_eq!(retries, 2, "two failures retried, the third one not");

    // The attempts are stored: a restart does not try again.
    drop(agent);
    let agent = s.start_agent(infra);
    agent.wait_status("aborted", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        transient_calls(&systemd).len(),
        3,
        "no fourth attempt after a restart"
    );
    drop(agent);
    empty_engine(&docker(infra).await).await;
}

#[tokio::test]
async fn without_systemd_the_install_waits_and_a_bus_lost_mid_run_is_retried() {
    let Some(infra) = infra("engine::hup") else {
        return;
    };
    let s = setup(infra, None).await;
    let agent = s.start_agent(infra);

    let wait = agent
        .wait_log(
            |l| l.contains("decision=wait") && l.contains("systemd1"),
            Duration::from_secs(90),
        )
        .expect("waiting for systemd is a logged decision");
    assert!(wait.contains(RELEASE), "{wait}");
    // Several retry intervals: the API answers, nothing is counted, the apply is not over.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.get("/ping").status, 200);
    assert_eq!(agent.get("/v3/status").json()["status"], "applying changes");
    let rel = host_release(&agent);
    assert_eq!(
        (rel["status"].clone(), rel["install_attempts"].clone()),
        (json!("created"), json!(0))
    );
    assert!(!s.breadcrumb().exists());
    let waits = agent
        .logs()
        .iter()
        .filter(|l| l.contains("Host OS update waits"))
        .count();
    assert_eq!(
        waits, 1,
        "the wait is logged once at WARN, repeats at DEBUG"
    );

    // systemd appears: the next look finds it and the update starts; systemd goes away while
    // the updater runs: a failed attempt, logged, retried, and the API keeps answering.
    std::fs::write(s.run_dir().join("hup-sleep"), "3").unwrap();
    let systemd = FakeSystemd::start(&infra.dbus_address);
    let started = eventually(Duration::from_secs(90), || {
        (!transient_calls(&systemd).is_empty()).then_some(())
    });
    assert!(
        started.is_some(),
        "the install starts once systemd is there"
    );
    drop(systemd);
    let failed = agent
        .wait_log(
            |l| l.contains("Host OS update failed") && l.contains("decision=retry"),
            Duration::from_secs(30),
        )
        .expect("the bus going away mid-call is a logged, retried failure");
    assert!(failed.contains("attempt=1"), "{failed}");
    assert_eq!(agent.get("/ping").status, 200);
    assert_eq!(agent.get("/v3/status").json()["status"], "applying changes");
    assert!(!s.breadcrumb().exists());

    // systemd is back: the second attempt succeeds.
    std::fs::remove_file(s.run_dir().join("hup-sleep")).unwrap();
    let systemd = FakeSystemd::start(&infra.dbus_address);
    let crumb = eventually(Duration::from_secs(120), || {
        s.breadcrumb().exists().then_some(())
    });
    assert!(crumb.is_some(), "installed once systemd is back");
    agent.wait_status("aborted", Duration::from_secs(60));
    assert_eq!(transient_calls(&systemd).len(), 1);
    assert_eq!(host_release(&agent)["install_attempts"], 2);
    assert!(
        agent.logs().iter().all(|l| !l.contains("decision=restart")),
        "no actor died"
    );
    drop(agent);
    empty_engine(&docker(infra).await).await;
}

#[tokio::test]
async fn a_remote_target_without_hostapp_ends_aborted_and_a_local_apply_done() {
    let Some(infra) = infra("engine::hup") else {
        return;
    };
    let s = setup(infra, None).await;
    // The same fleet app, no hostapp: the device keeps its OS (spec §4.3).
    let mut target = s.cloud_target();
    target["apps"].as_object_mut().unwrap().remove(HOST_APP);
    s.cloud.set_target(UUID, target);
    let agent = s.start_agent(infra);
    agent.wait_status("aborted", Duration::from_secs(90));
    let apps = eventually(Duration::from_secs(30), || {
        let apps = s.last_apps()?;
        (apps[USER_APP]["releases"]["rel-u1"]["update_status"] == "done").then_some(apps)
    })
    .expect("the user app is done although the apply ends aborted");
    assert!(apps.get(HOST_APP).is_none());
    assert_eq!(
        agent.get("/v3/device").json()["host"],
        json!({"meta": {"name": "balenaOS", "version": "6.0.39", "build": "test-board-rev-000"},
            "releases": {}})
    );
    agent
        .wait_log(
            |l| l.contains("decision=skip") && l.contains("has no hostapp"),
            Duration::from_secs(5),
        )
        .expect("a logged decision");

    // A local apply leaves the host OS alone and ends done.
    let app = json!({"id": 9, "name": "local", "releases": {"r1": {"services": {"main": {
        "id": 1, "image": infra.image_a, "composition": {"command": "sleep infinity"}}}}}});
    let r = agent.post_json("/v3/device/apps/hup-local-app", &app.to_string());
    assert_eq!(r.status, 202, "{}", r.body);
    agent.wait_status("done", Duration::from_secs(90));
    drop(agent);
    empty_engine(&docker(infra).await).await;
}
