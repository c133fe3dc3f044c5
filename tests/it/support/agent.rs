//! Runs the real `helios` binary as a child process with its own dirs, captures its log lines,
//! and talks HTTP to it over loopback (a tiny blocking HTTP/1.0 client, no runtime needed).
//! [`http`] (and `Agent::get`...) present the agent's global API key, which its TCP listener
//! requires: the configured one, else the one it generated into its config file at start.
//! [`http_with`] sends only the headers it is given.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The global key of each running agent, by API address (for [`http`]).
static KEYS: Mutex<Vec<(SocketAddr, String)>> = Mutex::new(Vec::new());

/// The global API key of the agent listening on `addr`, if one was started here.
pub fn key_of(addr: SocketAddr) -> Option<String> {
    let keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    keys.iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, k)| k.clone())
}

/// `Authorization: Bearer <key>` for the agent on `addr` (empty when none is known).
pub fn auth_header(addr: SocketAddr) -> Vec<(&'static str, String)> {
    key_of(addr)
        .map(|k| vec![("Authorization", format!("Bearer {k}"))])
        .unwrap_or_default()
}

/// A started agent. Killed on drop.
pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    /// Its global API key (configured, or generated and saved at start).
    pub key: String,
    logs: Arc<Mutex<Vec<String>>>,
}

/// How to start an agent: extra flags and environment, and the home dir its XDG dirs live in.
#[derive(Clone)]
pub struct AgentOpts {
    pub home: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl AgentOpts {
    pub fn new(home: &Path) -> AgentOpts {
        AgentOpts {
            home: home.to_path_buf(),
            args: vec![],
            env: vec![],
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }
    /// The store dir the agent uses with these options.
    pub fn state_dir(&self) -> PathBuf {
        self.home.join("state/helios")
    }
    /// The config file the agent uses with these options: `--config`, else `HELIOS_CONFIG`,
    /// else the XDG default under the home dir.
    pub fn config_path(&self) -> PathBuf {
        let flag = self
            .args
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| self.args.get(i + 1));
        let env = self
            .env
            .iter()
            .find(|(k, _)| k == "HELIOS_CONFIG")
            .map(|(_, v)| v);
        match flag.or(env) {
            Some(p) => PathBuf::from(p),
            None => self.home.join("config/helios/config.toml"),
        }
    }
}

pub fn helios_command(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_helios"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("RUST_LOG", "info,helios=debug,helios_actors=debug")
        // No engine and no bus unless a test gives them.
        .env(
            "DOCKER_HOST",
            format!("unix://{}", home.join("no-engine.sock").display()),
        )
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}", home.join("no-bus.sock").display()),
        );
    cmd
}

impl Agent {
    /// Starts the agent on 127.0.0.1:0 and waits until it says where it listens.
    pub fn start(opts: AgentOpts) -> Agent {
        std::fs::create_dir_all(&opts.home).unwrap();
        let mut cmd = helios_command(&opts.home);
        cmd.arg("--local-api-address").arg("127.0.0.1:0");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.args(&opts.args)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("helios starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[agent] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut agent = Agent {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            key: String::new(),
            logs,
        };
        let line = agent
            .wait_log(|l| l.contains("decision=listen"), Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "agent never listened; exit: {:?}; logs:\n{}",
                    agent.child.try_wait(),
                    agent.logs().join("\n")
                )
            });
        let addr = field(&line, "address").expect("address field");
        agent.addr = addr.parse().expect("TCP address");
        agent.key = configured_key(&opts).unwrap_or_else(|| {
            saved_key(&opts.config_path())
                .unwrap_or_else(|| panic!("no device API key in {}", opts.config_path().display()))
        });
        KEYS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((agent.addr, agent.key.clone()));
        agent
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for a log line matching `pred`, seen at any time since the start.
    pub fn wait_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_log_after(0, pred, timeout)
    }

    /// Waits for a log line matching `pred` among the lines after the first `skip`.
    pub fn wait_log_after(
        &self,
        skip: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.logs().into_iter().skip(skip).find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/v3/status` says `want` (panics with the last status after `timeout`).
    pub fn wait_status(&self, want: &str, timeout: Duration) {
        let got = eventually(timeout, || {
            (self.get("/v3/status").json()["status"] == want).then_some(())
        });
        assert!(
            got.is_some(),
            "status never became {want}; last: {}",
            self.get("/v3/status").body
        );
    }

    pub fn get(&self, path: &str) -> Response {
        http(self.addr, "GET", path, None)
    }

    /// `Authorization: Bearer <its global key>`.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }

    pub fn post_json(&self, path: &str, body: &str) -> Response {
        http(self.addr, "POST", path, Some(("application/json", body)))
    }

    pub fn patch_json(&self, path: &str, body: &str) -> Response {
        http(self.addr, "PATCH", path, Some(("application/json", body)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        KEYS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(a, _)| *a != self.addr);
    }
}

/// The key given by `--device-api-key` or `HELIOS_DEVICE_API_KEY` (the flag wins).
fn configured_key(opts: &AgentOpts) -> Option<String> {
    let flag = opts
        .args
        .iter()
        .position(|a| a == "--device-api-key")
        .and_then(|i| opts.args.get(i + 1).cloned());
    flag.or_else(|| {
        opts.env
            .iter()
            .rev()
            .find(|(k, _)| k == "HELIOS_DEVICE_API_KEY")
            .map(|(_, v)| v.clone())
    })
}

/// `api.device_api_key` of a config file.
pub fn saved_key(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    Some(v.get("api")?.get("device_api_key")?.as_str()?.to_string())
}

/// Value of `key=value` (or `key="value"`) in a log line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        Some(q[..q.find('"')?].to_string())
    } else {
        Some(rest.split_whitespace().next().unwrap_or("").to_string())
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.0 request with the agent's global key (the server closes the connection after
/// the response).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<(&str, &str)>) -> Response {
    let auth = auth_header(addr);
    let headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http_with(addr, method, path, &headers, body)
}

/// One HTTP/1.0 request with `Host: <addr>` and only the given headers.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some((ct, b)) = body {
        req.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some((_, b)) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
