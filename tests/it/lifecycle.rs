//! The agent as a process: starts unmanaged with no arguments, serves /ping and /v3, logs its
//! capabilities, keeps its identity, survives a corrupt store, and stops cleanly on SIGTERM.
use std::time::Duration;

use crate::support::agent::{eventually, field, http, Agent, AgentOpts};

#[test]
fn starts_unmanaged_serves_the_api_and_stops_on_sigterm() {
    let home = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(AgentOpts::new(home.path()));

    let ping = agent.get("/ping");
    assert_eq!((ping.status, ping.body.as_str()), (200, "OK"));
    let status = agent.get("/v3/status");
    assert_eq!(status.status, 200);
    assert_eq!(status.header("content-type"), Some("application/json"));
    assert_eq!(status.json(), serde_json::json!({"status": "done"}));
    let version = agent.get("/v3/version").json();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert!(version["git_commit"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert!(version["build_time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(agent.get("/nope").status, 404);

    // One line per capability, and the config path.
    for (cap, decision) in [
        ("engine", "wait"),
        ("dbus", "missing"),
        ("remote", "missing"),
        ("legacy_supervisor", "missing"),
        ("host_os", "found"),
        ("runtime_dir", "found"),
    ] {
        assert!(
            agent
                .wait_log(
                    |l| l.contains(&format!("capability={cap} "))
                        && l.contains(&format!("decision={decision}")),
                    Duration::from_secs(10)
                )
                .is_some(),
            "no capability line for {cap}"
        );
    }
    let caps = agent.get("/v3/capabilities").json();
    assert_eq!(caps["engine"], serde_json::Value::Null);
    assert_eq!(caps["remote"], "unmanaged");
    let cfg_line = agent
        .wait_log(|l| l.contains("Config file"), Duration::from_secs(1))
        .unwrap();
    let cfg = field(&cfg_line, "path").unwrap();
    let text = std::fs::read_to_string(&cfg).expect("generated identity saved");
    assert!(text.contains("uuid = "), "{text}");

    agent.signal(libc::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s of SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(agent.logs().iter().any(|l| l.contains("Store flushed")));
}

#[test]
fn keeps_its_identity_until_the_config_file_is_deleted() {
    let home = tempfile::tempdir().unwrap();
    let opts = || AgentOpts::new(home.path());
    let uuid_of = |a: &Agent| {
        let l = a.wait_log(|l| l.contains("Device identity"), Duration::from_secs(5));
        l.and_then(|l| field(&l, "uuid"))
    };
    let first = Agent::start(opts());
    let u1 = uuid_of(&first).expect("first start generates and saves a uuid");
    drop(first);
    let second = Agent::start(opts());
    let u2 = uuid_of(&second);
    assert_eq!(
        u2.as_deref(),
        Some(u1.as_str()),
        "second start keeps the uuid"
    );
    drop(second);
    std::fs::remove_file(opts().config_path()).unwrap();
    let third = Agent::start(opts());
    let u3 = uuid_of(&third).expect("a new uuid after the config file is gone");
    assert_ne!(u3, u1);
}

#[test]
fn default_address_is_loopback_48484() {
    // 48484 lies in Linux's ephemeral port range: a test opening thousands of connections
    // (tests/it/hostile_api.rs) can hold it for a moment as a client port. helios retries
    // such a bind for 10 s; a start that still fails is tried again, any other failure is final.
    for attempt in 1..=10 {
        let home = tempfile::tempdir().unwrap();
        let log = home.path().join("stderr.log");
        let mut child = crate::support::agent::helios_command(home.path())
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr = "127.0.0.1:48484".parse().unwrap();
        let ok = eventually(Duration::from_secs(60), || {
            if std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("API cannot listen") && l.contains("decision=exit"))
            {
                return Some(None);
            }
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| Some(http(addr, "GET", "/ping", None)))
        });
        let exited = child.try_wait().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        match ok {
            Some(Some(r)) => {
                assert_eq!((r.status, r.body.as_str()), (200, "OK"));
                return;
            }
            Some(None) if attempt < 10 => {
                eprintln!("attempt {attempt}: 127.0.0.1:48484 busy, trying again");
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => panic!("no answer on 127.0.0.1:48484 (exit: {exited:?}); log:\n{logs}"),
        }
    }
}

/// An API port held by someone else at start is retried (`decision=retry`) until it is free.
#[test]
fn a_busy_api_port_is_retried_until_it_is_free() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("stderr.log");
    let mut child = crate::support::agent::helios_command(home.path())
        .arg("--local-api-address")
        .arg(addr.to_string())
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let retried = eventually(Duration::from_secs(20), || {
        read()
            .lines()
            .any(|l| l.contains("decision=retry") && l.contains("address in use"))
            .then_some(())
    });
    assert!(retried.is_some(), "no retry logged:\n{}", read());
    assert!(
        child.try_wait().unwrap().is_none(),
        "helios waits for the port"
    );
    drop(holder);
    let answer = eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| http(addr, "GET", "/ping", None))
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let r = answer.unwrap_or_else(|| panic!("no answer once the port was free:\n{}", read()));
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
}

#[test]
fn a_corrupt_store_is_moved_aside_and_rebuilt() {
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path());
    let dir = opts.state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("conf"),
        b"\xff\xfegarbage that is not a sled config",
    )
    .unwrap();
    std::fs::write(dir.join("db"), vec![0xA5u8; 4096]).unwrap();

    let agent = Agent::start(opts);
    assert_eq!(agent.get("/ping").status, 200);
    let line = agent
        .wait_log(
            |l| l.contains("decision=move-aside"),
            Duration::from_secs(5),
        )
        .expect("logs that the store was moved aside");
    assert!(line.contains("reason="), "{line}");
    let parent = dir.parent().unwrap();
    let moved: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("helios.corrupt-")
        })
        .collect();
    assert_eq!(moved.len(), 1, "exactly one moved-aside store");
    assert_eq!(
        std::fs::read(moved[0].path().join("db")).unwrap(),
        vec![0xA5u8; 4096],
        "the bad store is kept, not deleted"
    );
}

#[test]
fn an_accepted_target_survives_sigkill() {
    let home = tempfile::tempdir().unwrap();
    let opts = || AgentOpts::new(home.path());
    let agent = Agent::start(opts());
    let body = r#"{"id": 7, "name": "kept", "releases": {}}"#;
    let r = agent.post_json("/v3/device/apps/app-kept", body);
    assert_eq!(r.status, 202, "{}", r.body);
    agent.signal(libc::SIGKILL);
    drop(agent);

    // Started again, the agent resumes the stored target...
    let agent = Agent::start(opts());
    agent
        .wait_log(
            |l| l.contains("Stored target loaded"),
            Duration::from_secs(10),
        )
        .expect("the stored target is loaded at start");
    agent.signal(libc::SIGTERM);
    drop(agent);

    // ...and the store holds exactly what was accepted.
    let (store, _) =
        helios_actors::ports::store::Store::open(&opts().state_dir(), 1 << 20).unwrap();
    let stored = store.get_target().unwrap().expect("a stored target");
    assert_eq!(stored.target["apps"]["app-kept"]["id"], 7);
    assert_eq!(stored.target["apps"]["app-kept"]["name"], "kept");
}

#[test]
fn plan_preview_lists_steps_with_reasons_and_runs_nothing() {
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentOpts::new(home.path()));
    let body = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.json"))
        .unwrap();
    let r = agent.post_json("/v3/device/apps/hello-app/plan", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let steps: Vec<String> = serde_json::from_value(r.json()["steps"].clone()).unwrap();
    let at = |needle: &str| {
        steps
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {steps:#?}"))
    };
    assert!(at("pull image 'busybox:1.36'") < at("create container 'web_hello-release-1'"));
    assert!(at("create network 'front_hello-app'") < at("create container 'web_hello-release-1'"));
    assert!(
        at("start container 'web_hello-release-1'")
            < at("start container 'ticker_hello-release-1'")
    );
    assert!(
        steps.iter().all(|s| s.contains('(')),
        "every step says why: {steps:#?}"
    );
    // Nothing was stored or applied.
    assert_eq!(agent.get("/v3/status").json()["status"], "done");
    assert_eq!(
        agent.get("/v3/device").json()["apps"],
        serde_json::json!({})
    );
    let bad = agent.post_json("/v3/device/apps/hello-app/plan", r#"{"id": "x"}"#);
    assert_eq!(bad.status, 422);
}
