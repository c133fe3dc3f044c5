//! Host facts and hardware metrics for the state report (spec/state-report-v3.md §2.1, §5.4, §7):
//! small reads of /proc, /sys and /etc under a root (tests use a fake one), plus getifaddrs and
//! statvfs on the live system. Blocking but cheap: CPU usage is the delta since the last call.
use serde::Serialize;
use serde_json::{Map, Value};
use std::ffi::{CStr, CString};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Metric keys (§5.3): a diff made only of these is rate-limited.
pub const METRIC_KEYS: [&str; 8] = [
    "cpu_usage",
    "memory_usage",
    "memory_total",
    "storage_usage",
    "storage_total",
    "storage_block_device",
    "cpu_temp",
    "cpu_id",
];

/// Device-level report fields that come from the host (state-report-v3.md §2.1, §7).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct HostFacts {
    /// `PRETTY_NAME` from `<root>/etc/os-release`.
    pub os_version: Option<String>,
    /// `VARIANT_ID`; the caller applies the §2.1 `developmentMode` fallback when None.
    pub os_variant: Option<String>,
    /// Space-separated addresses (§7); None only when getifaddrs failed. Never `null` on the wire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Space-separated upper-case MACs (§7); None only when `/sys/class/net` is unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

/// Hardware metrics (§2.1); None when the source could not be read.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Metrics {
    pub cpu_usage: Option<u64>,
    pub cpu_temp: Option<u64>,
    pub cpu_id: Option<String>,
    pub memory_usage: Option<u64>,
    pub memory_total: Option<u64>,
    pub storage_block_device: Option<String>,
    pub storage_usage: Option<u64>,
    pub storage_total: Option<u64>,
}

impl Metrics {
    /// All eight §2.1 metric keys, `null` when unknown.
    pub fn to_json(&self) -> Map<String, Value> {
        object(self)
    }
}

impl HostFacts {
    /// `os_*` may be `null`; the API rejects `null` addresses, so unknown ones are omitted.
    pub fn to_json(&self) -> Map<String, Value> {
        object(self)
    }
}

fn object(v: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(), // unreachable: both structs serialise to objects
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuSample {
    busy: u64,
    total: u64,
}

/// Reads host facts and metrics. `root` redirects file reads only; getifaddrs and statvfs are live.
#[derive(Debug)]
pub struct SysInfo {
    root: PathBuf,
    data_path: PathBuf,
    prev_cpu: Option<CpuSample>,
    last_cpu_usage: Option<u64>,
}

impl SysInfo {
    pub fn new(data_path: &Path) -> SysInfo {
        SysInfo::with_root(Path::new("/"), data_path)
    }

    pub fn with_root(root: &Path, data_path: &Path) -> SysInfo {
        let (root, data_path) = (root.to_path_buf(), data_path.to_path_buf());
        SysInfo {
            root,
            data_path,
            prev_cpu: None,
            last_cpu_usage: None,
        }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn read(&self, abs: &str) -> Option<String> {
        fs::read_to_string(self.path(abs)).ok()
    }

    pub fn host_facts(&self) -> HostFacts {
        let os = self.read("/etc/os-release").unwrap_or_default();
        HostFacts {
            os_version: os_release_value(&os, "PRETTY_NAME"),
            os_variant: os_release_value(&os, "VARIANT_ID"),
            ip_address: interface_addresses().map(|a| select_ips(&a).join(" ")),
            mac_address: self.mac_addresses().map(|m| m.join(" ")),
        }
    }

    /// `cpu_usage` is None on the first call (no previous sample), then the delta since it.
    pub fn metrics(&mut self) -> Metrics {
        let (memory_usage, memory_total) = self.memory().unzip();
        let (storage_usage, storage_total) = statvfs_mib(&self.data_path).unzip();
        Metrics {
            cpu_usage: self.cpu_usage(),
            cpu_temp: self.cpu_temp(),
            cpu_id: self.cpu_id(),
            memory_usage,
            memory_total,
            storage_block_device: self.block_device(),
            storage_usage,
            storage_total,
        }
    }

    /// Busy share of all cores together (the aggregate `cpu` line), rounded.
    fn cpu_usage(&mut self) -> Option<u64> {
        let now = parse_cpu_sample(&self.read("/proc/stat")?)?;
        match self.prev_cpu {
            Some(prev) if now.total > prev.total => {
                let dt = now.total - prev.total;
                let busy = now.busy.saturating_sub(prev.busy).min(dt);
                self.last_cpu_usage = Some((busy * 100 + dt / 2) / dt);
                self.prev_cpu = Some(now);
            }
            // No tick since the previous sample: keep it, and the last value.
            Some(prev) if now.total == prev.total => {}
            _ => self.prev_cpu = Some(now),
        }
        self.last_cpu_usage
    }

    /// The first readable cpu/soc/x86_pkg zone, else zone0; negative readings give None.
    fn cpu_temp(&self) -> Option<u64> {
        let mut zones: Vec<(u32, PathBuf)> = Vec::new();
        let dir = fs::read_dir(self.path("/sys/class/thermal")).ok()?;
        for entry in dir.flatten() {
            let name = entry.file_name().into_string().unwrap_or_default();
            if let Some(Ok(n)) = name.strip_prefix("thermal_zone").map(str::parse) {
                zones.push((n, entry.path()));
            }
        }
        zones.sort();
        let temp = |zone: &Path| {
            let milli: i64 = read_trimmed(&zone.join("temp")).parse().ok()?;
            u64::try_from((milli + 500).div_euclid(1000)).ok()
        };
        let is_cpu = |zone: &Path| {
            let kind = read_trimmed(&zone.join("type")).to_lowercase();
            kind.contains("cpu") || kind.contains("soc") || kind.starts_with("x86_pkg")
        };
        let cpu = zones.iter().filter(|(_, z)| is_cpu(z));
        let zone0 = zones.iter().filter(|(n, _)| *n == 0);
        cpu.chain(zone0).find_map(|(_, z)| temp(z))
    }

    /// The board serial (§2.1) without the dmidecode fallback.
    fn cpu_id(&self) -> Option<String> {
        let paths = [
            "/proc/device-tree/serial-number",
            "/proc/device-tree/product-sn",
            "/sys/devices/soc0/serial_number",
        ];
        let id = |p: &&str| Some(read_trimmed(&self.path(p)).to_lowercase());
        paths.iter().filter_map(id).find(|id| !id.is_empty())
    }

    /// (used, total) MiB; used = total − free − cached − buffers − reclaimable (§2.1).
    fn memory(&self) -> Option<(u64, u64)> {
        let text = self.read("/proc/meminfo")?;
        let kib = |key: &str| {
            let mut lines = text.lines();
            let line = lines.find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
            line.split_whitespace().next()?.parse::<u64>().ok()
        };
        let total = kib("MemTotal")?;
        let mut used = total.saturating_sub(kib("MemFree")?);
        for key in ["Cached", "Buffers", "SReclaimable"] {
            used = used.saturating_sub(kib(key).unwrap_or(0));
        }
        Some((used / 1024, total / 1024))
    }

    /// The source of the innermost mount holding `data_path` (from mountinfo: `… mountpoint …
    /// - fstype source …`); `""` when that is not a `/dev/` device.
    fn block_device(&self) -> Option<String> {
        let data = match self.root == Path::new("/") {
            true => fs::canonicalize(&self.data_path).unwrap_or_else(|_| self.data_path.clone()),
            false => self.data_path.clone(),
        };
        let best = self
            .read("/proc/self/mountinfo")?
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                let source = f.get(f.iter().position(|x| *x == "-")? + 2)?;
                Some((PathBuf::from(unescape(f.get(4)?)), unescape(source)))
            })
            .filter(|(mount, _)| data.starts_with(mount))
            .max_by_key(|(mount, _)| mount.components().count()); // the last of equals covers
        let mut src = best.map(|(_, src)| src).unwrap_or_default();
        if !src.starts_with("/dev/") {
            src.clear();
        }
        Some(src)
    }

    /// §7: Ethernet-like (`type` 1), not enslaved (`master`), not excluded; sorted by name.
    fn mac_addresses(&self) -> Option<Vec<String>> {
        let dir = self.path("/sys/class/net");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !excluded_iface(n))
            .collect();
        names.sort();
        let mut out: Vec<String> = Vec::new();
        for iface in names.iter().map(|n| dir.join(n)) {
            let ether = read_trimmed(&iface.join("type")) == "1";
            let addr = read_trimmed(&iface.join("address")).to_uppercase();
            let enslaved = iface.join("master").symlink_metadata().is_ok();
            if ether && !enslaved && !addr.is_empty() && !out.contains(&addr) {
                out.push(addr);
            }
        }
        Some(out)
    }
}

/// The §5.4 "significant change" rule: returns the value to report given the last reported one.
pub fn smooth(key: &str, last: Option<&Value>, new: &Value) -> Value {
    let bucket = match key {
        "cpu_usage" => 20.0,
        "cpu_temp" => 5.0,
        "memory_usage" => 10.0,
        _ => return new.clone(),
    };
    let same = |o: f64, n: f64| (o / bucket).floor() == (n / bucket).floor();
    match (last, last.and_then(Value::as_f64), new.as_f64()) {
        (Some(old), Some(o), Some(n)) if same(o, n) => old.clone(),
        _ => new.clone(),
    }
}

/// The last `KEY=value` in os-release, unquoted; empty gives None.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    let mut values = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='));
    let raw = values.next_back()?.trim();
    let quoted = |q: char| raw.strip_prefix(q).and_then(|r| r.strip_suffix(q));
    let mut value = String::new();
    if let Some(inner) = quoted('"') {
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            value.extend(if c == '\\' { chars.next() } else { Some(c) });
        }
    } else {
        value.push_str(quoted('\'').unwrap_or(raw));
    }
    Some(value).filter(|v| !v.is_empty())
}

/// The aggregate `cpu` line: busy = total − idle − iowait, over the first eight counters.
fn parse_cpu_sample(stat: &str) -> Option<CpuSample> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields = line.split_whitespace().skip(1).take(8);
    let f: Vec<u64> = fields.map_while(|v| v.parse().ok()).collect();
    let total: u64 = f.iter().sum();
    let busy = total.saturating_sub(f.get(3)? + f.get(4).unwrap_or(&0));
    Some(CpuSample { busy, total })
}

/// The file's text without NUL bytes and surrounding whitespace; `""` when unreadable.
fn read_trimmed(path: &Path) -> String {
    let raw = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw).replace('\0', "");
    text.trim().to_string()
}

/// The kernel escapes space, tab, newline and backslash in mount tables as `\ooo`.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// MiB (used, total) of the filesystem holding `path`. A simplification of §2.1, which sums usage
/// over every partition of the block device: we report only the data filesystem itself.
#[allow(clippy::unnecessary_cast)] // the statvfs fields are u32 on some 32-bit targets
fn statvfs_mib(path: &Path) -> Option<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` is writable memory of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled `st` (which was zeroed anyway).
    let st = unsafe { st.assume_init() };
    let (blocks, frsize) = (st.f_blocks as u64, st.f_frsize as u64);
    let used = blocks.saturating_sub(st.f_bfree as u64) * frsize;
    Some((used >> 20, (blocks * frsize) >> 20))
}

#[derive(Debug, Clone, PartialEq)]
struct IfAddr {
    name: String,
    ip: IpAddr,
    loopback: bool,
    scope_id: u32,
}

/// Every address of every interface of the live system, or None when getifaddrs fails.
fn interface_addresses() -> Option<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we free once below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let (mut out, mut cur) = (Vec::new(), head);
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which is not freed yet.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr's family tells its real type; read_unaligned copies it out.
        let (ip, scope_id) = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin: libc::sockaddr_in = std::ptr::read_unaligned(ifa.ifa_addr.cast());
                    (Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()).into(), 0)
                }
                libc::AF_INET6 => {
                    let sin6: libc::sockaddr_in6 = std::ptr::read_unaligned(ifa.ifa_addr.cast());
                    (
                        Ipv6Addr::from(sin6.sin6_addr.s6_addr).into(),
                        sin6.sin6_scope_id,
                    )
                }
                _ => continue,
            }
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        let name = name.into_owned();
        let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        out.push(IfAddr {
            name,
            ip,
            loopback,
            scope_id,
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Some(out)
}

/// §7: non-internal IPv4 and scope-0 IPv6 addresses of non-excluded interfaces, de-duplicated.
fn select_ips(addrs: &[IfAddr]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in addrs.iter().filter(|a| !excluded_iface(&a.name)) {
        let keep = (a.ip.is_ipv4() && !a.loopback) || (a.ip.is_ipv6() && a.scope_id == 0);
        let ip = a.ip.to_string();
        if keep && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// The §7 regex by hand: `^(?:(?:balena|docker|rce|tun)[0-9]+|tun[0-9]+|resin-vpn|lo|resin-dns|
/// supervisor0|balena-redsocks|resin-redsocks|br-[0-9a-f]{12})$`.
fn excluded_iface(name: &str) -> bool {
    let exact = "resin-vpn lo resin-dns supervisor0 balena-redsocks resin-redsocks";
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex12 =
        |s: &str| s.len() == 12 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let numbered = |p: &str| name.strip_prefix(p).is_some_and(digits);
    exact.split(' ').any(|e| e == name)
        || ["balena", "docker", "rce", "tun"].into_iter().any(numbered)
        || name.strip_prefix("br-").is_some_and(hex12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
        fs::write(p, content).expect("write");
    }

    #[test]
    fn metrics_from_a_fake_root() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (root, data) = (tmp.path(), tmp.path().join("my data"));
        fs::create_dir_all(&data).expect("mkdir");
        let meminfo = "MemTotal: 4046000 kB\nMemFree: 1000000 kB\nBuffers: 100000 kB\n\
            Cached: 500000 kB\nSwapCached: 7 kB\nSReclaimable: 40000 kB\n";
        put(root, "proc/meminfo", meminfo);
        put(
            root,
            "proc/stat",
            "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n",
        );
        for (zone, kind, milli) in [
            (0, "acpitz", 30000),
            (2, "cpu-thermal", 47600),
            (10, "soc", 90000),
        ] {
            put(
                root,
                &format!("sys/class/thermal/thermal_zone{zone}/type"),
                &format!("{kind}\n"),
            );
            put(
                root,
                &format!("sys/class/thermal/thermal_zone{zone}/temp"),
                &format!("{milli}\n"),
            );
        }
        put(
            root,
            "proc/device-tree/serial-number",
            "  00000000ABCdef12\0\n",
        );
        let data_mount = data.display().to_string().replace(' ', "\\040");
        let mountinfo = format!(
            "20 1 8:2 / / rw - ext4 /dev/sda2 rw\n\
             30 20 179:6 / {data_mount} rw shared:1 - ext4 /dev/mmcblk0p5 rw\n\
             31 20 179:6 /x {data_mount} rw shared:1 - ext4 /dev/mmcblk0p6 rw\n\
             32 20 0:5 / {data_mount}/sub rw - tmpfs tmpfs rw\n"
        );
        put(root, "proc/self/mountinfo", &mountinfo);
        let mut sys = SysInfo::with_root(root, &data);

        let m = sys.metrics();
        assert_eq!((m.cpu_usage, m.cpu_temp), (None, Some(48)));
        assert_eq!(m.cpu_id.as_deref(), Some("00000000abcdef12"));
        // (4046000 - 1000000 - 500000 - 100000 - 40000) / 1024
        assert_eq!((m.memory_usage, m.memory_total), (Some(2349), Some(3951)));
        assert_eq!(m.storage_block_device.as_deref(), Some("/dev/mmcblk0p6"));
        assert!(m.storage_total.is_some_and(|t| t > 0) && m.storage_usage.is_some());

        put(root, "proc/stat", "cpu  150 0 150 900 0 0 0 0 0 0\n");
        assert_eq!(sys.metrics().cpu_usage, Some(50));
        // No tick in between: the last value stands instead of turning into null.
        assert_eq!(sys.metrics().cpu_usage, Some(50));
        put(root, "proc/stat", "cpu  150 0 160 980 10 0 0 0 0 0\n");
        assert_eq!(sys.metrics().cpu_usage, Some(10));

        // Without a cpu-like zone, zone0; without a /dev source, "".
        fs::remove_dir_all(root.join("sys/class/thermal/thermal_zone2")).expect("rm");
        fs::remove_dir_all(root.join("sys/class/thermal/thermal_zone10")).expect("rm");
        put(
            root,
            "proc/self/mountinfo",
            "20 1 0:2 / / rw - overlay overlay rw\n",
        );
        let m = sys.metrics();
        assert_eq!(
            (m.cpu_temp, m.storage_block_device.as_deref()),
            (Some(30), Some(""))
        );
    }

    #[test]
    fn empty_root_gives_nothing() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut sys = SysInfo::with_root(tmp.path(), &tmp.path().join("missing"));
        assert_eq!(sys.metrics(), Metrics::default());
        let facts = sys.host_facts();
        assert_eq!(
            (facts.os_version, facts.os_variant, facts.mac_address),
            (None, None, None)
        );
    }

    #[test]
    fn host_facts_from_a_fake_root() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path();
        let os = "ID=balena-os\nPRETTY_NAME=\"balenaOS 6.5 \\\"x\\\"\"\nVARIANT_ID='dev'\n";
        put(root, "etc/os-release", os);
        for (name, kind, addr) in [
            ("wlan0", "1", "11:22:33:44:55:66"),
            ("eth0", "1", "aa:bb:cc:dd:ee:ff"),
            ("eth2", "1", "AA:BB:CC:DD:EE:FF"), // duplicate
            ("eth1", "1", "01:01:01:01:01:01"), // bond member, below
            ("lo", "772", "00:00:00:00:00:00"),
            ("wwan0", "65534", ""),
            ("docker0", "1", "02:42:00:00:00:01"),
            ("br-0123456789ab", "1", "02:42:00:00:00:02"),
            ("br-lan", "1", "02:42:00:00:00:03"),
        ] {
            put(
                root,
                &format!("sys/class/net/{name}/type"),
                &format!("{kind}\n"),
            );
            put(
                root,
                &format!("sys/class/net/{name}/address"),
                &format!("{addr}\n"),
            );
        }
        put(root, "sys/class/net/eth1/master", "");
        let facts = SysInfo::with_root(root, root).host_facts();
        assert_eq!(facts.os_version.as_deref(), Some("balenaOS 6.5 \"x\""));
        assert_eq!(facts.os_variant.as_deref(), Some("dev"));
        let macs = "02:42:00:00:00:03 AA:BB:CC:DD:EE:FF 11:22:33:44:55:66";
        assert_eq!(facts.mac_address.as_deref(), Some(macs));
        let ips = facts.ip_address.expect("getifaddrs works here");
        assert!(
            !ips.split(' ').any(|ip| ip == "127.0.0.1" || ip == "::1"),
            "{ips}"
        );
    }

    #[test]
    fn excluded_interface_names() {
        let excluded = "lo balena0 docker12 rce3 tun0 resin-vpn resin-dns supervisor0 \
            balena-redsocks resin-redsocks br-0123456789ab";
        assert!(excluded.split(' ').all(excluded_iface));
        let kept = "eth0 wlan0 lo0 docker tun balena0a supervisor1 br-0123456789AB \
            br-0123456789a br-0123456789abc xbalena0 resin-vpn0";
        assert!(!kept.split(' ').any(excluded_iface));
    }

    #[test]
    fn ip_selection() {
        let a = |name: &str, ip: &str, loopback: bool, scope_id: u32| {
            let (name, ip) = (name.to_string(), ip.parse().expect("ip"));
            IfAddr {
                name,
                ip,
                loopback,
                scope_id,
            }
        };
        let addrs = [
            a("eth0", "192.168.1.5", false, 0),
            a("eth0", "fe80::1", false, 2),
            a("eth0", "2001:db8::5", false, 0),
            a("wlan0", "192.168.1.5", false, 0),
            a("dummy", "127.0.0.2", true, 0),
            a("balena0", "10.114.104.1", false, 0),
            a("br-0123456789ab", "172.17.0.1", false, 0),
            a("wlan0", "10.0.0.7", false, 0),
        ];
        assert_eq!(
            select_ips(&addrs),
            ["192.168.1.5", "2001:db8::5", "10.0.0.7"]
        );
    }

    #[test]
    fn smoothing_buckets() {
        let s = |key: &str, last: Option<Value>, new: Value| smooth(key, last.as_ref(), &new);
        let cases = [
            ("cpu_usage", Some(json!(21)), json!(39), json!(21)),
            ("cpu_usage", Some(json!(39)), json!(40), json!(40)),
            ("cpu_usage", Some(json!(5)), json!(0), json!(5)),
            ("cpu_temp", Some(json!(45)), json!(49), json!(45)),
            ("cpu_temp", Some(json!(49)), json!(50), json!(50)),
            ("memory_usage", Some(json!(100)), json!(109), json!(100)),
            ("memory_usage", Some(json!(109)), json!(110), json!(110)),
            ("memory_total", Some(json!(100)), json!(101), json!(101)),
            ("storage_usage", Some(json!(7)), json!(8), json!(8)),
            ("cpu_id", Some(json!("a")), json!("b"), json!("b")),
            // A missing or null previous value, and a null new value, always count.
            ("cpu_usage", None, json!(3), json!(3)),
            ("cpu_usage", Some(Value::Null), json!(3), json!(3)),
            ("cpu_temp", Some(json!(40)), Value::Null, Value::Null),
            ("memory_usage", Some(json!(40)), Value::Null, Value::Null),
        ];
        for (key, last, new, want) in cases {
            assert_eq!(
                s(key, last.clone(), new.clone()),
                want,
                "{key} {last:?} -> {new}"
            );
        }
    }

    #[test]
    fn json_shapes() {
        let m = Metrics {
            cpu_usage: Some(12),
            cpu_id: Some("ab".into()),
            ..Metrics::default()
        };
        let j = m.to_json();
        assert_eq!(j.len(), METRIC_KEYS.len());
        assert!(METRIC_KEYS.iter().all(|k| j.contains_key(*k)));
        assert_eq!((&j["cpu_usage"], &j["cpu_id"]), (&json!(12), &json!("ab")));
        assert_eq!(
            (&j["cpu_temp"], &j["storage_block_device"]),
            (&Value::Null, &Value::Null)
        );

        let empty = Value::Object(HostFacts::default().to_json());
        assert_eq!(empty, json!({"os_version": null, "os_variant": null}));
        let facts = HostFacts {
            os_version: Some("balenaOS 6".into()),
            ip_address: Some("10.0.0.2".into()),
            mac_address: Some(String::new()),
            ..HostFacts::default()
        };
        let want = json!({"os_version": "balenaOS 6", "os_variant": null,
            "ip_address": "10.0.0.2", "mac_address": ""});
        assert_eq!(Value::Object(facts.to_json()), want);
    }

    #[test]
    fn real_host_does_not_panic() {
        let mut sys = SysInfo::new(&std::env::temp_dir());
        let _ = sys.host_facts();
        let first = sys.metrics();
        assert!(first.memory_total.is_some_and(|t| t > 0), "{first:?}");
        let _ = sys.metrics();
    }
}
