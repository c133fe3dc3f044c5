//! Crash consistency: the real binary is SIGKILLed at many points of an update of a
//! multi-service release (image pulls, a volume holding data, a network added and one removed,
//! a service removed, one added, a hand-over service), started again on the same store and
//! engine, and must converge to exactly what an uninterrupted update leaves: one container per
//! service, no orphaned containers, networks or images, the volume's data intact, the stored
//! target unchanged, and `/v3` reporting the release done and running.
//!
//! Points: "after step k" (the k-th `Step finished` decision line of the update) for the steps of
//! the plan in turn, then seeded random points (`delay` ms after the k-th `Step started`, so
//! inside a pull, a stop, a hand-over wait). `HELIOS_CRASH_POINTS` (default 6) and
//! `HELIOS_CRASH_SEED` (default 1) choose them; `scripts/crash` runs a long campaign.
//!
//! What this pins down is the apply loop's crash consistency (actors/seek/mod.rs): every step
//! is idempotent against what a SIGKILL leaves, because each start plans again from the
//! engine. A second test pins down the crash-loop guard (actors/ports/unfinished.rs): a target
//! whose planning marker says two processes died planning it is given up at the next start
//! without planning (`decision=give_up`, status `aborted`, what runs left alone), the marker
//! stays for later starts, and a new target is planned and applied as usual.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    ListNetworksOptions, ListVolumesOptions,
};
use bollard::Docker;
use serde_json::{json, Value};

use crate::support::agent::{eventually, field, Agent, AgentOpts};
use crate::support::infra::{docker, empty_engine, exec, infra, running, Infra};

const APP: &str = "crash-app";

/// A fast-stopping long-running command (PID 1 of a plain `sleep` ignores SIGTERM).
const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

fn service(image: &str, id: u32, extra: Value) -> Value {
    let mut s = json!({"id": id, "image": image,
        "composition": {"command": ["sh", "-c", IDLE], "stop_grace_period": "1s"}});
    for (k, v) in extra.as_object().unwrap() {
        if k == "labels" {
            s["labels"] = v.clone();
        } else {
            s["composition"][k] = v.clone();
        }
    }
    s
}

/// r1: `db` (volume), `web` (hand-over), `old` (on network `legacy`), all on image A.
/// r2: `db` and `web` on image B (pulled), `old` and `legacy` gone, `extra` new on `front`.
fn release(infra: &Infra, rel: &str) -> Value {
    let handover = json!({"io.balena.update.strategy": "hand-over",
                          "io.balena.update.handover-timeout": "3000"});
    let web_cmd = format!("touch /tmp/balena/handover-complete; {IDLE}");
    let (services, networks) = if rel == "r1" {
        (
            json!({
                "db": service(&infra.image_a, 1, json!({"volumes": ["data:/data"], "networks": ["back"]})),
                "web": service(&infra.image_a, 2, json!({"labels": handover, "networks": ["back"],
                    "command": ["sh", "-c", web_cmd]})),
                "old": service(&infra.image_a, 3, json!({"networks": ["legacy"]})),
            }),
            json!({"back": {}, "legacy": {}}),
        )
    } else {
        (
            json!({
                "db": service(&infra.image_b, 1, json!({"volumes": ["data:/data"], "networks": ["back"]})),
                "web": service(&infra.image_b, 2, json!({"labels": handover, "networks": ["back", "front"],
                    "command": ["sh", "-c", web_cmd]})),
                "extra": service(&infra.image_b, 4, json!({"networks": ["front"], "depends_on": ["db"]})),
            }),
            json!({"back": {}, "front": {}}),
        )
    };
    json!({"id": 5, "name": "crash", "releases": {rel: {
        "services": services, "networks": networks, "volumes": {"data": {}}}}})
}

fn agent(infra: &Infra, home: &std::path::Path) -> Agent {
    Agent::start(
        AgentOpts::new(home)
            .env("DOCKER_HOST", infra.docker_host.clone())
            .arg("--uuid")
            .arg("crash-device")
            .arg("--local-retry-interval-ms")
            .arg("500"),
    )
}

/// Where the agent is killed during the update to r2.
#[derive(Debug, Clone, Copy)]
enum Point {
    /// Right after the k-th step finished (0: right after the plan is logged).
    AfterStep(usize),
    /// `delay_ms` after the k-th step started.
    During { step: usize, delay_ms: u64 },
}

/// What the engine holds, by name.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// container name → (service label, running)
    containers: BTreeMap<String, (String, bool)>,
    networks: BTreeSet<String>,
    volumes: BTreeSet<String>,
    images: BTreeSet<String>,
}

async fn snapshot(d: &Docker) -> Snapshot {
    let containers = d
        .list_containers(Some(
            ListContainersOptionsBuilder::default().all(true).build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let name = c.names.clone().unwrap_or_default()[0]
                .trim_start_matches('/')
                .to_string();
            let svc = c
                .labels
                .as_ref()
                .and_then(|l| l.get("io.balena.service-name").cloned())
                .unwrap_or_default();
            let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
            (name, (svc, running))
        })
        .collect();
    let networks = d
        .list_networks(None::<ListNetworksOptions>)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|n| n.name)
        .filter(|n| !["bridge", "host", "none"].contains(&n.as_str()))
        .collect();
    let volumes = d
        .list_volumes(None::<ListVolumesOptions>)
        .await
        .unwrap()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    let images = d
        .list_images(Some(ListImagesOptionsBuilder::default().all(true).build()))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
    Snapshot {
        containers,
        networks,
        volumes,
        images,
    }
}

/// The end state of one run, to compare with the uninterrupted update.
struct End {
    /// `Step finished` lines of the update (meaningful for the uninterrupted run).
    steps: usize,
    engine: Snapshot,
    stored_target: Value,
}

fn lines_after(agent: &Agent, mark: usize, needle: &str) -> usize {
    agent
        .logs()
        .iter()
        .skip(mark)
        .filter(|l| l.contains(needle))
        .count()
}

/// Waits (polling every 2 ms) until `n` lines after `mark` contain `needle`, or the update is
/// done. Returns whether the count was reached.
fn wait_lines(agent: &Agent, mark: usize, needle: &str, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if lines_after(agent, mark, needle) >= n {
            return true;
        }
        if lines_after(agent, mark, "Target reached") > 0 {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("the update to r2 neither reached {n}× {needle:?} nor finished");
}

/// One run: install r1 and write data into its volume, start the update to r2, kill the agent
/// at `point` (none: let it finish), start it again, wait for convergence and check it.
async fn run(infra: &Infra, d: &Docker, point: Option<Point>) -> End {
    empty_engine(d).await;
    let home = tempfile::tempdir().unwrap();
    let path = format!("/v3/device/apps/{APP}");
    let first = agent(infra, home.path());
    let r = first.post_json(&path, &release(infra, "r1").to_string());
    assert_eq!(r.status, 202, "{}", r.body);
    first.wait_status("done", Duration::from_secs(120));
    let token = format!(
        "data-{}",
        std::process::id() as u64 * 1000 + rand_u16() as u64
    );
    exec(
        d,
        "db_r1",
        &["sh", "-c", &format!("echo {token} > /data/keep && sync")],
    )
    .await;

    let mark = first.logs().len();
    let r = first.post_json(&path, &release(infra, "r2").to_string());
    assert_eq!(r.status, 202, "{}", r.body);
    first
        .wait_log_after(
            mark,
            |l| l.contains("Plan computed"),
            Duration::from_secs(60),
        )
        .expect("the update is planned");
    let agent = match point {
        None => {
            first
                .wait_log_after(
                    mark,
                    |l| l.contains("Target reached"),
                    Duration::from_secs(120),
                )
                .expect("the uninterrupted update finishes");
            first
        }
        Some(p) => {
            match p {
                Point::AfterStep(k) => {
                    wait_lines(&first, mark, "Step finished", k);
                }
                Point::During { step, delay_ms } => {
                    if wait_lines(&first, mark, "Step started", step) {
                        std::thread::sleep(Duration::from_millis(delay_ms));
                    }
                }
            }
            first.signal(libc::SIGKILL);
            drop(first);
            agent(infra, home.path())
        }
    };

    // Converged: status done, one release, every service running, per /v3.
    let services = ["db", "extra", "web"];
    let ok = eventually(Duration::from_secs(120), || {
        if agent.get("/v3/status").json()["status"] != "done" {
            return None;
        }
        let dev = agent.get("/v3/device").json();
        let rels = dev["apps"][APP]["releases"].as_object()?.clone();
        let names: Vec<_> = rels.keys().cloned().collect();
        let svcs = rels.get("r2")?["services"].as_object()?.clone();
        let mut got: Vec<_> = svcs.keys().cloned().collect();
        got.sort();
        (names == ["r2"]
            && got == services
            && svcs.values().all(|s| s["oci"]["status"] == "running"))
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "{point:?}: no convergence; status {} device {}",
        agent.get("/v3/status").body,
        agent.get("/v3/device").body
    );

    // Steps with effects (those that log `Step finished`) of an uninterrupted update.
    let steps = lines_after(&agent, mark, "Step finished");
    let engine = snapshot(d).await;
    let mut per_service: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, (svc, running)) in &engine.containers {
        assert!(*running, "{point:?}: {name} is not running");
        *per_service.entry(svc.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_service,
        services.iter().map(|s| (*s, 1)).collect(),
        "{point:?}: exactly one container per service: {:?}",
        engine.containers
    );
    let kept = exec(d, "db_r2", &["cat", "/data/keep"]).await;
    assert_eq!(kept.trim(), token, "{point:?}: the volume's data is intact");

    // Stop it cleanly and read the stored target.
    let mut agent = agent;
    agent.signal(libc::SIGTERM);
    assert_eq!(
        agent
            .wait_exit(Duration::from_secs(30))
            .and_then(|s| s.code()),
        Some(0)
    );
    let (store, _) =
        helios_actors::ports::store::Store::open(&AgentOpts::new(home.path()).state_dir(), 1 << 20)
            .unwrap();
    let stored_target = store.get_target().unwrap().expect("a stored target").target;
    End {
        steps,
        engine,
        stored_target,
    }
}

/// A few random bits for the volume token (not the campaign's randomness).
fn rand_u16() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

/// splitmix64: the campaign is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `count` points over an update of `steps` steps: after each step in turn (0..steps) when the
/// count allows it (else evenly spread, with at least half of the points random), then random
/// points inside steps.
fn points(steps: usize, count: usize, seed: u64) -> Vec<Point> {
    let after = if count > steps {
        steps
    } else {
        count.div_ceil(2).min(steps)
    };
    let mut out: Vec<Point> = (0..after)
        .map(|i| Point::AfterStep(i * steps / after.max(1)))
        .collect();
    let mut rng = Rng(seed);
    while out.len() < count {
        out.push(Point::During {
            step: 1 + rng.below(steps as u64) as usize,
            delay_ms: rng.below(1500),
        });
    }
    out
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("{key}={v:?} is not a number: {e}"))
        })
        .unwrap_or(default)
}

#[test]
fn sigkill_at_any_point_of_an_update_converges() {
    let Some(infra) = infra("engine::crash") else {
        return;
    };
    let count = env_num("HELIOS_CRASH_POINTS", 6) as usize;
    let seed = env_num("HELIOS_CRASH_SEED", 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = rt.block_on(docker(infra));

    let reference = rt.block_on(run(infra, &d, None));
    assert_eq!(
        reference.engine.containers.keys().collect::<Vec<_>>(),
        ["db_r2", "extra_r2", "web_r2"]
    );
    assert_eq!(
        reference.engine.networks,
        BTreeSet::from(["back_crash-app".into(), "front_crash-app".into()]),
        "the removed network is gone"
    );
    assert_eq!(
        reference.engine.images,
        BTreeSet::from([infra.image_b.clone()]),
        "image A is removed once unused"
    );

    let plan = points(reference.steps, count, seed);
    let mut failed = vec![];
    for (i, p) in plan.iter().enumerate() {
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let end = rt.block_on(run(infra, &d, Some(*p)));
            assert_eq!(end.engine, reference.engine, "{p:?}: engine differs");
            assert_eq!(
                end.stored_target, reference.stored_target,
                "{p:?}: stored target changed"
            );
        }));
        let verdict = if result.is_ok() { "pass" } else { "FAIL" };
        eprintln!(
            "crash point {}/{} {p:?}: {verdict} ({} ms)",
            i + 1,
            plan.len(),
            started.elapsed().as_millis()
        );
        if result.is_err() {
            failed.push(*p);
        }
    }
    rt.block_on(empty_engine(&d));
    eprintln!(
        "crash campaign: seed={seed} steps={} points tried={} passed={} failed={failed:?}",
        reference.steps,
        plan.len(),
        plan.len() - failed.len()
    );
    assert!(failed.is_empty(), "crash points failed: {failed:?}");
}

/// What an aborting release build leaves when planning a target panics: the planning marker
/// (`<runtime dir>/helios-planning`) of the processes that died in it. After two such deaths
/// the next start gives the target up without planning it (no crash loop), leaving what runs
/// alone; a new target is planned and applied.
#[tokio::test]
async fn a_target_whose_planning_killed_helios_twice_is_given_up() {
    let Some(infra) = infra("engine::crash") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    let home = tempfile::tempdir().unwrap();
    let app = |rel: &str| {
        json!({"id": 6, "name": "planning", "releases": {rel: {"services": {
            "main": service(&infra.image_a, 1, json!({}))}}}})
        .to_string()
    };
    let mut first = agent(infra, home.path());
    let r = first.post_json("/v3/device/apps/plan-app", &app("p1"));
    assert_eq!(r.status, 202, "{r:?}");
    let line = first
        .wait_log(|l| l.contains("Plan computed"), Duration::from_secs(60))
        .expect("p1 is planned");
    let digest = field(&line, "digest").expect("the plan line names the target's digest");
    first.wait_status("done", Duration::from_secs(60));
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(30)).is_some());
    let marker = home.path().join("run").join("helios-planning");
    assert!(!marker.exists(), "a planning that ended leaves no marker");

    std::fs::write(&marker, format!("2 {digest}\n")).unwrap();
    let second = agent(infra, home.path());
    let line = second
        .wait_log(|l| l.contains("decision=give_up"), Duration::from_secs(60))
        .expect("the target is given up");
    assert!(
        line.contains("2 earlier processes died while planning this target"),
        "{line}"
    );
    second.wait_status("aborted", Duration::from_secs(10));
    assert!(
        !second.logs().iter().any(|l| l.contains("Plan computed")),
        "nothing was planned"
    );
    assert!(running(&d, "main_p1").await, "what runs is left alone");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        format!("2 {digest}\n"),
        "the refusal keeps the marker for later starts"
    );

    let r = second.post_json("/v3/device/apps/plan-app", &app("p2"));
    assert_eq!(r.status, 202, "{r:?}");
    second.wait_status("done", Duration::from_secs(60));
    assert!(running(&d, "main_p2").await, "a new target is applied");
    assert!(!marker.exists(), "its planning ended: no marker");
    drop(second);
    empty_engine(&d).await;
}

/// Converting a fetched cloud document runs under its own marker
/// (`<runtime dir>/helios-converting`, keyed by the document's digest). A document whose
/// conversion killed two processes (a port range expanded without bound did, issue #14) is
/// given up on the next start without being converted: rejected, the previous release keeps
/// running, and a new document is converted and applied.
#[tokio::test]
async fn a_cloud_document_whose_conversion_killed_helios_twice_is_given_up() {
    use crate::support::fake_cloud::FakeCloud;
    let Some(infra) = infra("engine::crash") else {
        return;
    };
    let d = docker(infra).await;
    empty_engine(&d).await;
    const UUID: &str = "converting-device";
    let cloud = FakeCloud::start();
    cloud.add_device(UUID, "device-key", 42);
    let target = |rel: &str| {
        json!({"name": "converting", "config": {}, "apps": {"conv-app": {
            "id": 7, "name": "conv", "class": "fleet", "releases": {rel: {"id": 1, "services": {
                "main": service(&infra.image_a, 1, json!({}))}}}}}})
    };
    cloud.set_target(UUID, target("c1"));
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path())
        .env("DOCKER_HOST", infra.docker_host.clone())
        .env("HELIOS_REMOTE_POLL_MIN_INTERVAL_MS", "200")
        .env("HELIOS_REMOTE_POLL_MAX_JITTER_MS", "0")
        .arg("--uuid")
        .arg(UUID)
        .arg("--remote-api-endpoint")
        .arg(cloud.url.clone())
        .arg("--remote-api-key")
        .arg("device-key")
        .arg("--remote-poll-interval-ms")
        .arg("1000");
    let mut first = Agent::start(opts.clone());
    // "done" is also the status before the first poll: wait for the release itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !running(&d, "main_c1").await {
        assert!(
            std::time::Instant::now() < deadline,
            "c1 never ran: {}",
            first.get("/v3/status").body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.wait_status("done", Duration::from_secs(90));
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(30)).is_some());
    let marker = home.path().join("run").join("helios-converting");
    assert!(!marker.exists(), "a conversion that ended leaves no marker");

    // What two processes that died converting c2 leave behind.
    cloud.set_target(UUID, target("c2"));
    let digest = helios_actors::ports::unfinished::digest(&json!({ UUID: target("c2") }));
    std::fs::write(&marker, format!("2 {digest:016x}\n")).unwrap();
    let second = Agent::start(opts);
    let line = second
        .wait_log(
            |l| l.contains("decision=give_up") && l.contains("converting"),
            Duration::from_secs(60),
        )
        .expect("the document is given up");
    assert!(
        line.contains("2 earlier processes died while converting this document"),
        "{line}"
    );
    // Rejected like an unusable document (the status says so unless the start-up apply of
    // the stored target is still running).
    second
        .wait_log(
            |l| l.contains("Remote target rejected, nothing changes") && l.contains("converting"),
            Duration::from_secs(10),
        )
        .expect("Seek is told the document is rejected");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !second.logs().iter().any(|l| l.contains("main_c2")),
        "c2 was not planned"
    );
    assert!(
        d.inspect_container("main_c2", None::<InspectContainerOptions>)
            .await
            .is_err(),
        "nothing of c2 was created"
    );
    assert!(running(&d, "main_c1").await, "what runs is left alone");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        format!("2 {digest:016x}\n"),
        "the refusal keeps the marker for later starts"
    );

    // A new document is converted and applied; its conversion ended: no marker.
    cloud.set_target(UUID, target("c3"));
    let ok = {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if running(&d, "main_c3").await {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(ok, "c3 is applied");
    assert!(!marker.exists(), "its conversion ended: no marker");
    drop(second);
    empty_engine(&d).await;
}
