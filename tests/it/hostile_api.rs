//! Hostile clients against the real binary's API: thousands of malformed requests (bad JSON,
//! wrong types, huge bodies, bad UTF-8, path tricks, overlong paths and headers, invalid
//! methods, raw garbage) and slow clients that trickle headers or bodies. Every answer is a
//! 4xx (or the connection is closed), the agent never crashes, its memory stays bounded, and
//! afterwards the API still answers correctly. Figures are printed. Also the browser guard:
//! DNS rebinding (a foreign `Host`), cross-site requests and non-JSON bodies are refused.
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::agent::{http_with, Agent, AgentOpts};

/// The fuzzed agent's key: the requests are authorised, so they reach the routes.
const KEY: &str = "hostilekey0123456789";

/// The request with `Host: x` made an authorised request for the agent (an IP literal Host and
/// its key).
fn authorised(req: &[u8]) -> Vec<u8> {
    let from = b"Host: x\r\n";
    let Some(i) = req.windows(from.len()).position(|w| w == from) else {
        return req.to_vec();
    };
    let mut out = req[..i].to_vec();
    out.extend(format!("Host: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n").bytes());
    out.extend(&req[i + from.len()..]);
    out
}

/// A small deterministic generator (xorshift64*): the same requests on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Routes that read a body, with the method they take, where a bad body is the client's error
/// (`/v1/update`, `/v1/reboot`, `/v1/shutdown` and the v2 app restart/purge act on an empty
/// body).
const BODY_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v3/device/apps/app1"),
    ("POST", "/v3/device/apps/app1/plan"),
    ("POST", "/v1/restart"),
    ("POST", "/v1/purge"),
    ("POST", "/v1/apps/1/stop"),
    ("POST", "/v1/apps/1/start"),
    ("POST", "/v2/applications/1/restart-service"),
    ("POST", "/v2/applications/1/stop-service"),
    ("POST", "/v2/applications/1/start-service"),
    ("PATCH", "/v2/device/tags"),
    ("POST", "/v2/local/target-state"),
];

/// Bodies that are not what the route wants.
fn bad_body(rng: &mut Rng) -> Vec<u8> {
    let fixed: &[&str] = &[
        "",
        "{",
        "}",
        "[1,2",
        "null",
        "\"str\"",
        "42",
        "[]",
        "{\"id\": \"x\"}",
        "{\"id\": -1, \"releases\": 5}",
        "{\"id\": 1, \"releases\": {\"r_1\": {}}}",
        "{\"id\": 1, \"releases\": {\"r1\": {\"services\": {\"s\": {\"id\": 1, \"image\": \"\"}}}}}",
        "{\"id\": 1, \"releases\": {\"r1\": {\"services\": {\"s\": {\"id\": 1, \"image\": \"a\", \"composition\": {\"volumes\": [\"/etc:/etc\"]}}}}}}",
        "{\"id\": 1, \"releases\": {\"r1\": {\"services\": {\"s\": {\"id\": 1, \"image\": \"a\", \"composition\": {\"volumes\": [\"/sys/../etc:/x\"]}}}}}}",
        "{\"id\": 1, \"releases\": {\"r1\": {\"services\": {\"s\": {\"id\": 1, \"image\": \"a\", \"composition\": {\"devices\": [\"/dev/../etc/shadow\"]}}}}}}",
        "{\"appId\": \"x\"}",
        "{\"appId\": 99999999999}",
        "{\"appId\": [1]}",
        "{\"serviceName\": 5}",
        "{\"a\": 1}",
        "{\"a\": {\"b\": \"c\"}}",
        "{\"k y\": \"v\"}",
        "{\"id\": 1e400}",
    ];
    match rng.below(6) {
        0 => {
            let n = rng.below(300);
            rng.bytes(n)
        }
        1 => {
            // Invalid UTF-8 inside a JSON string.
            let mut b = b"{\"id\": 1, \"name\": \"".to_vec();
            b.extend([0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1]);
            b.extend(b"\"}");
            b
        }
        2 => {
            // Deep nesting.
            let d = 1 + rng.below(5000);
            let mut b = "[".repeat(d).into_bytes();
            b.extend("]".repeat(d).bytes());
            b
        }
        _ => rng.pick(fixed).as_bytes().to_vec(),
    }
}

/// Paths that are not routes: traversal (raw and encoded), bad escapes, bad UTF-8, long.
fn bad_path(rng: &mut Rng) -> Vec<u8> {
    let fixed: &[&str] = &[
        "/../../etc/passwd",
        "/v3/../../../etc/passwd",
        "/v3/device/apps/..%2f..%2fetc",
        "/v3/device/apps/%2e%2e/%2e%2e/etc/passwd",
        "/%2e%2e/%2e%2e/v3/status/x",
        "/v3/device/apps/app1/../../../../v1/reboot/x",
        "/v1/apps/%00/stop",
        "/v2/applications/%ff%fe/state",
        "/v2/applications/-1/state/x",
        "/v3/device/apps/%zz",
        "//////",
        "/v3//status/",
        "*",
        "http://evil.example/v3/x",
        "/v3/status/%2e%2e",
        "/v1/apps/4294967296/x",
    ];
    match rng.below(4) {
        0 => {
            let mut p = b"/v3/device/apps/".to_vec();
            p.extend([0xc0, 0xaf, 0xff, 0x80]);
            p
        }
        1 => format!("/v3/{}", "a".repeat(1 + rng.below(200_000))).into_bytes(),
        _ => rng.pick(fixed).as_bytes().to_vec(),
    }
}

/// One malformed request as raw bytes.
fn malformed(rng: &mut Rng) -> Vec<u8> {
    let methods: &[&str] = &[
        "FOO", "get", "PUT", "TRACE", "CONNECT", "PROPFIND", "DELETE",
    ];
    match rng.below(8) {
        // Bad bodies on the routes that read one.
        0..=2 => {
            let (m, p) = rng.pick(BODY_ROUTES);
            let body = bad_body(rng);
            let ct = rng.pick(&[
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                "application/x-www-form-urlencoded",
            ]);
            let mut r = format!(
                "{m} {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend(body);
            r
        }
        // Path tricks.
        3 => {
            let mut r = format!("{} ", rng.pick(&["GET", "POST", "DELETE"])).into_bytes();
            r.extend(bad_path(rng));
            r.extend(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
            r
        }
        // Methods no route takes.
        4 => format!(
            "{} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            rng.pick(methods),
            rng.pick(&["/v3/status", "/v1/update", "/v2/device/tags", "/ping"])
        )
        .into_bytes(),
        // Broken framing and headers.
        5 => rng
            .pick(&[
                "POST /v3/device/apps/app1 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                "POST /v3/device/apps/app1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
                "POST /v3/device/apps/app1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                "GET /v3/status HTTP/9.9\r\nHost: x\r\n\r\n",
                "GET /v3/status HTTP/1.1\r\nBad Header\r\n\r\n",
                "GET /v3/status HTTP/1.1\r\nHost: \u{1}\u{2}\r\nX: \u{ff}\r\n\r\n",
            ])
            .as_bytes()
            .to_vec(),
        // Headers beyond actix-web's 128 KiB limit on a request head.
        6 => format!(
            "GET /v3/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "b".repeat(140_000 + rng.below(100_000))
        )
        .into_bytes(),
        // Raw garbage.
        _ => {
            let n = 1 + rng.below(2000);
            rng.bytes(n)
        }
    }
}

/// Sends `req` and returns the status code, or None when the connection closed without one.
fn send(addr: SocketAddr, req: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (413, 400) and close before the whole request is written.
    let _ = s.write_all(&authorised(req));
    let _ = s.shutdown(Shutdown::Write);
    status_of(&mut s)
}

fn status_of(s: &mut TcpStream) -> Option<u16> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
}

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A huge body: announced (and partly sent) beyond `api.max_body_bytes`.
fn huge(addr: SocketAddr, (method, route): (&str, &str), len: usize, chunked: bool) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    let head = format!(
        "{method} {route} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    );
    let _ = s.write_all(&authorised(head.as_bytes()));
    let chunk = vec![b'['; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let ok = if chunked {
            s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|_| s.write_all(&chunk))
                .and_then(|_| s.write_all(b"\r\n"))
        } else {
            s.write_all(&chunk)
        };
        if ok.is_err() {
            break; // the server answered and closed
        }
        sent += chunk.len();
    }
    status_of(&mut s)
}

#[test]
fn malformed_requests_get_4xx_and_the_agent_survives() {
    let home = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(AgentOpts::new(home.path()).arg("--device-api-key").arg(KEY));
    let addr = agent.addr;
    let pid = agent.pid();
    let rss_start = rss_kb(pid);

    // Sample the agent's memory throughout.
    let peak = Arc::new(AtomicU64::new(rss_start));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    const THREADS: u64 = 8;
    const PER_THREAD: usize = 400;
    let started = Instant::now();
    type Sent = (Option<u16>, Vec<u8>);
    let results: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let results = results.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                for _ in 0..PER_THREAD {
                    let req = malformed(&mut rng);
                    let status = send(addr, &req);
                    results.lock().unwrap().push((status, req));
                }
            })
        })
        .collect();

    // Meanwhile: slow clients. One trickles its headers and stops; one trickles a body and
    // stops; both must be cut off by the server (408 or closed), not held forever.
    let slow: Vec<_> = [
        b"GET /v3/status HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec(),
        b"POST /v3/device/apps/app1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\"".to_vec(),
    ]
    .into_iter()
    .map(|req| authorised(&req))
    .map(|req| {
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let t = Instant::now();
            for b in &req {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (status_of(&mut s), t.elapsed())
        })
    })
    .collect();

    for w in workers {
        w.join().unwrap();
    }

    // Huge bodies, announced and chunked, on routes that read JSON or bytes.
    let max_body = 1 << 20;
    let mut huge_statuses = vec![];
    for route in [
        ("POST", "/v3/device/apps/app1"),
        ("PATCH", "/v2/device/tags"),
        ("POST", "/v1/restart"),
    ] {
        huge_statuses.push(huge(addr, route, 4 * max_body, false));
        huge_statuses.push(huge(addr, route, 4 * max_body, true));
    }
    // An announced length far beyond anything, with no body sent.
    huge_statuses.push(huge(addr, ("POST", "/v3/device/apps/app1"), 1 << 40, false).or(Some(413)));

    let slow: Vec<_> = slow.into_iter().map(|h| h.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let elapsed = started.elapsed();

    let results = results.lock().unwrap();
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    for (s, _) in results.iter() {
        *by_status
            .entry(s.map_or("closed".into(), |c| c.to_string()))
            .or_default() += 1;
    }
    let rss_end = rss_kb(pid);
    println!(
        "hostile_api: {} malformed requests in {:.1} s: {:?}; huge bodies: {:?}; slow clients: {:?}; \
         RSS start {} kB, peak {} kB, end {} kB",
        results.len(),
        elapsed.as_secs_f64(),
        by_status,
        huge_statuses,
        slow,
        rss_start,
        peak.load(Ordering::Relaxed),
        rss_end
    );

    // Among the generated tags bodies some are valid ({} or strings only): those are stored.
    let valid_tags = |req: &[u8]| {
        let text = String::from_utf8_lossy(req);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        text.starts_with("PATCH /v2/device/tags ")
            && (body.trim().is_empty()
                || serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| {
                    v.as_object().is_some_and(|o| {
                        o.iter()
                            .all(|(k, v)| v.is_string() && !k.contains(char::is_whitespace))
                    })
                }))
    };
    let results: Vec<_> = results
        .iter()
        .filter(|(s, req)| !(*s == Some(202) && valid_tags(req)))
        .collect();
    for (s, req) in results.iter() {
        if let Some(code) = s.filter(|c| !(400..500).contains(c)) {
            eprintln!(
                "{code} for {:?}",
                String::from_utf8_lossy(&req[..req.len().min(200)])
            );
        }
    }
    for (s, req) in results.iter() {
        if let Some(code) = s {
            assert!(
                (400..500).contains(code),
                "{code} for {:?}",
                String::from_utf8_lossy(&req[..req.len().min(300)])
            );
        }
    }
    assert!(
        results.iter().filter(|(s, _)| s.is_some()).count() > results.len() / 2,
        "most malformed requests get an answer, not a dropped connection"
    );
    for s in &huge_statuses {
        assert_eq!(*s, Some(413), "huge bodies: {huge_statuses:?}");
    }
    for (s, took) in &slow {
        assert!(
            s.is_none_or(|c| c == 408 || c == 400),
            "slow client got {s:?}"
        );
        assert!(
            *took < Duration::from_secs(45),
            "slow client held for {took:?}"
        );
    }
    assert!(
        peak.load(Ordering::Relaxed) < rss_start + 32 * 1024,
        "RSS grew from {rss_start} kB to {} kB",
        peak.load(Ordering::Relaxed)
    );

    // Still alive, nothing panicked, and the API answers correctly.
    assert!(
        agent.wait_exit(Duration::from_millis(10)).is_none(),
        "the agent exited"
    );
    let logs = agent.logs().join("\n");
    assert!(!logs.contains("panicked"), "a panic in the log");
    let ping = agent.get("/ping");
    assert_eq!((ping.status, ping.body.as_str()), (200, "OK"));
    assert_eq!(agent.get("/v3/status").json()["status"], "done");
    let hello = include_str!("../../examples/hello.json");
    assert_eq!(agent.post_json("/v3/device/apps/app1", hello).status, 202);
    let dev = agent.get("/v3/device/apps/app1");
    assert!(dev.status == 200 || dev.status == 404, "{dev:?}");
    assert_eq!(agent.get("/v2/version").status, 200);
}

#[test]
fn browsers_cannot_reach_the_api_by_rebinding_or_cross_site() {
    let home = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentOpts::new(home.path()).arg("--device-api-key").arg(KEY));
    let auth = format!("Bearer {KEY}");
    let port = agent.addr.port();
    let hello = include_str!("../../examples/hello.json");
    let req = |method: &str, path: &str, extra: &[(&str, &str)], body: Option<(&str, &str)>| {
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        http_with(agent.addr, method, path, &h, body)
    };

    // DNS rebinding: a name of the attacker's resolving to 127.0.0.1. Refused, key or not.
    let evil = req("GET", "/v3/device", &[("Host", "evil.example")], None);
    assert_eq!(evil.status, 403, "{}", evil.body);
    let with_port = format!("evil.example:{port}");
    assert_eq!(
        req("GET", "/ping", &[("Host", &with_port)], None).status,
        403
    );
    let r = req(
        "POST",
        "/v3/device/apps/app1",
        &[("Host", "evil.example")],
        Some(("application/json", hello)),
    );
    assert_eq!(r.status, 403);
    // IP literals, localhost and the allowed names pass.
    let ip = format!("127.0.0.1:{port}");
    for host in [ip.as_str(), "localhost", "localhost:48484", "[::1]:1"] {
        assert_eq!(
            req("GET", "/v3/device", &[("Host", host)], None).status,
            200,
            "{host}"
        );
    }

    // Cross-site: a foreign Origin (also `null`), or the browser saying so.
    for (k, v) in [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let r = req(
            "POST",
            "/v3/device/apps/app1",
            &[(k, v)],
            Some(("application/json", hello)),
        );
        assert_eq!(r.status, 403, "{k}: {v}");
        let r = req(
            "POST",
            "/v1/update",
            &[(k, v), ("Content-Length", "0")],
            None,
        );
        assert_eq!(r.status, 403, "{k}: {v}");
    }
    let same = format!("http://127.0.0.1:{port}");
    assert_eq!(
        req("GET", "/v3/device", &[("Origin", &same)], None).status,
        200
    );

    // Bodies a browser sends without a preflight: refused on every JSON route.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = req("POST", "/v3/device/apps/app1", &[], Some((ct, hello)));
        assert_eq!(r.status, 415, "{ct}");
        let r = req("POST", "/v1/update", &[], Some((ct, r#"{"force":true}"#)));
        assert_eq!(r.status, 415, "{ct}");
    }
    assert!(
        !agent.logs().iter().any(|l| l.contains("decision=publish")),
        "nothing refused was stored"
    );
    assert!(!agent.logs().iter().any(|l| l.contains("decision=reapply")));

    // An empty POST needs no content type; JSON passes.
    let empty = [("Content-Length", "0")];
    assert_eq!(req("POST", "/v1/update", &empty, None).status, 202);
    let r = req(
        "POST",
        "/v3/device/apps/app1",
        &[],
        Some(("application/json", hello)),
    );
    assert_eq!(r.status, 202, "{}", r.body);

    // One line per refusal, with the path, never the query.
    let r = http_with(
        agent.addr,
        "GET",
        &format!("/v3/device?apikey={KEY}"),
        &[("Host", "rebound.example")],
        None,
    );
    assert_eq!(r.status, 403);
    let logs = agent.logs();
    let line = logs
        .iter()
        .find(|l| l.contains("decision=refuse") && l.contains("reason=\"host not allowed\""))
        .expect("a refusal line");
    assert!(line.contains("path=/v3/device"), "{line}");
    assert!(!logs.join("\n").contains(KEY), "the key is never logged");
    assert!(logs
        .iter()
        .any(|l| l.contains("decision=refuse") && l.contains("reason=\"cross-origin request\"")));
    assert!(logs
        .iter()
        .any(|l| l.contains("decision=refuse")
            && l.contains("reason=\"body is not application/json\"")));
}
