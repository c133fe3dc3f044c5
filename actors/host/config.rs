//! Host configuration files (spec/device-api.md `GET/PATCH /v1/device/host-config`,
//! spec/behaviours.md §16, spec/registration.md §1.1): the hostname in balenaOS's config.json
//! and the redsocks proxy in the boot partition's `system-proxy/`. No bus calls here: HostActor
//! decides which path applies and restarts the units.
//!
//! balenaOS is recognised by its config.json (`<boot dir>/config.json`), not by the configured
//! OS version, so the same binary does the right thing wherever it runs; without it the host
//! is generic Linux and HostActor uses hostnamed instead (and refuses proxy settings). The
//! hostname is written into config.json keeping every other key as it was, the OS's watcher
//! applying it (spec/behaviours.md §16). The proxy lives in `system-proxy/redsocks.conf` and
//! `system-proxy/no_proxy`; a patch is merged field by field over what is configured (`{}`
//! removes the proxy) and checked before anything is written. Every file is written
//! atomically (temp file, fsync, rename, fsync of the directory): a crash leaves the old file
//! or the new one.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The proxy types redsocks knows.
pub const PROXY_TYPES: [&str; 4] = ["socks4", "socks5", "http-connect", "http-relay"];
/// DNS server used when the patch says `"dns": true`.
pub const DEFAULT_DNS: &str = "8.8.8.8:53";
/// Units restarted after the proxy changed (the first one that exists of the two names).
pub const PROXY_CONFIG_UNITS: [&str; 2] =
    ["balena-proxy-config.service", "resin-proxy-config.service"];
pub const REDSOCKS_UNIT: &str = "redsocks.service";

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("invalid host config: {0}")]
    Invalid(String),
    #[error("{} is not valid JSON", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot access {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ConfigFileError + '_ {
    move |source| ConfigFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where balenaOS keeps what host-config touches.
#[derive(Debug, Clone, PartialEq)]
pub struct BootFiles {
    pub config_json: PathBuf,
    pub boot_dir: PathBuf,
}

impl BootFiles {
    /// balenaOS is recognised by its config.json: without it, the host is generic Linux.
    pub fn present(&self) -> bool {
        self.config_json.is_file()
    }

    fn redsocks(&self) -> PathBuf {
        self.boot_dir.join("system-proxy/redsocks.conf")
    }

    fn no_proxy(&self) -> PathBuf {
        self.boot_dir.join("system-proxy/no_proxy")
    }

    pub fn read_config_json(&self) -> Result<Map<String, Value>, ConfigFileError> {
        let p = &self.config_json;
        let raw = std::fs::read(p).map_err(io(p))?;
        match serde_json::from_slice(&raw) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ConfigFileError::Invalid(format!(
                "{} is not a JSON object",
                p.display()
            ))),
            Err(source) => Err(ConfigFileError::Corrupt {
                path: p.clone(),
                source,
            }),
        }
    }

    /// The device type slug balenaOS knows: `device-type.json` `slug`, else config.json
    /// `deviceType` (spec/registration.md §1.1).
    pub fn device_type(&self) -> Option<String> {
        let from_file = std::fs::read(self.boot_dir.join("device-type.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("slug")?.as_str().map(str::to_string));
        from_file.or_else(|| {
            self.read_config_json()
                .ok()?
                .get("deviceType")?
                .as_str()
                .map(str::to_string)
        })
    }

    /// Sets config.json `hostname`, keeping every other key as it was; atomic.
    pub fn write_hostname(&self, hostname: &str) -> Result<(), ConfigFileError> {
        let mut doc = self.read_config_json()?;
        doc.insert("hostname".into(), Value::String(hostname.into()));
        let mut bytes = serde_json::to_vec(&Value::Object(doc)).expect("a JSON map serializes");
        bytes.push(b'\n');
        write_atomic(&self.config_json, &bytes)
    }

    /// The configured proxy, as the API shows it; None when there is no redsocks.conf.
    pub fn read_proxy(&self) -> Result<Option<Map<String, Value>>, ConfigFileError> {
        let path = self.redsocks();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let blocks = parse_redsocks(&text);
        let mut out = Map::new();
        if let Some(r) = blocks.get("redsocks") {
            for key in ["type", "ip", "login", "password"] {
                if let Some(v) = r.get(key) {
                    out.insert(key.into(), json!(v));
                }
            }
            if let Some(port) = r.get("port") {
                out.insert(
                    "port".into(),
                    port.parse::<u16>().map(Value::from).unwrap_or(json!(port)),
                );
            }
        }
        if let Some(d) = blocks.get("dnsu2t") {
            if let (Some(ip), Some(port)) = (d.get("remote_ip"), d.get("remote_port")) {
                out.insert("dns".into(), json!(format!("{ip}:{port}")));
            }
        }
        let np = self.no_proxy();
        match std::fs::read_to_string(&np) {
            Ok(t) => {
                let list: Vec<&str> = t.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                if !list.is_empty() {
                    out.insert("noProxy".into(), json!(list));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&np)(e)),
        }
        Ok(Some(out))
    }

    /// Merges `patch` field by field over the current proxy and writes the files; `{}`
    /// removes the proxy. Returns the proxy now configured.
    pub fn patch_proxy(
        &self,
        patch: &Map<String, Value>,
    ) -> Result<Option<Map<String, Value>>, ConfigFileError> {
        let merged = merge_proxy(self.read_proxy()?, patch)?;
        let (conf, np) = (self.redsocks(), self.no_proxy());
        match &merged {
            None => {
                for p in [&conf, &np] {
                    match std::fs::remove_file(p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io(p)(e)),
                    }
                }
            }
            Some(proxy) => {
                if let Some(dir) = conf.parent() {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                write_atomic(&conf, render_redsocks(proxy).as_bytes())?;
                match proxy.get("noProxy").and_then(Value::as_array) {
                    Some(list) => {
                        let mut text = String::new();
                        for x in list.iter().filter_map(Value::as_str) {
                            text.push_str(x);
                            text.push('\n');
                        }
                        write_atomic(&np, text.as_bytes())?;
                    }
                    None => match std::fs::remove_file(&np) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io(&np)(e)),
                    },
                }
            }
        }
        Ok(merged)
    }
}

/// Checks a patch's fields and merges them over `current`; `{}` means "no proxy".
pub fn merge_proxy(
    current: Option<Map<String, Value>>,
    patch: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, ConfigFileError> {
    if patch.is_empty() {
        return Ok(None);
    }
    let bad = |k: &str, why: &str| ConfigFileError::Invalid(format!("proxy.{k}: {why}"));
    let mut out = current.unwrap_or_default();
    for (k, v) in patch {
        match k.as_str() {
            "type" => match v.as_str() {
                Some(t) if PROXY_TYPES.contains(&t) => {
                    out.insert(k.clone(), v.clone());
                }
                _ => {
                    return Err(bad(
                        k,
                        &format!("must be one of {}", PROXY_TYPES.join(", ")),
                    ))
                }
            },
            "ip" | "login" | "password" => match v.as_str() {
                Some(s) if !s.is_empty() && safe_value(s) => {
                    out.insert(k.clone(), v.clone());
                }
                _ => {
                    return Err(bad(
                        k,
                        "must be a non-empty string without quotes, ';' or newlines",
                    ))
                }
            },
            "port" => {
                let port = match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse::<u64>().ok(),
                    _ => None,
                };
                match port {
                    Some(p @ 1..=65535) => {
                        out.insert(k.clone(), json!(p));
                    }
                    _ => return Err(bad(k, "must be a port number 1-65535")),
                }
            }
            "dns" => match v {
                Value::Bool(true) => {
                    out.insert(k.clone(), json!(DEFAULT_DNS));
                }
                Value::Bool(false) => {
                    out.remove(k);
                }
                Value::String(s) if parse_dns(s).is_some() => {
                    out.insert(k.clone(), v.clone());
                }
                _ => return Err(bad(k, "must be \"ADDRESS:PORT\", true or false")),
            },
            "noProxy" => match v.as_array() {
                Some(list)
                    if list
                        .iter()
                        .all(|x| x.as_str().is_some_and(|s| !s.is_empty() && safe_value(s))) =>
                {
                    out.insert(k.clone(), v.clone());
                }
                _ => return Err(bad(k, "must be an array of addresses or subnets")),
            },
            other => return Err(bad(other, "unknown field")),
        }
    }
    for required in ["type", "ip", "port"] {
        if !out.contains_key(required) {
            return Err(bad(required, "missing"));
        }
    }
    Ok(Some(out))
}

/// Nothing that could break out of a redsocks value or a no_proxy line.
fn safe_value(s: &str) -> bool {
    !s.chars()
        .any(|c| c == '"' || c == ';' || c == '{' || c == '}' || c.is_control())
}

fn parse_dns(s: &str) -> Option<(&str, u16)> {
    let (ip, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!ip.is_empty() && safe_value(ip)).then_some((ip, port))
}

/// `name { key = value; ... }` blocks; quoted values unquoted.
fn parse_redsocks(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("").trim();
        if let Some(name) = line.strip_suffix('{') {
            block = Some(name.trim().to_string());
            continue;
        }
        if line.starts_with('}') {
            block = None;
            continue;
        }
        let (Some(b), Some((k, v))) = (&block, line.trim_end_matches(';').split_once('=')) else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        out.entry(b.clone())
            .or_default()
            .insert(k.trim().to_string(), v);
    }
    out
}

fn render_redsocks(p: &Map<String, Value>) -> String {
    let s = |k: &str| match p.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let mut out = String::from(
        "base {\n\tlog_debug = off;\n\tlog_info = on;\n\tlog = stderr;\n\tdaemon = off;\n\tredirector = iptables;\n}\n\n",
    );
    out.push_str(&format!(
        "redsocks {{\n\ttype = {};\n\tip = {};\n\tport = {};\n\tlocal_ip = 127.0.0.1;\n\tlocal_port = 12345;\n",
        s("type"),
        s("ip"),
        s("port")
    ));
    for k in ["login", "password"] {
        if p.contains_key(k) {
            out.push_str(&format!("\t{k} = \"{}\";\n", s(k)));
        }
    }
    out.push_str("}\n");
    if let Some((ip, port)) = p.get("dns").and_then(Value::as_str).and_then(parse_dns) {
        out.push_str(&format!(
            "\ndnsu2t {{\n\tlocal_ip = 127.0.0.2;\n\tlocal_port = 53;\n\tremote_ip = {ip};\n\tremote_port = {port};\n}}\n"
        ));
    }
    out
}

/// Write a temp file beside `path`, fsync, rename over it, fsync the directory: a crash leaves
/// the old or the new file, never a truncated one (spec/registration.md §1.1).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ConfigFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.helios-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, BootFiles) {
        let d = tempfile::tempdir().unwrap();
        let f = BootFiles {
            config_json: d.path().join("config.json"),
            boot_dir: d.path().to_path_buf(),
        };
        (d, f)
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn hostname_is_written_keeping_other_keys() {
        let (_d, f) = files();
        assert!(!f.present());
        std::fs::write(&f.config_json, r#"{"uuid":"abc","deviceApiKey":"k"}"#).unwrap();
        assert!(f.present());
        f.write_hostname("kitchen").unwrap();
        let doc = f.read_config_json().unwrap();
        assert_eq!(doc["hostname"], "kitchen");
        assert_eq!(doc["uuid"], "abc");
        assert_eq!(doc["deviceApiKey"], "k");
    }

    #[test]
    fn corrupt_config_json_is_not_overwritten() {
        let (_d, f) = files();
        std::fs::write(&f.config_json, "{not json").unwrap();
        assert!(matches!(
            f.write_hostname("x"),
            Err(ConfigFileError::Corrupt { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&f.config_json).unwrap(),
            "{not json"
        );
    }

    #[test]
    fn proxy_round_trips_merges_and_is_removed_by_an_empty_patch() {
        let (_d, f) = files();
        assert_eq!(f.read_proxy().unwrap(), None);
        let p = obj(
            json!({"type": "socks5", "ip": "192.168.0.199", "port": 8123,
            "login": "user", "password": "pass", "noProxy": ["152.10.30.4", "253.1.1.0/16"], "dns": true}),
        );
        f.patch_proxy(&p).unwrap();
        let got = f.read_proxy().unwrap().unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"type": "socks5", "ip": "192.168.0.199", "port": 8123, "login": "user",
                "password": "pass", "noProxy": ["152.10.30.4", "253.1.1.0/16"], "dns": "8.8.8.8:53"})
        );
        // Field by field: only the port changes; dns false removes it.
        f.patch_proxy(&obj(json!({"port": "9000", "dns": false})))
            .unwrap();
        let got = f.read_proxy().unwrap().unwrap();
        assert_eq!(got["port"], 9000);
        assert_eq!(got["ip"], "192.168.0.199");
        assert!(!got.contains_key("dns"));
        f.patch_proxy(&Map::new()).unwrap();
        assert_eq!(f.read_proxy().unwrap(), None);
        assert!(!f.boot_dir.join("system-proxy/no_proxy").exists());
    }

    #[test]
    fn bad_proxy_fields_are_refused_and_nothing_is_written() {
        let (_d, f) = files();
        for bad in [
            json!({"type": "ftp", "ip": "1.2.3.4", "port": 1}),
            json!({"type": "socks5", "ip": "1.2.3.4", "port": 0}),
            json!({"type": "socks5", "ip": "1.2.3.4\";\nlog_debug = on", "port": 1}),
            json!({"type": "socks5", "ip": "1.2.3.4", "port": 1, "dns": "nope"}),
            json!({"type": "socks5", "ip": "1.2.3.4", "port": 1, "noProxy": "1.1.1.1"}),
            json!({"type": "socks5", "ip": "1.2.3.4", "port": 1, "extra": 1}),
            json!({"ip": "1.2.3.4"}),
        ] {
            assert!(
                matches!(
                    f.patch_proxy(&obj(bad.clone())),
                    Err(ConfigFileError::Invalid(_))
                ),
                "{bad}"
            );
            assert_eq!(f.read_proxy().unwrap(), None, "{bad}");
        }
    }
}
