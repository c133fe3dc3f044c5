//! Faults under a real engine: a bad release is given up after `seek.max_attempts` failures
//! (the previous release keeps running, the report and `/v3/status` say `aborted`, also after
//! a restart), and tried again only when the target changes or a forced `/v1/update` asks;
//! the engine lost mid-apply and a pull cut halfway are waited for and retried without giving
//! up; a full state disk refuses new targets clearly while the apps keep running; a corrupt
//! store is rebuilt from the engine. `GET /metrics` is checked against the log and the report
//! after the bad release.
//!
//! What each pins down:
//! - **Engine lost** (its socket removed and open connections reset, as when dockerd stops):
//!   Seek's event stream breaks, it restarts and waits with backoff
//!   (`capability=engine decision=wait`); the failed attempt is transient, so the target is
//!   kept (`applying changes`), not counted, never given up, and the apply converges once the
//!   engine is back.
//! - **Pull cut halfway** (a TCP relay in front of the registry): the pull fails after the
//!   engine's own retries, the image is neither recorded nor shown present, and the retry
//!   pulls it again without counting the failure.
//! - **Full state disk** (a small tmpfs): a new target is refused with 503
//!   `target could not be stored` and `decision=reject`, running apps and the status are
//!   untouched, and once space returns the same POST is stored, applied and survives a
//!   restart (the store checks the free space before writing, because sled 0.34 wedges after
//!   an ENOSPC).
//! - **Corrupt store** (its log overwritten while helios is down): moved aside
//!   (`decision=move-aside`), rebuilt from the engine with the same containers running,
//!   opened as is on the next start (no crash loop); also with the store dir a mount point,
//!   whose contents move into `corrupt-<secs>` inside it.
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use serde_json::{json, Value};

use crate::support::agent::{eventually, field, Agent, AgentOpts};
use crate::support::fake_cloud::FakeCloud;
use crate::support::infra::{docker, empty_engine, infra, running, Infra};
use crate::support::relay::Relay;
use crate::support::tcp_relay::TcpRelay;

const UUID: &str = "faults-device-1";
const APP: &str = "faults-app-1";
const KEY: &str = "faultsapikey";

fn device_target(image: &str, release: &str) -> Value {
    json!({"name": "faults-device", "config": {}, "apps": {APP: {"id": 91, "name": "faults-fleet",
        "class": "fleet", "releases": {release: {"id": 1, "services": {"main": {"id": 9,
        "image_id": 10, "image": image, "environment": {}, "labels": {},
        "composition": {"command": "sleep infinity", "stop_grace_period": "1s"}}}}}}}})
}

fn release_status(cloud: &FakeCloud, release: &str) -> Option<String> {
    cloud.reports().iter().rev().find_map(|r| {
        r[UUID].get("apps")?[APP]["releases"][release]["update_status"]
            .as_str()
            .map(str::to_string)
    })
}

fn update(agent: &Agent, body: &str) {
    let r = agent.post_json(&format!("/v1/update?apikey={KEY}"), body);
    assert!(matches!(r.status, 202 | 204), "{r:?}");
}

fn count(agent: &Agent, needle: &str) -> usize {
    agent.logs().iter().filter(|l| l.contains(needle)).count()
}

/// Waits for the next `decision=give_up` line after `mark` and returns its `attempts`.
fn wait_give_up(agent: &Agent, mark: usize) -> String {
    let line = agent
        .wait_log_after(
            mark,
            |l| l.contains("decision=give_up"),
            Duration::from_secs(60),
        )
        .expect("the bad release is given up");
    assert!(line.contains("error="), "the reason is logged: {line}");
    field(&line, "attempts").unwrap()
}

/// The value of one series (`name{labels}` exactly as exposed) in `GET /metrics`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `GET /metrics` after rel-1 was installed and rel-2 given up: its counters agree with the
/// log and the report (one installed release, failed applies, failed pulls, polls, reports).
fn metrics_tell_the_same_story(agent: &Agent) {
    let r = agent.get("/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{r:?}"
    );
    let t = &r.body;
    let get = |series: &str| metric(t, series).unwrap_or_else(|| panic!("no {series} in\n{t}"));
    assert!(get("helios_applies_total{result=\"done\"}") >= 1.0, "{t}");
    let failed = get("helios_applies_total{result=\"failed\"}");
    assert!(failed >= 3.0, "three failed attempts at least:\n{t}");
    let counted = get("helios_applies_total{result=\"done\"}")
        + failed
        + get("helios_applies_total{result=\"no_plan\"}")
        + get("helios_applies_total{result=\"interrupted\"}");
    assert_eq!(get("helios_apply_duration_seconds_count"), counted, "{t}");
    assert_eq!(
        get("helios_apply_duration_seconds_bucket{le=\"+Inf\"}"),
        counted
    );
    let pulls_failed = agent
        .logs()
        .iter()
        .filter(|l| l.contains("Step failed") && l.contains("step=pull"))
        .count();
    assert!(pulls_failed >= 3);
    assert_eq!(
        get("helios_step_failures_total{step=\"pull\"}"),
        pulls_failed as f64,
        "one count per failed pull line"
    );
    assert!(get("helios_polls_total{result=\"new\"}") >= 2.0, "{t}");
    assert!(get("helios_poll_last_success_timestamp_seconds") > 1.7e9);
    assert!(get("helios_reports_total{endpoint=\"state\",result=\"sent\"}") >= 1.0);
    assert_eq!(get("helios_update_status{status=\"aborted\"}"), 1.0);
    assert_eq!(
        get(&format!(
            "helios_release_services{{app_uuid=\"{APP}\",app_name=\"faults-fleet\",release_uuid=\"rel-1\"}}"
        )),
        1.0,
        "rel-1's one container runs:\n{t}"
    );
    assert_eq!(
        get(&format!(
            "helios_target_release_info{{app_uuid=\"{APP}\",release_uuid=\"rel-2\"}}"
        )),
        1.0
    );
    assert!(get("process_resident_memory_bytes") > 1e6);
    assert!(get("helios_store_size_bytes") > 0.0);
    assert!(t.contains("helios_build_info{version=\""));
}

fn bad_image(infra: &Infra) -> String {
    format!("{}/helios-test/does-not-exist:1", infra.registry)
}

#[tokio::test]
async fn a_bad_release_is_given_up_and_retried_only_on_change_or_force() {
    let Some(infra) = infra("engine::faults") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let cloud = FakeCloud::start();
    cloud.add_device(UUID, "device-key", 42);
    cloud.set_target(UUID, device_target(&infra.image_a, "rel-1"));
    let home = tempfile::tempdir().unwrap();
    let mut opts = AgentOpts::new(home.path())
        .env("DOCKER_HOST", infra.docker_host.clone())
        .env("HELIOS_REMOTE_REPORT_MIN_INTERVAL_MS", "200")
        .env("HELIOS_REMOTE_POLL_MIN_INTERVAL_MS", "200")
        .env("HELIOS_REMOTE_POLL_MAX_JITTER_MS", "0")
        .env("HELIOS_LOCAL_RETRY_INTERVAL_MS", "300");
    for a in [
        "--uuid",
        UUID,
        "--remote-api-endpoint",
        &cloud.url,
        "--remote-api-key",
        "device-key",
        "--remote-poll-interval-ms",
        "600000",
        "--device-api-key",
        KEY,
        "--max-apply-attempts",
        "3",
    ] {
        opts = opts.arg(a);
    }
    let mut agent = Agent::start(opts.clone());
    let done = eventually(Duration::from_secs(90), || {
        (release_status(&cloud, "rel-1").as_deref() == Some("done")).then_some(())
    });
    assert!(done.is_some(), "rel-1 is installed and reported done");

    // A release whose image does not exist: every attempt fails at the pull.
    cloud.set_target(UUID, device_target(&bad_image(infra), "rel-2"));
    let mark = agent.logs().len();
    update(&agent, "");
    assert_eq!(wait_give_up(&agent, mark), "3");
    assert_eq!(
        agent.logs()[mark..]
            .iter()
            .filter(|l| l.contains("decision=apply "))
            .count(),
        3,
        "exactly max_attempts attempts"
    );
    agent.wait_status("aborted", Duration::from_secs(5));
    assert!(running(&d, "main_rel-1").await, "rel-1 keeps running");
    let reported = eventually(Duration::from_secs(30), || {
        (release_status(&cloud, "rel-2").as_deref() == Some("aborted")).then_some(())
    });
    assert!(reported.is_some(), "the report says rel-2 aborted");
    let v1 = agent.get(&format!("/v1/device?apikey={KEY}")).json();
    assert_eq!(v1["update_failed"], true, "{v1}");
    metrics_tell_the_same_story(&agent);

    // A restart remembers the give-up (store key seek/given-up): no new attempts.
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).is_some());
    let agent = Agent::start(opts);
    agent
        .wait_log(
            |l| l.contains("Target not retried"),
            Duration::from_secs(30),
        )
        .expect("the stored give-up holds after a restart");
    agent.wait_status("aborted", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&agent, "decision=apply "),
        0,
        "no attempt after the restart"
    );

    // Asked again without force, with the same target: not retried.
    let mark = agent.logs().len();
    update(&agent, r#"{"force": false}"#);
    agent
        .wait_log_after(
            mark,
            |l| l.contains("decision=skip") && l.contains("given up"),
            Duration::from_secs(20),
        )
        .expect("an unforced update of the same target is skipped");
    // Several retry intervals later there is still no new attempt.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&agent, "decision=apply "), 0, "no new attempt");
    assert_eq!(agent.get("/v3/status").json()["status"], "aborted");

    // A forced update tries the same target again, max_attempts more times.
    let mark = agent.logs().len();
    update(&agent, r#"{"force": true}"#);
    assert_eq!(wait_give_up(&agent, mark), "3");
    assert!(running(&d, "main_rel-1").await, "rel-1 still runs");

    // A changed target is applied.
    cloud.set_target(UUID, device_target(&infra.image_b, "rel-3"));
    update(&agent, "");
    let done = eventually(Duration::from_secs(90), || {
        (release_status(&cloud, "rel-3").as_deref() == Some("done")).then_some(())
    });
    assert!(
        done.is_some(),
        "the next release is applied and reported done"
    );
    assert!(running(&d, "main_rel-3").await);
    assert_eq!(agent.get("/v3/status").json()["status"], "done");
    drop(agent);
    empty_engine(&d).await;
}

/// One app `app` with services `a` and `b` on `image`.
fn local_app(image: &str, release: &str) -> String {
    let svc = |id: u32| {
        json!({"id": id, "image": image, "composition": {"command": "sleep infinity",
            "stop_grace_period": "1s"}})
    };
    json!({"id": 92, "name": "faults", "releases": {release: {
        "services": {"a": svc(1), "b": svc(2)}}}})
    .to_string()
}

/// `local_app` with a 256 KiB environment variable in service `a`.
fn big_app(image: &str, release: &str) -> String {
    let mut app: Value = serde_json::from_str(&local_app(image, release)).unwrap();
    app["releases"][release]["services"]["a"]["environment"] =
        json!({"PAD": "p".repeat(256 * 1024)});
    app.to_string()
}

/// An unmanaged agent on the test engine that retries failed applies every 300 ms.
fn local_opts(infra: &Infra, home: &std::path::Path) -> AgentOpts {
    AgentOpts::new(home)
        .env("DOCKER_HOST", infra.docker_host.clone())
        .arg("--local-retry-interval-ms")
        .arg("300")
}

fn post_local(agent: &Agent, image: &str, release: &str) -> crate::support::agent::Response {
    agent.post_json(
        &format!("/v3/device/apps/{APP}"),
        &local_app(image, release),
    )
}

/// `/v3` says done, with exactly services `a` and `b` of `release` running.
fn wait_converged(agent: &Agent, release: &str) {
    let ok = eventually(Duration::from_secs(120), || {
        if agent.get("/v3/status").json()["status"] != "done" {
            return None;
        }
        let dev = agent.get("/v3/device").json();
        let rels = dev["apps"][APP]["releases"].as_object()?.clone();
        let svcs = rels.get(release)?["services"].as_object()?.clone();
        (rels.len() == 1
            && svcs.len() == 2
            && svcs.values().all(|s| s["oci"]["status"] == "running"))
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "{release} never converged: status {} device {}",
        agent.get("/v3/status").body,
        agent.get("/v3/device").body
    );
}

fn no_give_up(agent: &Agent) {
    assert!(
        !agent.logs().iter().any(|l| l.contains("decision=give_up")),
        "faults of the environment do not count toward max_attempts"
    );
}

/// The engine goes away in the middle of an apply (its socket disappears and open connections
/// are reset, as when dockerd stops): helios logs that it waits, keeps the target, does not give
/// it up, and converges once the engine is back.
#[tokio::test]
async fn an_engine_lost_mid_apply_is_waited_for_and_the_apply_converges() {
    let Some(infra) = infra("engine::faults") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let upstream = infra.docker_host.trim_start_matches("unix://").to_string();
    let sock = home.path().join("engine.sock");
    let relay = Relay::start(&sock, upstream.as_ref());
    let cfg = home.path().join("helios.toml");
    std::fs::write(
        &cfg,
        "[supervision]\nbackoff_initial_ms = 200\nbackoff_max_ms = 1000\n\
         [seek]\nlocal_retry_interval_ms = 300\nmax_attempts = 2\n",
    )
    .unwrap();
    let agent = Agent::start(
        AgentOpts::new(home.path())
            .arg("--config")
            .arg(cfg.to_str().unwrap())
            .env("DOCKER_HOST", format!("unix://{}", sock.display())),
    );
    assert_eq!(post_local(&agent, &infra.image_a, "rel-1").status, 202);
    agent
        .wait_log(
            |l| l.contains("step=pull") && l.contains("Step started"),
            Duration::from_secs(60),
        )
        .expect("the apply starts pulling");

    let mark = agent.logs().len();
    relay.cut();
    agent
        .wait_log_after(
            mark,
            |l| l.contains("capability=engine") && l.contains("decision=wait"),
            Duration::from_secs(30),
        )
        .expect("helios logs that it waits for the engine");
    // Several backoffs and retry intervals while the engine is away.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.get("/ping").status, 200);
    assert_eq!(
        agent.get("/v3/status").json()["status"],
        "applying changes",
        "the target is kept while the engine is away"
    );
    no_give_up(&agent);

    let _back = Relay::start(&sock, upstream.as_ref());
    wait_converged(&agent, "rel-1");
    no_give_up(&agent);
    assert!(running(&d, "a_rel-1").await && running(&d, "b_rel-1").await);
    drop(agent);
    empty_engine(&d).await;
}

/// helios dies (SIGKILL) on target, and starts again while the engine is away: `/v3/device`
/// answers at once with the apps it last knew, marked `unconfirmed`, and drops the mark once
/// the engine is back and has been read.
#[tokio::test]
async fn the_last_current_state_answers_at_once_after_a_crash_until_the_engine_confirms_it() {
    let Some(infra) = infra("engine::faults") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let upstream = infra.docker_host.trim_start_matches("unix://").to_string();
    let sock = home.path().join("engine.sock");
    let relay = Relay::start(&sock, upstream.as_ref());
    let opts =
        || AgentOpts::new(home.path()).env("DOCKER_HOST", format!("unix://{}", sock.display()));
    let mut agent = Agent::start(opts());
    assert_eq!(post_local(&agent, &infra.image_a, "rel-1").status, 202);
    wait_converged(&agent, "rel-1");
    let before = agent.get("/v3/device").json();
    assert!(before.get("unconfirmed").is_none(), "{before}");
    // The state is stored a second after it settles.
    std::thread::sleep(Duration::from_secs(3));
    agent.signal(libc::SIGKILL);
    agent
        .wait_exit(Duration::from_secs(10))
        .expect("helios died");
    drop(agent);

    relay.cut();
    let agent = Agent::start(opts());
    let dev = agent.get("/v3/device").json();
    assert_eq!(dev["unconfirmed"], true, "{dev}");
    let services = &dev["apps"][APP]["releases"]["rel-1"]["services"];
    assert_eq!(services["a"]["oci"]["status"], "running", "{dev}");
    assert_eq!(services["b"]["oci"]["status"], "running", "{dev}");
    assert!(agent.logs().iter().any(|l| l.contains("decision=restore")));

    let _back = Relay::start(&sock, upstream.as_ref());
    let confirmed = eventually(Duration::from_secs(60), || {
        let dev = agent.get("/v3/device").json();
        dev.get("unconfirmed").is_none().then_some(dev)
    })
    .expect("the mark goes once the engine is read");
    assert_eq!(
        confirmed["apps"][APP]["releases"]["rel-1"]["services"]["a"]["oci"]["status"],
        "running"
    );
    wait_converged(&agent, "rel-1");
    drop(agent);
    empty_engine(&d).await;
}

/// The registry connection drops halfway through a layer: the pull fails (after the engine's
/// own retries), the half-pulled image is not reported present, helios retries without giving
/// the release up, and the pull succeeds once the connection holds.
#[tokio::test]
async fn a_pull_cut_halfway_is_retried_and_never_reported_present() {
    let Some(infra) = infra("engine::faults") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let relay = TcpRelay::start(&infra.registry);
    // Manifests and the image config are a few KiB; the layer is far larger.
    relay.cut_after(64 * 1024);
    let image = format!("{}/helios-test/busybox:2", relay.addr);
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        local_opts(infra, home.path())
            .arg("--max-apply-attempts")
            .arg("1"),
    );
    assert_eq!(post_local(&agent, &image, "rel-1").status, 202);
    let failed = agent
        .wait_log(
            |l| l.contains("step=pull") && l.contains("Step failed"),
            Duration::from_secs(180),
        )
        .expect("the cut pull fails");
    assert!(relay.cuts() > 0, "the relay cut the download");
    assert!(failed.contains("error="), "{failed}");
    assert!(
        d.inspect_image(&image).await.is_err(),
        "no partial image on the engine"
    );
    let doc = agent.get("/v3/device").json();
    let img = &doc["images"][&image];
    assert!(
        img.is_null() || img["oci_id"].is_null() && img["download_progress"] != 100,
        "a partially pulled image is not reported present: {img}"
    );
    assert_eq!(agent.get("/v3/status").json()["status"], "applying changes");

    relay.pass();
    wait_converged(&agent, "rel-1");
    no_give_up(&agent);
    assert!(d.inspect_image(&image).await.is_ok());
    drop(agent);
    empty_engine(&d).await;
}

/// A small tmpfs mounted over a directory for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            ok.success(),
            "mounting a tmpfs on {} (needs root)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the filesystem with `filler` until a write fails with ENOSPC.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
        // Whatever a partial write left: the disk is full to the last byte.
        let _ = f.write_all(&[0u8; 512]);
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The state dir's filesystem fills up: a new target is refused with a clear 503 and a log line,
/// the running apps are untouched, and once space returns the next target is stored and applied.
#[tokio::test]
async fn a_full_state_disk_refuses_targets_clearly_and_recovers() {
    let Some(infra) = infra("engine::faults") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let opts = || local_opts(infra, home.path());
    let disk = Tmpfs::mount(&opts().state_dir(), "16m");
    let agent = Agent::start(opts());
    assert_eq!(post_local(&agent, &infra.image_a, "rel-1").status, 202);
    wait_converged(&agent, "rel-1");

    let filler = disk.fill();
    let mark = agent.logs().len();
    // A small write may still land in pages the store already holds; this target is large
    // enough to need new space.
    let big = big_app(&infra.image_b, "rel-2");
    let post_big = || agent.post_json(&format!("/v3/device/apps/{APP}"), &big);
    let r = post_big();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("could not be stored"), "{}", r.body);
    let line = agent
        .wait_log_after(
            mark,
            |l| l.contains("Local target not stored"),
            Duration::from_secs(5),
        )
        .expect("the refusal is logged");
    assert!(line.contains("no space left on device"), "{line}");
    // Nothing running changed, and the loop still says done.
    std::thread::sleep(Duration::from_secs(1));
    assert!(running(&d, "a_rel-1").await && running(&d, "b_rel-1").await);
    assert_eq!(agent.get("/v3/status").json()["status"], "done");
    assert_eq!(agent.get("/ping").status, 200);

    // Space returns: the same request now goes through and is applied.
    std::fs::remove_file(&filler).unwrap();
    let r = eventually(Duration::from_secs(30), || {
        let r = post_big();
        (r.status == 202).then_some(r)
    });
    assert!(r.is_some(), "targets are accepted again once space returns");
    wait_converged(&agent, "rel-2");
    no_give_up(&agent);

    // And the accepted target was stored: it survives a restart.
    drop(agent);
    let agent = Agent::start(opts());
    agent
        .wait_log(
            |l| l.contains("Stored target loaded"),
            Duration::from_secs(10),
        )
        .expect("the stored target is loaded");
    wait_converged(&agent, "rel-2");
    drop(agent);
    drop(disk);
    empty_engine(&d).await;
}

/// The store is damaged while the agent is down: at start it is moved aside and rebuilt from the
/// engine, the running app is left alone (same containers), and the next start neither moves it
/// again nor crash-loops; a new target is then applied as usual.
#[tokio::test]
async fn a_corrupt_store_is_rebuilt_from_the_engine_without_touching_the_apps() {
    corrupt_store_is_rebuilt(false).await;
}

/// The same with the store dir a mount point (a systemd `StateDirectory`, a container volume),
/// which cannot be renamed: its contents move into `corrupt-<secs>` inside it instead.
#[tokio::test]
async fn a_corrupt_store_on_a_mount_point_is_rebuilt_in_place() {
    corrupt_store_is_rebuilt(true).await;
}

async fn corrupt_store_is_rebuilt(on_mount_point: bool) {
    let Some(infra) = infra("engine::faults") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let opts = || local_opts(infra, home.path());
    let _mount = on_mount_point.then(|| Tmpfs::mount(&opts().state_dir(), "64m"));
    let mut agent = Agent::start(opts());
    assert_eq!(post_local(&agent, &infra.image_a, "rel-1").status, 202);
    wait_converged(&agent, "rel-1");
    agent.signal(libc::SIGTERM);
    assert_eq!(
        agent
            .wait_exit(Duration::from_secs(30))
            .and_then(|s| s.code()),
        Some(0)
    );
    drop(agent);
    let ids = |name: &'static str| {
        let d = d.clone();
        async move {
            d.inspect_container(name, None::<InspectContainerOptions>)
                .await
                .unwrap()
                .id
                .unwrap()
        }
    };
    let before = (ids("a_rel-1").await, ids("b_rel-1").await);

    // Garbage over the whole log, the config file left intact.
    let db = opts().state_dir().join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0xA5u8; len]).unwrap();

    let agent = Agent::start(opts());
    agent
        .wait_log(
            |l| l.contains("decision=move-aside"),
            Duration::from_secs(10),
        )
        .expect("the damaged store is moved aside");
    let seen = eventually(Duration::from_secs(30), || {
        let dev = agent.get("/v3/device").json();
        let svcs = dev["apps"][APP]["releases"]["rel-1"]["services"]
            .as_object()?
            .clone();
        (svcs.len() == 2 && svcs.values().all(|s| s["oci"]["status"] == "running")).then_some(())
    });
    assert!(seen.is_some(), "the app is read back from the engine");
    assert_eq!(
        (ids("a_rel-1").await, ids("b_rel-1").await),
        before,
        "the same containers keep running"
    );
    drop(agent);

    // No crash loop: the rebuilt store opens as it is.
    let agent = Agent::start(opts());
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !agent
            .logs()
            .iter()
            .any(|l| l.contains("decision=move-aside")),
        "the rebuilt store is not moved again"
    );
    let (place, prefix) = match on_mount_point {
        false => (opts().state_dir().parent().unwrap().to_owned(), ".corrupt-"),
        true => (opts().state_dir(), "corrupt-"),
    };
    let moved: Vec<_> = std::fs::read_dir(&place)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(prefix))
        .collect();
    assert_eq!(moved.len(), 1, "exactly one moved-aside store");
    assert!(
        moved[0].path().join("db").exists(),
        "the damaged files are kept"
    );
    assert_eq!(post_local(&agent, &infra.image_b, "rel-2").status, 202);
    wait_converged(&agent, "rel-2");
    drop(agent);
    empty_engine(&d).await;
}
