//! The proxy in front of a legacy supervisor (spec/helios-proxy.md §5, spec/helios-api-v3.md
//! §8.1), without an engine: the routing matrix against a fake legacy supervisor and the fake
//! balena API, 50 MB bodies streamed both ways, upstreams that are down, slow or reset, and
//! clients that only claim to be the legacy supervisor.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use helios_actors::ports::store::{Durability, Store};

use crate::support::agent::{eventually, Agent, AgentOpts};
use crate::support::fake_cloud::{FakeCloud, Fault, Route};
use crate::support::fake_legacy::{pattern_byte, pattern_sum, FakeLegacy};

const UUID: &str = "proxy-device-1";
const LEGACY_UA: &str = "Supervisor/19.0.5";

/// An answer read by [`request`]: the body is counted and summed, only its start kept.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub len: u64,
    pub sum: u64,
    pub head: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.head)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.head)))
    }
}

/// One HTTP/1.1 request (`Connection: close`) with extra headers and a body of `len` bytes
/// from `body(i)`, written as it is generated; the answer is read as it arrives.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(u64, &dyn Fn(u64) -> u8)>,
) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some((n, _)) = body {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some((n, f)) = body {
        let mut buf = Vec::with_capacity(64 << 10);
        let mut i = 0;
        while i < n {
            buf.clear();
            let end = (i + (64 << 10)).min(n);
            buf.extend((i..end).map(f));
            s.write_all(&buf).unwrap();
            i = end;
        }
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = vec![];
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let (mut len, mut sum, mut kept) = (0u64, 0u64, Vec::new());
    let mut take = |b: &[u8]| {
        len += b.len() as u64;
        sum = b.iter().fold(sum, |s, x| s.wrapping_add(u64::from(*x)));
        let room = (64usize << 10).saturating_sub(kept.len());
        kept.extend_from_slice(&b[..b.len().min(room)]);
    };
    let mut buf = vec![0u8; 64 << 10];
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut left = size;
            while left > 0 {
                let n = r.read(&mut buf[..left.min(64 << 10)]).unwrap();
                assert!(n > 0, "chunked body cut short");
                take(&buf[..n]);
                left -= n;
            }
            line.clear();
            r.read_line(&mut line).unwrap();
        }
    } else {
        loop {
            let n = r.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            take(&buf[..n]);
        }
    }
    Answer {
        status,
        headers,
        len,
        sum,
        head: kept,
    }
}

pub fn opts(home: &std::path::Path, legacy: &str) -> AgentOpts {
    AgentOpts::new(home)
        .arg("--uuid")
        .arg(UUID)
        .arg("--legacy-api-endpoint")
        .arg(legacy)
        .arg("--legacy-api-key")
        .arg("legacy-key")
        .env("HELIOS_REMOTE_POLL_MIN_INTERVAL_MS", "200")
        .env("HELIOS_REMOTE_POLL_MAX_JITTER_MS", "0")
        .env("HELIOS_REMOTE_REPORT_MIN_INTERVAL_MS", "200")
}

pub fn managed(o: AgentOpts, cloud: &FakeCloud) -> AgentOpts {
    cloud.add_device(UUID, "device-key", 1);
    o.arg("--remote-api-endpoint")
        .arg(cloud.url.clone())
        .arg("--remote-api-key")
        .arg("device-key")
}

/// Resident and peak memory of a process, in kB (`VmRSS`, `VmHWM`).
pub fn rss_kb(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

#[test]
fn routes_every_caller_to_the_right_place() {
    let legacy = FakeLegacy::start();
    let cloud = FakeCloud::start();
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(managed(opts(home.path(), &legacy.url), &cloud));

    // Clients of the device API reach the legacy supervisor: /v1 and /v2 (even routes helios
    // serves when it runs alone), method, path, query, headers and status unchanged.
    let a = request(
        agent.addr,
        "POST",
        "/v1/reboot?apikey=k1&status=418",
        &[
            ("Authorization", "Bearer container-key"),
            ("Content-Type", "application/json"),
            ("X-Custom", "kept"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "dropped"),
        ],
        Some((14, &|i| b"{\"force\":true}"[i as usize])),
    );
    assert_eq!(a.status, 418, "{a:?}");
    assert_eq!(a.header("x-legacy"), Some("fake"));
    assert_eq!(a.header("set-cookie"), Some("a=1"));
    assert_eq!(a.json()["bytes"], 14);
    let got = legacy.received_at("/v1/reboot");
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.query, "apikey=k1&status=418");
    assert_eq!(r.header("authorization"), Some("Bearer container-key"));
    assert_eq!(r.header("x-custom"), Some("kept"));
    assert_eq!(
        r.header("x-hop"),
        None,
        "hop-by-hop headers are not forwarded"
    );
    assert_eq!(
        r.header("host"),
        Some(legacy.url.trim_start_matches("http://"))
    );
    assert_eq!(r.body, b"{\"force\":true}");
    for path in [
        "/v1/healthy",
        "/v1/device",
        "/v2/applications/state",
        "/v2/state/status?x=1",
    ] {
        let a = request(agent.addr, "GET", path, &[], None);
        let p = path.split('?').next().unwrap();
        assert_eq!(a.status, 200, "{path}");
        assert!(
            !legacy.received_at(p).is_empty(),
            "{path} reached the legacy supervisor"
        );
    }

    // helios answers /ping, /metrics, /v3/* and /v1/update itself.
    let before = legacy.received().len();
    let ping = request(agent.addr, "GET", "/ping", &[], None);
    assert_eq!((ping.status, ping.head.as_slice()), (200, &b"OK"[..]));
    let metrics = request(
        agent.addr,
        "GET",
        "/metrics",
        &[("Authorization", &agent.bearer())],
        None,
    );
    assert_eq!(metrics.status, 200);
    assert!(
        String::from_utf8_lossy(&metrics.head).contains("helios_build_info{"),
        "helios's own metrics"
    );
    let status = request(agent.addr, "GET", "/v3/status", &[], None);
    assert_eq!(status.status, 200);
    assert!(status.json()["status"].is_string());
    let gets = cloud.target_gets();
    let upd = request(
        agent.addr,
        "POST",
        "/v1/update",
        &[("Authorization", &agent.bearer())],
        None,
    );
    assert_eq!(upd.status, 202);
    eventually(Duration::from_secs(10), || {
        (cloud.target_gets() > gets).then_some(())
    })
    .expect("/v1/update makes helios poll");
    assert_eq!(
        legacy.received().len(),
        before,
        "none of these reached the legacy supervisor"
    );

    // The legacy supervisor's target poll: 503 + Retry-After while helios has no copy for it
    // (here: no engine, so helios has not split any target).
    let ua = [
        ("User-Agent", LEGACY_UA),
        ("Authorization", "Bearer device-key"),
    ];
    let path = format!("/device/v3/{UUID}/state");
    let t = request(agent.addr, "GET", &path, &ua, None);
    assert_eq!(t.status, 503);
    assert_eq!(t.header("retry-after"), Some("15"));
    assert!(t.json()["error"].is_string());

    // Its other calls go to the balena API, with its headers (its key) and the API's status.
    let a = request(
        agent.addr,
        "GET",
        "/v7/device?$select=id",
        &[
            ("User-Agent", LEGACY_UA),
            ("Authorization", "Bearer device-key"),
        ],
        None,
    );
    let r = cloud
        .requests()
        .into_iter()
        .find(|r| r.path == "/v7/device")
        .expect("forwarded to the API");
    assert_eq!(r.query, "$select=id");
    assert_eq!(r.user_agent(), Some(LEGACY_UA));
    assert_eq!(r.bearer(), Some("device-key"));
    assert_eq!(Some(a.status), r.answered, "the API's status comes back");

    // Its state report reaches the API without `apps` (helios reports the apps, whole).
    let report = json!({UUID: {"status": "Idle", "supervisor_version": "19.0.5",
        "apps": {"not-legacys": {"releases": {}}}}})
    .to_string();
    let a = request(
        agent.addr,
        "PATCH",
        "/device/v3/state",
        &[
            ("User-Agent", LEGACY_UA),
            ("Authorization", "Bearer device-key"),
            ("Content-Type", "application/json"),
        ],
        Some((report.len() as u64, &|i| report.as_bytes()[i as usize])),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let legacy_report = eventually(Duration::from_secs(5), || {
        cloud
            .reports()
            .into_iter()
            .find(|r| r[UUID]["supervisor_version"] == "19.0.5")
    })
    .expect("the legacy report reached the API");
    assert_eq!(legacy_report[UUID]["status"], "Idle");
    assert!(legacy_report[UUID].get("apps").is_none(), "{legacy_report}");
    // helios's own reports never carry its version in front of the legacy supervisor.
    assert!(cloud
        .reports()
        .iter()
        .filter(|r| r[UUID]["supervisor_version"] != "19.0.5")
        .all(|r| r[UUID].get("supervisor_version").is_none()));
}

#[test]
fn streams_50_mb_both_ways_with_bounded_memory() {
    const N: u64 = 50 << 20;
    let legacy = FakeLegacy::start();
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(opts(home.path(), &legacy.url));
    // Warm up the worker's buffers, then measure.
    let a = request(agent.addr, "GET", "/download?bytes=1000", &[], None);
    assert_eq!(a.len, 1000);
    let (rss0, _) = rss_kb(agent.pid());

    let up = request(
        agent.addr,
        "POST",
        "/upload",
        // The browser guard takes only JSON bodies on TCP; the proxy streams them unparsed.
        &[("Content-Type", "application/json")],
        Some((N, &pattern_byte)),
    );
    assert_eq!(up.status, 200, "{up:?}");
    let r = legacy.received_at("/upload").pop().unwrap();
    assert_eq!((r.body_len, r.body_sum), (N, pattern_sum(N)));
    assert_eq!(r.header("content-length"), Some(N.to_string().as_str()));

    let down = request(
        agent.addr,
        "GET",
        &format!("/download?bytes={N}"),
        &[],
        None,
    );
    assert_eq!(down.status, 200);
    assert_eq!(down.header("content-length"), Some(N.to_string().as_str()));
    assert_eq!((down.len, down.sum), (N, pattern_sum(N)));

    let (rss1, hwm) = rss_kb(agent.pid());
    println!(
        "proxy memory (debug build): RSS before {rss0} kB, after 2 x 50 MB {rss1} kB, \
         growth {} kB, peak {hwm} kB",
        rss1 as i64 - rss0 as i64
    );
    // Generous bound: a body held in memory would add 50 MB.
    assert!(hwm < rss0 + 25_000, "peak {hwm} kB vs {rss0} kB before");
}

#[test]
fn upstream_down_slow_or_reset_gives_502_or_504_and_recovers() {
    let legacy = FakeLegacy::start();
    // A remote that refuses connections.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        opts(home.path(), &legacy.url)
            .arg("--remote-api-endpoint")
            .arg(down)
            .arg("--remote-api-key")
            .arg("device-key")
            .arg("--remote-request-timeout-ms")
            .arg("1500"),
    );
    let ua = [("User-Agent", LEGACY_UA)];

    let a = request(agent.addr, "GET", "/v7/device", &ua, None);
    assert_eq!(a.status, 502, "{a:?}");
    assert_eq!(a.json()["upstream"], "remote");
    assert!(a.json()["error"].as_str().unwrap().contains("remote"));

    let a = request(agent.addr, "GET", "/slow?ms=6000", &[], None);
    assert_eq!(a.status, 504, "{a:?}");
    assert_eq!(a.json()["upstream"], "legacy");

    let a = request(agent.addr, "GET", "/reset", &[], None);
    assert_eq!(a.status, 502, "{a:?}");
    let caps = request(
        agent.addr,
        "GET",
        "/v3/capabilities",
        &[("Authorization", &agent.bearer())],
        None,
    )
    .json();
    assert_eq!(
        caps["legacy_answering"], false,
        "a reset is a lost capability"
    );

    // Each failure is one log line; nothing restarted; the next request works.
    let failures = || {
        agent
            .logs()
            .iter()
            .filter(|l| l.contains("Proxy upstream failed"))
            .count()
    };
    // (Log lines are read from the agent's stderr by a thread: wait for the last one.)
    eventually(Duration::from_secs(5), || (failures() >= 3).then_some(()));
    assert_eq!(failures(), 3, "{:#?}", agent.logs());
    assert!(!agent.logs().iter().any(|l| l.contains("decision=restart")));
    let ok = request(agent.addr, "GET", "/v2/version", &[], None);
    assert_eq!(ok.status, 200);
    assert_eq!(request(agent.addr, "GET", "/ping", &[], None).status, 200);
    let caps = request(
        agent.addr,
        "GET",
        "/v3/capabilities",
        &[("Authorization", &agent.bearer())],
        None,
    )
    .json();
    assert_eq!(caps["legacy_answering"], true, "answering again");
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("capability=legacy_supervisor") && l.contains("decision=lost")));
}

#[test]
fn unmanaged_the_legacy_supervisor_gets_503_with_retry_after_600() {
    let legacy = FakeLegacy::start();
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(opts(home.path(), &legacy.url));
    let a = request(
        agent.addr,
        "PATCH",
        "/device/v3/state",
        &[("User-Agent", LEGACY_UA)],
        None,
    );
    assert_eq!(a.status, 503);
    assert_eq!(a.header("retry-after"), Some("600"));
    assert!(legacy.received().is_empty());
}

/// An app of the legacy supervisor's copy.
const LEGACY_APP: &str = "bbbb0000000000000000000000000002";

/// Stores a legacy copy as ProxyActor stores it (served again when the agent starts), with a
/// config var a local process must not read.
fn seed_legacy_target(o: &AgentOpts) {
    let doc = json!({UUID: {"name": "proxied", "config": {"SECRET_VAR": "s3cr3t-config"},
        "apps": {LEGACY_APP: {"id": 2, "name": "fleet2", "class": "fleet", "releases": {}}}}});
    let (store, _) = Store::open(&o.state_dir(), 1 << 20).unwrap();
    store
        .put_json(
            helios_actors::proxy::LEGACY_TARGET_KEY,
            &doc,
            Durability::Flush,
        )
        .unwrap();
}

/// A state report of the legacy supervisor with its app at `release`, plus `fields`.
fn legacy_report(release: &str, fields: Value) -> String {
    let mut dev = json!({"status": "Idle", "apps": {LEGACY_APP: {"release_uuid": release,
        "releases": {}}}});
    dev.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    json!({ UUID: dev }).to_string()
}

fn patch_report(agent: &Agent, headers: &[(&str, &str)], report: &str) -> Answer {
    let mut h = headers.to_vec();
    h.push(("Content-Type", "application/json"));
    request(
        agent.addr,
        "PATCH",
        "/device/v3/state",
        &h,
        Some((report.len() as u64, &|i| report.as_bytes()[i as usize])),
    )
}

/// The legacy supervisor's target poll with the device key, once the agent knows the key.
fn legacy_copy(agent: &Agent) -> Answer {
    let path = format!("/device/v3/{UUID}/state");
    eventually(Duration::from_secs(10), || {
        let a = request(
            agent.addr,
            "GET",
            &path,
            &[
                ("User-Agent", "Supervisor/16.0.0"),
                ("Authorization", "Bearer device-key"),
            ],
            None,
        );
        (a.status == 200).then_some(a)
    })
    .expect("the legacy supervisor, with the device key, gets its copy")
}

/// Log lines containing `needle`.
fn count(agent: &Agent, needle: &str) -> usize {
    agent.logs().iter().filter(|l| l.contains(needle)).count()
}

/// Recorded API requests whose body contains `needle` (a forwarded legacy report, or one of
/// helios's own reports carrying the legacy supervisor's apps).
fn sent_to_api(cloud: &FakeCloud, needle: &str) -> usize {
    cloud
        .requests()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(needle))
        .count()
}

#[test]
fn a_supervisor_user_agent_without_the_device_key_gets_nothing() {
    let legacy = FakeLegacy::start();
    let cloud = FakeCloud::start();
    let home = tempfile::tempdir().unwrap();
    let o = managed(opts(home.path(), &legacy.url), &cloud);
    seed_legacy_target(&o);
    let agent = Agent::start(o);
    let ua = ("User-Agent", "Supervisor/16.0.0");
    let path = format!("/device/v3/{UUID}/state");

    // The legacy supervisor presents the device key, as a bearer token or `apikey=`.
    let t = legacy_copy(&agent);
    assert_eq!(t.json()[UUID]["config"]["SECRET_VAR"], "s3cr3t-config");
    let q = request(
        agent.addr,
        "GET",
        &format!("{path}?apikey=device-key"),
        &[ua],
        None,
    );
    assert_eq!(q.status, 200, "{q:?}");

    // Any other local process claiming to be it: 401, nothing of the copy, one line each.
    let attempts: [(String, Vec<(&str, &str)>); 4] = [
        (path.clone(), vec![ua]),
        (
            path.clone(),
            vec![ua, ("Authorization", "Bearer wrong-key")],
        ),
        // The legacy supervisor's device-API key is not its cloud identity.
        (
            path.clone(),
            vec![ua, ("Authorization", "Bearer legacy-key")],
        ),
        (format!("{path}?apikey=wrong-key"), vec![ua]),
    ];
    for (p, headers) in &attempts {
        let a = request(agent.addr, "GET", p, headers, None);
        assert_eq!(a.status, 401, "{p} {headers:?}: {a:?}");
        assert!(
            !String::from_utf8_lossy(&a.head).contains("s3cr3t"),
            "{a:?}"
        );
        assert!(a.json()["error"].is_string());
    }

    // Its state report without the key: 401, not forwarded, not merged.
    let forged = legacy_report("forged", json!({"note": "forged-report"}));
    for headers in [vec![ua], vec![ua, ("Authorization", "Bearer wrong-key")]] {
        let a = patch_report(&agent, &headers, &forged);
        assert_eq!(a.status, 401, "{a:?}");
    }
    // With the key: forwarded, and its app merged into helios's report.
    let good = legacy_report("rel2", json!({}));
    let a = patch_report(&agent, &[ua, ("Authorization", "Bearer device-key")], &good);
    assert_eq!(a.status, 200, "{a:?}");
    let merged = eventually(Duration::from_secs(20), || {
        cloud.reports().into_iter().rev().find_map(|r| {
            let app = r[UUID].get("apps")?.get(LEGACY_APP)?.clone();
            Some(app)
        })
    })
    .expect("helios reports the legacy supervisor's app");
    assert_eq!(merged["release_uuid"], "rel2");
    assert_eq!(sent_to_api(&cloud, "forged"), 0, "{:#?}", cloud.requests());
    assert_eq!(count(&agent, "Legacy report apps taken"), 1);

    let refusals = eventually(Duration::from_secs(5), || {
        let l: Vec<String> = agent
            .logs()
            .into_iter()
            .filter(|l| l.contains("Legacy supervisor claim refused"))
            .collect();
        (l.len() >= 6).then_some(l)
    })
    .expect("one line per refusal");
    assert_eq!(refusals.len(), 6, "{refusals:#?}");
    assert!(refusals
        .iter()
        .all(|l| l.contains("decision=refuse") && l.contains("reason=")));
    assert!(
        !agent
            .logs()
            .iter()
            .any(|l| l.contains("wrong-key") || l.contains("device-key")),
        "keys are never logged"
    );
}

#[test]
fn a_legacy_report_the_api_refuses_is_not_merged() {
    let legacy = FakeLegacy::start();
    let cloud = FakeCloud::start();
    let home = tempfile::tempdir().unwrap();
    let o = managed(opts(home.path(), &legacy.url), &cloud);
    seed_legacy_target(&o);
    let agent = Agent::start(o);
    legacy_copy(&agent);
    let headers = [
        ("User-Agent", "Supervisor/16.0.0"),
        ("Authorization", "Bearer device-key"),
    ];

    // The API answers 400 (a field of the wrong type) and 503: the status goes back, the apps
    // stay out of helios's report.
    let bad = legacy_report("refused-400", json!({"cpu_temp": "hot"}));
    let a = patch_report(&agent, &headers, &bad);
    assert_eq!(a.status, 400, "{a:?}");
    cloud.inject_from(
        Route::Report,
        "Supervisor/",
        1,
        Fault::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(30)),
        },
    );
    let a = patch_report(&agent, &headers, &legacy_report("refused-503", json!({})));
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.header("retry-after"), Some("30"));

    // An accepted one is merged.
    let a = patch_report(&agent, &headers, &legacy_report("rel2", json!({})));
    assert_eq!(a.status, 200, "{a:?}");
    eventually(Duration::from_secs(20), || {
        cloud
            .reports()
            .iter()
            .any(|r| r[UUID]["apps"][LEGACY_APP]["release_uuid"] == "rel2")
            .then_some(())
    })
    .expect("helios reports the accepted app");
    assert_eq!(sent_to_api(&cloud, "refused-"), 0, "{:#?}", cloud.reports());
    assert_eq!(count(&agent, "Legacy report apps taken"), 1);
    let dropped = eventually(Duration::from_secs(5), || {
        let l: Vec<String> = agent
            .logs()
            .into_iter()
            .filter(|l| l.contains("Legacy report apps not merged"))
            .collect();
        (l.len() >= 2).then_some(l)
    })
    .expect("one line per refused report");
    assert!(dropped[0].contains("status=400") && dropped[1].contains("status=503"));
}

/// In front of a legacy supervisor, `POST /v1/update` with a key helios does not know (the
/// cloud's API proxy holds the legacy supervisor's global key, its containers its scoped keys)
/// goes to the legacy supervisor unchanged, which decides, `force` included; helios polls too
/// once it accepted. A key neither knows gets the legacy supervisor's 401 and no poll.
#[test]
fn an_update_with_a_key_only_the_legacy_supervisor_knows_is_its_to_check() {
    let legacy = FakeLegacy::start();
    legacy.require_update_keys(&["legacy_global_key_0123", "legacy-key"]);
    let cloud = FakeCloud::start();
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(managed(opts(home.path(), &legacy.url), &cloud));
    eventually(Duration::from_secs(30), || {
        (cloud.target_gets() > 0).then_some(())
    })
    .expect("helios polls at start");
    std::thread::sleep(Duration::from_millis(500));

    let body = br#"{"force":true}"#;
    let byte = |i: u64| body[i as usize];
    let gets = cloud.target_gets();
    let ok = request(
        agent.addr,
        "POST",
        "/v1/update",
        &[
            ("Authorization", "Bearer legacy_global_key_0123"),
            ("Content-Type", "application/json"),
        ],
        Some((body.len() as u64, &byte)),
    );
    assert_eq!(ok.status, 204, "the legacy supervisor's answer");
    let sent = legacy.received_at("/v1/update");
    let r = sent
        .last()
        .expect("the trigger reached the legacy supervisor");
    assert_eq!(
        r.header("authorization"),
        Some("Bearer legacy_global_key_0123")
    );
    assert_eq!(r.body, body, "unchanged, force included: its call");
    eventually(Duration::from_secs(10), || {
        (cloud.target_gets() > gets).then_some(())
    })
    .expect("helios polls once the legacy supervisor accepted the key");

    std::thread::sleep(Duration::from_millis(500));
    let gets = cloud.target_gets();
    let bad = request(
        agent.addr,
        "POST",
        "/v1/update",
        &[("Authorization", "Bearer nobody_knows_this_key")],
        None,
    );
    assert_eq!(bad.status, 401);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cloud.target_gets(), gets, "no poll for a key nobody knows");
    assert!(agent
        .logs()
        .iter()
        .any(|l| l.contains("Update trigger refused") && l.contains("upstream=legacy")));
    assert!(!agent
        .logs()
        .iter()
        .any(|l| l.contains("nobody_knows_this_key")));
}
