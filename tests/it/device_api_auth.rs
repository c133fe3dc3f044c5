//! Device API keys against the running agent (spec/device-api.md §2, `/v1/regenerate-api-key`):
//! where a key is read from, 401 without one, regeneration (the old key stops working, the new
//! one is saved to the config file and reported as `api_secret`), keys never in the log; and
//! the listener as a gate (README "Local API"): on TCP `/v3` and `/metrics` take only the global
//! key and `/v1`/`/v2` always a key, while the unix socket (0660) takes none when unmanaged;
//! `force` in `/v1/update` only from the global key; a service key sees only its own app.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::support::agent::{eventually, helios_command, http_with, Agent, AgentOpts};
use crate::support::fake_cloud::FakeCloud;

const KEY: &str = "0123456789abcdef0123456789abcdef";
const REGENERATE: &str = "/v1/regenerate-api-key";

/// One HTTP/1.0 request with extra headers; (status, body).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {raw:?}"));
    (status, body.to_string())
}

fn is_key(k: &str) -> bool {
    k.len() == 32 && k.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// Regenerates `key` (presented as `how` says) and returns the new key.
fn regenerate(agent: &Agent, key: &str, how: &str) -> String {
    let auth;
    let (path, headers): (String, Vec<(&str, &str)>) = match how {
        "query" => (format!("{REGENERATE}?apikey={key}"), vec![]),
        scheme => {
            auth = format!("{scheme} {key}");
            (
                REGENERATE.to_string(),
                vec![("Authorization", auth.as_str())],
            )
        }
    };
    let (status, body) = request(agent.addr, "POST", &path, &headers);
    assert_eq!(status, 200, "regenerate with {how}: {body}");
    assert!(is_key(&body), "the new key is the body: {body:?}");
    assert_ne!(body, key);
    body
}

fn status_with(agent: &Agent, path: &str, headers: &[(&str, &str)]) -> u16 {
    request(agent.addr, "GET", path, headers).0
}

fn assert_never_logged(agent: &Agent, keys: &[&str]) {
    let logs = agent.logs().join("\n");
    for k in keys {
        assert!(!logs.contains(k), "key {k} in the log:\n{logs}");
    }
}

#[test]
fn a_configured_key_guards_the_device_api_and_can_be_regenerated() {
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path());
    let cfg_path = opts.config_path();
    let agent = Agent::start(opts.arg("--device-api-key").arg(KEY));

    // No key needed: liveness, health and helios' own API.
    assert_eq!(agent.get("/ping").status, 200);
    assert_eq!(agent.get("/v3/status").status, 200);
    assert_ne!(agent.get("/v1/healthy").status, 401);

    // Unknown paths: authentication first (401), then 404; unknown /v3 paths are 404.
    assert_eq!(status_with(&agent, "/v2/nope", &[]), 401);
    assert_eq!(status_with(&agent, "/nope", &[]), 401);
    assert_eq!(
        status_with(&agent, &format!("/v2/nope?apikey={KEY}"), &[]),
        404
    );
    assert_eq!(status_with(&agent, "/v3/nope", &[]), 401);
    assert_eq!(
        status_with(&agent, &format!("/v3/nope?apikey={KEY}"), &[]),
        404
    );

    // Protected: no key, a wrong key, a key in the wrong place or shape.
    let bearer = format!("Bearer {KEY}");
    let (status, body) = request(agent.addr, "POST", REGENERATE, &[]);
    assert_eq!((status, body.as_str()), (401, "Unauthorized"));
    for (path, headers) in [
        ("/v2/version".to_string(), vec![]),
        ("/v2/version?apikey=0123".to_string(), vec![]),
        (format!("/v2/version?apiKey={KEY}"), vec![]),
        (format!("/v2/version?APIKEY={KEY}"), vec![]),
        // The query parameter wins over the header, even when wrong.
        (
            "/v2/version?apikey=wrong".to_string(),
            vec![("Authorization", bearer.as_str())],
        ),
    ] {
        assert_eq!(
            status_with(&agent, &path, &headers),
            401,
            "{path} {headers:?}"
        );
    }
    for header in [
        format!("Basic {KEY}"),
        format!("Bearer {KEY} extra"),
        format!("Bearer  {KEY}"),
        format!("Bearer {KEY}-x"),
        "Bearer 0123456789abcdef0123456789abcdee".to_string(),
        KEY.to_string(),
    ] {
        let h = [("Authorization", header.as_str())];
        assert_eq!(status_with(&agent, "/v2/version", &h), 401, "{header}");
    }

    // Accepted: the query parameter, and both schemes in any case.
    assert_eq!(
        status_with(&agent, &format!("/v2/version?apikey={KEY}"), &[]),
        200
    );
    for scheme in ["Bearer", "bearer", "ApiKey", "APIKEY"] {
        let h = format!("{scheme} {KEY}");
        assert_eq!(
            status_with(&agent, "/v2/version", &[("Authorization", &h)]),
            200,
            "{scheme}"
        );
    }

    // Regenerate with each way of presenting the key: the old key stops working at once.
    let k1 = regenerate(&agent, KEY, "query");
    assert_eq!(
        status_with(&agent, "/v2/version", &[("Authorization", &bearer)]),
        401
    );
    let (status, _) = request(
        agent.addr,
        "POST",
        REGENERATE,
        &[("Authorization", &bearer)],
    );
    assert_eq!(status, 401, "the old key cannot be regenerated again");
    let k2 = regenerate(&agent, &k1, "Bearer");
    let k3 = regenerate(&agent, &k2, "apikey");
    for (old, ok) in [(&k1, false), (&k2, false), (&k3, true)] {
        let h = format!("ApiKey {old}");
        let want = if ok { 200 } else { 401 };
        assert_eq!(
            status_with(&agent, "/v2/version", &[("Authorization", &h)]),
            want
        );
    }

    // Saved to the config file (0600).
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(
        text.contains(&format!("device_api_key = \"{k3}\"")),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cfg_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("decision=regenerate") && l.contains("scope=global")));
    assert_never_logged(&agent, &[KEY, &k1, &k2, &k3]);
}

#[test]
fn a_regenerated_key_from_the_config_file_survives_a_restart() {
    let home = tempfile::tempdir().unwrap();
    let opts = || AgentOpts::new(home.path());
    let cfg_path = opts().config_path();
    std::fs::create_dir_all(cfg_path.parent().unwrap()).unwrap();
    std::fs::write(&cfg_path, format!("[api]\ndevice_api_key = \"{KEY}\"\n")).unwrap();

    let agent = Agent::start(opts());
    let new = regenerate(&agent, KEY, "Bearer");
    drop(agent);

    let agent = Agent::start(opts());
    let old = format!("Bearer {KEY}");
    assert_eq!(
        status_with(&agent, "/v2/version", &[("Authorization", &old)]),
        401
    );
    let h = format!("Bearer {new}");
    assert_eq!(
        status_with(&agent, "/v2/version", &[("Authorization", &h)]),
        200
    );
    assert_never_logged(&agent, &[KEY, &new]);
}

/// One HTTP/1.0 request on a unix socket; (status, body).
fn unix_request(
    path: &std::path::Path,
    method: &str,
    uri: &str,
    json: Option<&str>,
) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = json.unwrap_or("");
    let ct = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let req = format!(
        "{method} {uri} HTTP/1.0\r\nHost: localhost\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {raw:?}"));
    (status, body.to_string())
}

/// An app target with a secret in its environment.
fn app(id: u32, secret: &str) -> String {
    serde_json::json!({"id": id, "name": format!("app{id}"), "releases": {format!("r{id}"): {
        "services": {"main": {"id": id, "image": "busybox:latest",
            "environment": {"SECRET": secret}}}}}})
    .to_string()
}

/// Creates the key of service `main` of app `app_id` in the agent's store before it starts,
/// as an apply of a labelled service would.
fn service_key(opts: &AgentOpts, app_id: u32) -> String {
    use helios_actors::ports::apikeys::ApiKeys;
    let (store, _) = helios_actors::ports::store::Store::open(&opts.state_dir(), 1 << 20).unwrap();
    let keys = ApiKeys::open(store, None, false, std::sync::Arc::new(|_| Ok(()))).unwrap();
    keys.service_key(app_id, "main")
        .unwrap()
        .expose()
        .to_string()
}

#[test]
fn an_unmanaged_device_generates_a_key_tcp_requires_and_the_socket_does_not() {
    let home = tempfile::tempdir().unwrap();
    let sock = home.path().join("run/api.sock");
    let opts = AgentOpts::new(home.path());
    let cfg_path = opts.config_path();
    let agent = Agent::start(
        opts.arg("--local-api-address")
            .arg(sock.display().to_string()),
    );

    // Generated, saved (0600), and what `helios api-key` prints.
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(
        text.contains(&format!("device_api_key = \"{}\"", agent.key)),
        "{text}"
    );
    assert!(is_key(&agent.key), "{}", agent.key);
    let out = helios_command(home.path()).arg("api-key").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), agent.key);

    // TCP: a key, also unmanaged.
    assert_eq!(status_with(&agent, "/v2/version", &[]), 401);
    let wrong = [("Authorization", "Bearer wrong")];
    assert_eq!(status_with(&agent, "/v2/version", &wrong), 401);
    assert_eq!(
        status_with(&agent, "/v2/version", &[("Authorization", &agent.bearer())]),
        200
    );

    // The unix socket: no key (its mode is the gate), for /v1, /v2, /v3 and /metrics.
    assert_eq!(unix_request(&sock, "GET", "/v2/version", None).0, 200);
    assert_eq!(unix_request(&sock, "GET", "/v3/device", None).0, 200);
    assert_eq!(unix_request(&sock, "GET", "/metrics", None).0, 200);
    let (status, body) = unix_request(
        &sock,
        "POST",
        "/v3/device/apps/sock-app",
        Some(&app(7, "s")),
    );
    assert_eq!(status, 202, "{body}");
    // No key of ours to regenerate: the JSON error envelope, not 401.
    let (status, body) = unix_request(&sock, "POST", REGENERATE, None);
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "failed");
    assert_never_logged(&agent, &[&agent.key]);
}

#[test]
fn v3_and_metrics_on_tcp_take_only_the_global_key() {
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path());
    let scoped = service_key(&opts, 1);
    let agent = Agent::start(opts);
    let scoped_h = format!("Bearer {scoped}");
    let global_h = agent.bearer();
    let send = |method: &str, path: &str, auth: Option<&str>, body: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        http_with(
            agent.addr,
            method,
            path,
            &h,
            body.map(|b| ("application/json", b)),
        )
    };

    // Healthchecks need no key.
    assert_eq!(send("GET", "/ping", None, None).status, 200);
    assert_eq!(send("GET", "/v3/status", None, None).status, 200);
    assert_ne!(send("GET", "/v1/healthy", None, None).status, 401);

    // No key, a wrong key, a service's key: refused, and nothing is applied.
    let body = app(1, "hunter2");
    for (auth, want) in [
        (None, 401),
        (Some("Bearer wrong"), 401),
        (Some(scoped_h.as_str()), 403),
    ] {
        for (method, path, body) in [
            ("POST", "/v3/device/apps/a1", Some(body.as_str())),
            ("POST", "/v3/device/apps/a1/plan", Some(body.as_str())),
            ("DELETE", "/v3/device/apps/a1", None),
            ("GET", "/v3/device", None),
            ("GET", "/v3/device/apps/a1", None),
            ("GET", "/v3/version", None),
            ("GET", "/v3/capabilities", None),
            ("GET", "/metrics", None),
        ] {
            let r = send(method, path, auth, body);
            assert_eq!(r.status, want, "{method} {path} with {auth:?}: {}", r.body);
            assert!(!r.body.contains("hunter2"));
        }
    }
    assert!(
        !agent.logs().iter().any(|l| l.contains("decision=publish")),
        "nothing was stored"
    );
    assert!(agent.logs().iter().any(|l| l.contains("decision=refuse")
        && l.contains("reason=\"needs the global API key\"")
        && l.contains("path=/v3/device")));

    // The global key works.
    assert_eq!(
        send("POST", "/v3/device/apps/a1", Some(&global_h), Some(&body)).status,
        202
    );
    assert_eq!(send("GET", "/v3/device", Some(&global_h), None).status, 200);
    assert_eq!(send("GET", "/metrics", Some(&global_h), None).status, 200);
    assert_eq!(
        send("DELETE", "/v3/device/apps/a1", Some(&global_h), None).status,
        202
    );
    assert_never_logged(&agent, &[&agent.key, &scoped]);
}

#[test]
fn v1_update_needs_a_key_and_only_the_global_key_forces() {
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path());
    let scoped = service_key(&opts, 1);
    let agent = Agent::start(opts);
    // A target to re-apply.
    assert_eq!(
        agent.post_json("/v3/device/apps/a1", &app(1, "x")).status,
        202
    );
    let forced = r#"{"force": true}"#;
    let update = |auth: &[(&str, &str)]| {
        let skip = agent.logs().len();
        let r = http_with(
            agent.addr,
            "POST",
            "/v1/update",
            auth,
            Some(("application/json", forced)),
        );
        (r.status, skip)
    };

    // No key over TCP: 401, nothing re-applied.
    let (status, skip) = update(&[]);
    assert_eq!(status, 401);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!agent.logs()[skip..]
        .iter()
        .any(|l| l.contains("decision=reapply")));

    // A service key: accepted, `force` dropped with a log line.
    let scoped_h = format!("Bearer {scoped}");
    let (status, skip) = update(&[("Authorization", &scoped_h)]);
    assert_eq!(status, 202);
    let line = agent
        .wait_log_after(
            skip,
            |l| l.contains("decision=reapply"),
            Duration::from_secs(10),
        )
        .expect("re-applied");
    assert!(line.contains("force=false"), "{line}");
    assert!(agent.logs()[skip..]
        .iter()
        .any(|l| l.contains("decision=ignore-force") && l.contains("scope=app:1")));

    // The global key forces.
    let (status, skip) = update(&[("Authorization", &agent.bearer())]);
    assert_eq!(status, 202);
    let line = agent
        .wait_log_after(
            skip,
            |l| l.contains("decision=reapply"),
            Duration::from_secs(10),
        )
        .expect("re-applied");
    assert!(line.contains("force=true"), "{line}");
}

#[test]
fn a_service_key_reads_only_its_own_app_in_the_local_target() {
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path());
    let scoped = service_key(&opts, 1);
    let agent = Agent::start(opts);
    assert_eq!(
        agent
            .post_json("/v3/device/apps/a1", &app(1, "mine"))
            .status,
        202
    );
    assert_eq!(
        agent
            .post_json("/v3/device/apps/a2", &app(2, "theirs"))
            .status,
        202
    );

    let all = agent.get("/v2/local/target-state").json();
    let apps = &all["state"]["local"]["apps"];
    assert!(apps.get("1").is_some() && apps.get("2").is_some(), "{all}");

    let h = format!("Bearer {scoped}");
    let r = http_with(
        agent.addr,
        "GET",
        "/v2/local/target-state",
        &[("Authorization", &h)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let apps = v["state"]["local"]["apps"].as_object().unwrap();
    assert_eq!(apps.keys().collect::<Vec<_>>(), ["1"], "{v}");
    assert!(
        r.body.contains("mine") && !r.body.contains("theirs"),
        "{}",
        r.body
    );
}

#[test]
fn concurrent_local_posts_for_different_apps_all_land() {
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path());
    std::fs::create_dir_all(opts.config_path().parent().unwrap()).unwrap();
    std::fs::write(opts.config_path(), "[api]\nworkers = 4\n").unwrap();
    let agent = Agent::start(opts);
    const APPS: u32 = 24;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(APPS as usize));
    let posts: Vec<_> = (1..=APPS)
        .map(|id| {
            let (addr, barrier) = (agent.addr, barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                crate::support::agent::http(
                    addr,
                    "POST",
                    &format!("/v3/device/apps/app{id}"),
                    Some(("application/json", &app(id, "x"))),
                )
                .status
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.join().unwrap(), 202);
    }
    let v = agent.get("/v2/local/target-state").json();
    let apps = v["state"]["local"]["apps"].as_object().unwrap();
    let mut ids: Vec<u32> = apps.keys().map(|k| k.parse().unwrap()).collect();
    ids.sort();
    assert_eq!(
        ids,
        (1..=APPS).collect::<Vec<_>>(),
        "every POST is in the target"
    );
}

#[test]
fn a_managed_device_generates_reports_and_regenerates_its_key() {
    const UUID: &str = "auth-device-1";
    let cloud = FakeCloud::start();
    cloud.add_fleet(1, "p");
    cloud.add_device(UUID, "device-key-1", 1);
    cloud.set_target(
        UUID,
        serde_json::json!({"name": "auth-device", "config": {}, "apps": {}}),
    );
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path());
    let cfg_path = opts.config_path();
    let agent = Agent::start(
        opts.env("HELIOS_REMOTE_REPORT_MIN_INTERVAL_MS", "200")
            .arg("--uuid")
            .arg(UUID)
            .arg("--remote-api-endpoint")
            .arg(cloud.url.clone())
            .arg("--remote-api-key")
            .arg("device-key-1"),
    );
    let reported = |cloud: &FakeCloud| -> Option<String> {
        cloud
            .reports()
            .iter()
            .rev()
            .find_map(|r| r[UUID].get("api_secret")?.as_str().map(str::to_string))
    };

    // Managed: a key is required, generated, saved and reported.
    let first =
        eventually(Duration::from_secs(30), || reported(&cloud)).expect("api_secret reported");
    assert!(is_key(&first), "{first}");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(text.contains(&first), "generated key saved: {text}");
    assert_eq!(status_with(&agent, "/v2/version", &[]), 401);

    // Regenerated: the new key is reported right away.
    let second = regenerate(&agent, &first, "Bearer");
    let seen = eventually(Duration::from_secs(30), || {
        reported(&cloud).filter(|k| *k == second)
    });
    assert!(seen.is_some(), "the new key is reported");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(text.contains(&second) && !text.contains(&first), "{text}");
    assert_never_logged(&agent, &[&first, &second, "device-key-1"]);
}

#[test]
fn in_front_of_a_legacy_supervisor_no_api_secret_is_reported() {
    const UUID: &str = "auth-device-2";
    let cloud = FakeCloud::start();
    cloud.add_fleet(1, "p");
    cloud.add_device(UUID, "device-key-2", 1);
    cloud.set_target(
        UUID,
        serde_json::json!({"name": "auth-device", "config": {}, "apps": {}}),
    );
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        AgentOpts::new(home.path())
            .arg("--uuid")
            .arg(UUID)
            .arg("--remote-api-endpoint")
            .arg(cloud.url.clone())
            .arg("--remote-api-key")
            .arg("device-key-2")
            .arg("--legacy-api-endpoint")
            .arg("http://127.0.0.1:9")
            .arg("--legacy-api-key")
            .arg("legacykey"),
    );
    let first = eventually(Duration::from_secs(30), || {
        cloud.reports().first().map(|r| r[UUID].clone())
    })
    .expect("a report");
    assert!(first.get("status").is_some(), "{first}");
    assert!(
        cloud
            .reports()
            .iter()
            .all(|r| r[UUID].get("api_secret").is_none()),
        "the legacy supervisor's api_secret stays"
    );
    // The device API is the legacy supervisor's (proxied; nothing listens on :9 here).
    assert_eq!(status_with(&agent, "/v2/version", &[]), 502);
}

#[test]
fn device_info_tells_the_device_type_from_config_or_the_boot_partition() {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "aarch64",
        other => other,
    };
    // Configured.
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        AgentOpts::new(home.path()).env("HELIOS_PROVISIONING_DEVICE_TYPE", "generic-amd64"),
    );
    let r = agent.get("/v2/local/device-info");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"status": "success", "info": {"arch": arch, "deviceType": "generic-amd64"}})
    );
    drop(agent);

    // balenaOS: the boot partition's device-type.json.
    let home = tempfile::tempdir().unwrap();
    let boot = tempfile::tempdir().unwrap();
    std::fs::write(
        boot.path().join("device-type.json"),
        r#"{"slug": "raspberrypi4-64", "arch": "aarch64"}"#,
    )
    .unwrap();
    let agent = Agent::start(
        AgentOpts::new(home.path()).env("BOOT_MOUNTPOINT", boot.path().display().to_string()),
    );
    assert_eq!(
        agent.get("/v2/local/device-info").json()["info"]["deviceType"],
        "raspberrypi4-64"
    );
}
