//! The short fuzz run of the normal suite: proptest feeds each entry point raw bytes and
//! mutations of valid seeds (values swapped for hostile ones, keys dropped or added). The long
//! campaign is `scripts/fuzz` (cargo-fuzz, same entry points).
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

/// Cases per property; the fuzz campaign runs far more.
const CASES: u32 = 300;

/// Field names the parsers know, so mutations reach deep validation code.
const KEYS: &[&str] = &[
    "id",
    "name",
    "releases",
    "services",
    "image",
    "composition",
    "volumes",
    "networks",
    "devices",
    "labels",
    "environment",
    "command",
    "entrypoint",
    "ports",
    "network_mode",
    "depends_on",
    "restart",
    "sysctls",
    "security_opt",
    "healthcheck",
    "tmpfs",
    "ulimits",
    "driver",
    "driver_opts",
    "o",
    "device",
    "type",
    "source",
    "target",
    "bind",
    "propagation",
    "volume",
    "subpath",
    "read_only",
    "is_host",
    "class",
    "config",
    "apps",
    "running",
    "cpus",
    "mem_limit",
    "extra_hosts",
    "ipam",
    "stop_grace_period",
    "io.balena.features.dbus",
    "io.balena.update.strategy",
    "force",
    "appId",
    "serviceName",
    "imageId",
];

/// Values that break parsers: traversal, separators, huge and negative numbers, odd types.
const STRINGS: &[&str] = &[
    "",
    "/",
    "..",
    "../../etc",
    "/sys/../etc",
    "/sys/./x",
    "//sys",
    "/etc/shadow",
    "/dev/../etc",
    "/dev/sda",
    "%2e%2e/etc",
    "/proc/self/root",
    "/proc/1/root",
    "/proc/thread-self/cwd",
    "/proc//1/fd/3",
    "a:b:c:d",
    "/x:/y:rwx",
    "8080-8070:80",
    "1-65535:1-65535",
    "1-65535:1-65535/udp",
    "1-65535:1",
    "10000-20000:10000-20000/udp",
    "596523h14m8s",
    "2562048h",
    "65536:80",
    "1.2.3.4:80:80/sctp",
    "sh -c 'x",
    "\"",
    "\\",
    "1m30s",
    "-1s",
    "99999h",
    "bind",
    "volume",
    "tmpfs",
    "host",
    "service:web",
    "container:x",
    "rslave",
    "no",
    "always",
    "kill-then-download",
    "hand-over",
    "net.ipv4.ip_forward",
    "kernel.panic",
    "apparmor=x",
    "sha256:zz",
    "UPPER/Case:tag",
    "img@sha256:00",
    "a_b",
    "\u{0}",
    "é\u{202e}",
    "1e309",
    "18446744073709551616",
    "-0",
    "NaN",
    "true",
    "{",
    "[",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        proptest::sample::select(STRINGS).prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(proptest::sample::select(KEYS), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.into(), v)).collect())),
        ]
    })
}

/// One edit: at the `at`-th node (modulo the count), replace it, drop a key or add one.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, Value),
    Drop(usize),
    Add(usize, &'static str, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        any::<usize>().prop_map(Edit::Drop),
        (any::<usize>(), proptest::sample::select(KEYS), value())
            .prop_map(|(i, k, v)| Edit::Add(i, k, v)),
    ]
}

fn nodes(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                nodes(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                )
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                nodes(x, format!("{at}/{i}"), out)
            }
        }
        _ => {}
    }
}

fn apply(mut doc: Value, edits: &[Edit]) -> Value {
    for e in edits {
        let mut all = vec![];
        nodes(&doc, String::new(), &mut all);
        let pick = |i: usize| all[i % all.len()].clone();
        match e {
            Edit::Replace(i, v) => {
                if let Some(x) = doc.pointer_mut(&pick(*i)) {
                    *x = v.clone();
                }
            }
            Edit::Drop(i) => {
                let p = pick(*i);
                if let Some((parent, key)) = p.rsplit_once('/') {
                    let key = key.replace("~1", "/").replace("~0", "~");
                    if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
                        m.remove(&key);
                    }
                }
            }
            Edit::Add(i, k, v) => {
                if let Some(Value::Object(m)) = doc.pointer_mut(&pick(*i)) {
                    m.insert(k.to_string(), v.clone());
                }
            }
        }
    }
    doc
}

fn seed_app() -> Value {
    let mut app: Value =
        serde_json::from_str(include_str!("../../examples/hello.json")).expect("example app");
    let rel = app["releases"]
        .as_object_mut()
        .unwrap()
        .values_mut()
        .next()
        .unwrap();
    rel["volumes"]["fw"] =
        json!({"driver_opts": {"type": "none", "o": "bind", "device": "/lib/firmware"}});
    rel["services"]["web"]["composition"]["devices"] = json!(["/dev/ttyUSB0:/dev/ttyS0:rw"]);
    rel["services"]["web"]["composition"]["volumes"] = json!(["data:/data", "/sys/class/gpio:/gpio:ro", {"type": "bind", "source": "/run/dbus", "target": "/host/run/dbus"}]);
    app
}

fn seed_cloud() -> Value {
    json!({"dev": {"name": "quiet-harbor", "config": {"BALENA_SUPERVISOR_POLL_INTERVAL": "900000"},
        "apps": {"app1": seed_app(), "host": {"id": 2, "name": "os", "is_host": true, "releases": {"hr1": {"id": 3,
            "services": {"hostapp": {"id": 4, "image": "registry/hostos:1", "labels": {
                "io.balena.image.class": "hostapp", "io.balena.private.updater": "registry/updater:1",
                "io.balena.private.hostapp.board-rev": "rev1"}}}}}}}}})
}

/// config.example.toml with every key set.
fn seed_config() -> String {
    include_str!("../../config.example.toml")
        .lines()
        .map(|l| {
            let t = l.trim_start_matches('#').trim_start();
            let key = t.split(" = ").next().unwrap_or("");
            if l.starts_with('#')
                && t.contains(" = ")
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && !key.is_empty()
            {
                t.to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replacen(
            "0123456789abcdef0123456789abcdef",
            "fuzzdevice0uuid0000000000000000a",
            1,
        )
}

const TOML_VALUES: &[&str] = &[
    "\"\"",
    "\" \"",
    "0",
    "-1",
    "18446744073709551616",
    "1.5",
    "true",
    "[]",
    "[\"\"]",
    "[\"127.0.0.1:0\", \"/tmp/x.sock\"]",
    "{}",
    "\"http://\"",
    "\"ftp://x\"",
    "\"a\\u0000b\"",
    "\"999.1.1.1:1\"",
    "\"[::1]:99999\"",
    "'''\nx'''",
    "\"0123456789abcdef0123456789abcdef\"",
];

#[test]
fn the_seeds_are_accepted() {
    // Mutations start from valid inputs, so the deep checks are reached.
    let wire: AppTarget = serde_json::from_value(seed_app()).unwrap();
    assert!(app_from_target("fuzzapp", wire).is_ok());
    let c = cloud::convert(&seed_cloud(), "dev", |_| None).unwrap();
    assert!(c.rejected.is_empty(), "{:?}", c.rejected);
    config::resolve_file_text(Path::new("/x/config.toml"), &seed_config()).unwrap();
}

/// The seed files of the fuzz targets are accepted too (the port seeds publish exactly
/// `MAX_PORT_MAPPINGS`, so a mutation adding one port crosses the cap).
#[test]
fn the_fuzz_seed_files_are_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let read = |target: &str, file: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(target).join(file)).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    for file in ["hello.json", "ports.json"] {
        let wire: AppTarget = serde_json::from_value(read("app_target", file)).unwrap();
        let app = app_from_target("fuzzapp", wire).unwrap_or_else(|e| panic!("{file}: {e}"));
        app_target(read("app_target", file).to_string().as_bytes());
        let ports: usize = app
            .releases
            .values()
            .flat_map(|r| r.services.values())
            .map(|s| s.config.ports.len())
            .sum();
        if file == "ports.json" {
            assert_eq!(
                ports,
                helios_actors::model::target::MAX_PORT_MAPPINGS as usize
            );
        }
    }
    assert!(cloud::convert(&read("cloud_target", "doc.json"), "dev", |_| None).is_ok());
    let c = cloud::convert(&read("cloud_target", "ports.json"), "dev", |_| None).unwrap();
    assert!(c.rejected.is_empty(), "{:?}", c.rejected);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn raw_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        cloud_target(&data);
        app_target(&data);
        local_target_state(&data);
        config_file(&data);
        lock_file(&data);
    }

    #[test]
    fn lock_files_of_every_kind(kind in 0u8..7, marker in any::<bool>(), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut data = vec![kind];
        data.extend_from_slice(if marker { helios_actors::ports::locks::MARKER } else { &tail });
        lock_file(&data);
    }

    #[test]
    fn mutated_app_targets(edits in proptest::collection::vec(edit(), 1..5)) {
        let doc = apply(seed_app(), &edits);
        app_target(doc.to_string().as_bytes());
    }

    #[test]
    fn mutated_cloud_targets(edits in proptest::collection::vec(edit(), 1..5)) {
        let doc = apply(seed_cloud(), &edits);
        cloud_target(doc.to_string().as_bytes());
    }

    #[test]
    fn generated_device_api_bodies(v in value(), raw in ".{0,40}") {
        local_target_state(v.to_string().as_bytes());
        local_target_state(raw.as_bytes());
    }

    #[test]
    fn mutated_config_files(
        edits in proptest::collection::vec(
            (any::<usize>(), proptest::sample::select(TOML_VALUES), any::<bool>()), 1..4),
    ) {
        let mut lines: Vec<String> = seed_config().lines().map(str::to_string).collect();
        for (i, v, dup) in edits {
            let n = i % lines.len();
            if let Some((k, _)) = lines[n].split_once(" = ") {
                let line = format!("{k} = {v}");
                if dup { lines.insert(n, line) } else { lines[n] = line }
            } else if dup {
                lines.remove(n);
            }
        }
        config_file(lines.join("\n").as_bytes());
    }
}
