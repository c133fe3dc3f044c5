//! Device API keys against the running agent (spec/device-api.md §2, `/v1/regenerate-api-key`):
//! where a key is read from, 401 without one, regeneration (the old key stops working, the new
//! one is saved to the config file and reported as `api_secret`), no auth when unmanaged
//! without a key, and keys never in the log.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::support::agent::{eventually, Agent, AgentOpts};
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
    assert_eq!(status_with(&agent, "/v3/nope", &[]), 404);

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

#[test]
fn an_unmanaged_device_without_a_key_takes_none() {
    let home = tempfile::tempdir().unwrap();
    let opts = AgentOpts::new(home.path());
    let cfg_path = opts.config_path();
    let agent = Agent::start(opts);

    assert_eq!(status_with(&agent, "/v2/version", &[]), 200);
    let wrong = [("Authorization", "Bearer wrong")];
    assert_eq!(status_with(&agent, "/v2/version", &wrong), 200);
    // No key of ours to regenerate: the JSON error envelope, not 401.
    let (status, body) = request(agent.addr, "POST", REGENERATE, &[]);
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "failed");
    let text = std::fs::read_to_string(&cfg_path).unwrap_or_default();
    assert!(!text.contains("device_api_key"), "no key generated: {text}");
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
