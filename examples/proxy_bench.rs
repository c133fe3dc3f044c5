//! What the legacy-supervisor proxy costs: the latency it adds to a small request (p50/p99,
//! against calling the upstream directly) and the memory of the helios process while 50 MB
//! bodies stream through it both ways. Figures are printed, never asserted.
//!
//! ```sh
//! cargo build --release --locked
//! cargo run --release --locked --example proxy_bench -- [--binary PATH] [--requests N]
//! ```
//! (`bash scripts/bench-proxy` does both.) It starts a small upstream standing in for the
//! legacy supervisor's device API (actix-web on 127.0.0.1:0 in its own thread: `GET /v2/version`
//! answers a short JSON, `POST /upload` counts the body, `GET /download?bytes=N` streams N
//! bytes), runs the helios binary as a separate process in front of it (`--legacy-api-endpoint`,
//! unmanaged, no engine, no bus, temporary dirs, one API worker as on a device), then:
//! * latency: N (2000) sequential `GET /v2/version` on one keep-alive connection, first to the
//!   upstream directly, then through helios; p50/p99 of each and of the difference;
//! * memory: helios's `VmRSS` before, then a 50 MB upload and a 50 MB download through it, then
//!   `VmRSS` and the peak `VmHWM` from `/proc/<pid>/status`.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures::StreamExt;

const MB50: u64 = 50 << 20;

fn upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(|| {
                App::new()
                    .route(
                        "/v2/version",
                        web::get().to(|| async {
                            HttpResponse::Ok()
                                .json(serde_json::json!({"status": "success", "version": "19.0.5"}))
                        }),
                    )
                    .route(
                        "/upload",
                        web::post().to(|mut body: web::Payload| async move {
                            let mut n = 0usize;
                            while let Some(Ok(c)) = body.next().await {
                                n += c.len();
                            }
                            HttpResponse::Ok().body(n.to_string())
                        }),
                    )
                    .route(
                        "/download",
                        web::get().to(|req: HttpRequest| async move {
                            let n: u64 = req
                                .query_string()
                                .strip_prefix("bytes=")
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            let chunk = web::Bytes::from(vec![7u8; 64 << 10]);
                            let chunks = n.div_ceil(64 << 10);
                            let body = futures::stream::iter((0..chunks).map(move |i| {
                                let left = n - i * (64 << 10);
                                Ok::<_, std::io::Error>(chunk.slice(..left.min(64 << 10) as usize))
                            }));
                            HttpResponse::Ok().body(actix_web::body::SizedStream::new(n, body))
                        }),
                    )
            })
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .expect("bind the upstream");
            tx.send(server.addrs()[0]).expect("main waits");
            let _ = server.run().await;
        })
    });
    rx.recv().expect("upstream started")
}

/// Sends one request on a keep-alive connection and reads the answer (Content-Length bodies).
fn exchange(s: &mut BufReader<TcpStream>, head: &str, body: Option<u64>) -> u64 {
    s.get_mut().write_all(head.as_bytes()).unwrap();
    if let Some(n) = body {
        let buf = vec![3u8; 64 << 10];
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            s.get_mut().write_all(&buf[..k]).unwrap();
            left -= k as u64;
        }
    }
    let mut line = String::new();
    let mut len = 0u64;
    s.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "answer {line:?}");
    loop {
        line.clear();
        s.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut left = len;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let k = s.read(&mut buf[..left.min(64 << 10) as usize]).unwrap();
        assert!(k > 0, "body cut short");
        left -= k as u64;
    }
    len
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    BufReader::new(s)
}

fn latencies(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut c = connect(addr);
    let head = format!("GET /v2/version HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    for _ in 0..100 {
        exchange(&mut c, &head, None);
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            exchange(&mut c, &head, None);
            t.elapsed()
        })
        .collect()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let get = |k: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let binary = arg("--binary").unwrap_or_else(|| "target/release/helios".into());
    let n: usize = arg("--requests").map_or(2000, |v| v.parse().unwrap());
    let up = upstream();
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(&binary)
        .env_clear()
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_STATE_HOME", home.path().join("state"))
        .env("XDG_RUNTIME_DIR", home.path().join("run"))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .env("RUST_LOG", "info")
        .args(["--local-api-address", "127.0.0.1:0", "--uuid", "bench"])
        .args(["--legacy-api-endpoint", &format!("http://{up}")])
        .args(["--legacy-api-key", "bench-key"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let helios: SocketAddr = loop {
        let l = lines.next().expect("helios listens").unwrap();
        if let Some(a) = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .filter(|_| l.contains("decision=listen"))
        {
            break a.parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(500));

    let mut direct = latencies(up, n);
    let mut proxied = latencies(helios, n);
    let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    let (p50, p99) = (pct(&mut proxied, 0.5), pct(&mut proxied, 0.99));
    println!("latency of GET /v2/version, {n} sequential requests on one keep-alive connection:");
    println!("  direct to the upstream   p50 {d50:>9.1?}  p99 {d99:>9.1?}");
    println!("  through the helios proxy p50 {p50:>9.1?}  p99 {p99:>9.1?}");
    println!(
        "  added by the proxy       p50 {:>9.1?}  p99 {:>9.1?}",
        p50.saturating_sub(d50),
        p99.saturating_sub(d99)
    );

    let (rss0, _) = rss(pid);
    let mut c = connect(helios);
    let t = Instant::now();
    exchange(
        &mut c,
        &format!(
            "POST /upload HTTP/1.1\r\nHost: {helios}\r\nContent-Length: {MB50}\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        ),
        Some(MB50),
    );
    let up_t = t.elapsed();
    let t = Instant::now();
    let got = exchange(
        &mut c,
        &format!("GET /download?bytes={MB50} HTTP/1.1\r\nHost: {helios}\r\n\r\n"),
        None,
    );
    let down_t = t.elapsed();
    assert_eq!(got, MB50);
    let (rss1, hwm) = rss(pid);
    println!("memory of the helios process (release binary, pid {pid}):");
    println!(
        "  RSS before {rss0} kB; after a 50 MB upload ({up_t:.2?}) and a 50 MB download \
         ({down_t:.2?}) through it: RSS {rss1} kB (growth {} kB), peak {hwm} kB",
        rss1 as i64 - rss0 as i64
    );
    let _ = child.kill();
    let _ = child.wait();
}
