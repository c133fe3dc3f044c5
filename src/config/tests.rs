//! Tests of configuration precedence, validation and persistence.
use super::*;
use clap::Parser;

use crate::cli::Cli;

fn flags(args: &[&str]) -> Flags {
    let mut v = vec!["helios"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).expect("valid flags").flags
}

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
    fn file(self, text: &str) -> Case {
        std::fs::write(self.path(), text).unwrap();
        self
    }
    fn env(&self, extra: &[(&str, &str)]) -> Env {
        let mut e = env(&[("HOME", self.dir.path().to_str().unwrap())]);
        e.insert(
            "HELIOS_CONFIG".into(),
            self.path().to_str().unwrap().to_string(),
        );
        e.extend(env(extra));
        e
    }
    fn resolve(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        resolve(Inputs {
            flags: &flags(args),
            env: &self.env(extra_env),
        })
    }
}

#[test]
fn defaults_are_unmanaged_on_loopback() {
    let c = Case::new().resolve(&[], &[]).unwrap();
    assert_eq!(
        c.listen,
        vec![ListenAddr::Tcp("127.0.0.1:48484".parse().unwrap())]
    );
    assert_eq!(c.remote, RemoteMode::Unmanaged);
    assert!(c.uuid_generated);
    assert_eq!(c.uuid.len(), 32);
    assert_eq!(c.seek.local_retry_interval, Duration::from_secs(30));
    assert!(c.store.dir.ends_with(".local/state/helios"));
}

#[test]
fn precedence_is_defaults_file_env_flags() {
    let case = Case::new().file(
        "uuid = \"from-file\"\n[seek]\nlocal_retry_interval_ms = 1000\n[remote]\npoll_interval_ms = 5000\n",
    );
    let c = case.resolve(&[], &[]).unwrap();
    assert_eq!(c.uuid, "from-file");
    assert_eq!(c.seek.local_retry_interval, Duration::from_millis(1000));

    let c = case
        .resolve(
            &[],
            &[
                ("HELIOS_UUID", "from-env"),
                ("HELIOS_LOCAL_RETRY_INTERVAL_MS", "2000"),
            ],
        )
        .unwrap();
    assert_eq!(c.uuid, "from-env");
    assert_eq!(c.seek.local_retry_interval, Duration::from_millis(2000));

    let c = case
        .resolve(
            &["--uuid", "from-flag", "--local-retry-interval-ms", "3000"],
            &[
                ("HELIOS_UUID", "from-env"),
                ("HELIOS_LOCAL_RETRY_INTERVAL_MS", "2000"),
            ],
        )
        .unwrap();
    assert_eq!(c.uuid, "from-flag");
    assert!(!c.uuid_generated);
    assert_eq!(c.seek.local_retry_interval, Duration::from_millis(3000));
}

#[test]
fn unknown_file_keys_and_bad_values_name_the_key() {
    let e = Case::new()
        .file("[remote]\npoll_intervall_ms = 5\n")
        .resolve(&[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("poll_intervall_ms"), "{e}");

    let e = Case::new()
        .file("[seek]\nlocal_retry_interval_ms = \"soon\"\n")
        .resolve(&[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("local_retry_interval_ms"), "{e}");

    let e = Case::new()
        .resolve(&[], &[("HELIOS_REMOTE_POLL_INTERVAL_MS", "ten")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("HELIOS_REMOTE_POLL_INTERVAL_MS"), "{e}");

    let e = Case::new()
        .resolve(&["--engine-host", "ftp://x"], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("engine.host"), "{e}");

    let e = Case::new()
        .resolve(&["--host-os-version", "balenaOS"], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("host.os_version"), "{e}");
}

#[test]
fn a_broken_line_is_located_without_echoing_its_value() {
    const SECRET: &str = "s3cr3t-K3Y-0123456789abcdef";
    for (text, line, key) in [
        (
            format!("[remote]\napi_key = \"{SECRET}\n"),
            2,
            Some("remote.api_key"),
        ),
        (
            format!("[remote]\napi_key = {SECRET}\n"),
            2,
            Some("remote.api_key"),
        ),
        (
            format!("[remote]\nrequest_timeout_ms = \"{SECRET}\"\n"),
            2,
            Some("remote.request_timeout_ms"),
        ),
        (
            format!("# c\n[remote]\napi_key = 1{}\n", "7".repeat(30)),
            3,
            Some("remote.api_key"),
        ),
        (
            format!("[remote]\napi_key = [\"{SECRET}\"]\n"),
            2,
            Some("remote.api_key"),
        ),
        (format!("[remote]\n{SECRET}\n"), 2, None),
        (format!("[remote]\n\"{SECRET}\" = 1\n"), 2, None),
    ] {
        let e = Case::new()
            .file(&text)
            .resolve(&[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains(SECRET) && !e.contains(&"7".repeat(30)),
            "{text:?}: {e}"
        );
        assert!(
            e.contains(&format!("line {line}, column ")),
            "{text:?}: {e}"
        );
        if let Some(key) = key {
            assert!(e.contains(&format!("key {key}")), "{text:?}: {e}");
        }
    }
}

#[test]
fn partners_are_required() {
    let e = Case::new()
        .resolve(&["--remote-api-key", "k"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("remote.api_key") && e.contains("requires remote.api_endpoint"),
        "{e}"
    );

    let e = Case::new()
        .resolve(
            &[
                "--remote-api-endpoint",
                "https://api.example.com",
                "--provisioning-key",
                "p",
            ],
            &[],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("provisioning.fleet"), "{e}");

    let e = Case::new()
        .resolve(&["--legacy-api-endpoint", "http://127.0.0.1:48480"], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("legacy.api_key"), "{e}");
}

#[test]
fn remote_modes() {
    let c = Case::new()
        .resolve(
            &[
                "--remote-api-endpoint",
                "https://api.example.com",
                "--provisioning-key",
                "secret-prov",
                "--provisioning-fleet",
                "42",
                "--provisioning-device-type",
                "generic-aarch64",
            ],
            &[],
        )
        .unwrap();
    match &c.remote {
        RemoteMode::Provisioning {
            provisioning,
            remote,
        } => {
            assert_eq!(provisioning.fleet, 42);
            assert_eq!(remote.api_key, None);
        }
        other => panic!("expected provisioning, got {other:?}"),
    }
    assert!(
        !format!("{c:?}").contains("secret-prov"),
        "the provisioning key never shows in Debug"
    );

    let c = Case::new()
        .resolve(
            &[],
            &[
                ("HELIOS_REMOTE_API_ENDPOINT", "https://api.example.com"),
                ("HELIOS_REMOTE_API_KEY", "dev-key"),
                ("HELIOS_UUID", "u1"),
            ],
        )
        .unwrap();
    match &c.remote {
        RemoteMode::Managed(r) => {
            assert_eq!(r.uuid, "u1");
            assert_eq!(r.poll_interval, Duration::from_secs(900));
        }
        other => panic!("expected managed, got {other:?}"),
    }
    assert!(!format!("{c:?}").contains("dev-key"));
}

#[test]
fn container_environment_configures_like_the_upstream_entrypoint() {
    let case = Case::new();
    let c = case
        .resolve(
            &[],
            &[
                ("BALENA_DEVICE_UUID", "dev-uuid"),
                ("HELIOS_UUID", "ignored"),
                ("HELIOS_REMOTE_API_KEY", "discarded"),
                ("BALENA_API_URL", "https://api.balena-cloud.com"),
                ("BALENA_API_KEY", "device-key"),
                ("BALENA_HOST_OS_VERSION", "balenaOS 6.0.39"),
                ("BALENA_HOST_OS_BOARD_REV", "rev-000"),
                ("BALENA_HOST_RUNTIME_DIR", "/tmp/run"),
                ("BALENA_SUPERVISOR_API_KEY", "legacy-key"),
                ("BALENA_SUPERVISOR_HOST", "127.0.0.1"),
                ("BALENA_SUPERVISOR_PORT", "48484"),
                ("HELIOS_REMOTE_POLL_INTERVAL_MS", "1000"),
            ],
        )
        .unwrap();
    assert_eq!(c.uuid, "dev-uuid");
    match &c.remote {
        RemoteMode::Managed(r) => {
            assert_eq!(r.endpoint, "https://api.balena-cloud.com");
            assert_eq!(r.api_key.as_deref(), Some("device-key"));
            assert_eq!(
                r.poll_interval,
                Duration::from_millis(900_000),
                "clamped up"
            );
        }
        other => panic!("expected managed, got {other:?}"),
    }
    let os = c.host.os_version.as_ref().unwrap();
    assert_eq!(
        (os.name.as_str(), os.version.as_str(), os.build.as_deref()),
        ("balenaOS", "6.0.39", Some("rev-000"))
    );
    assert_eq!(c.host.host_runtime_dir, PathBuf::from("/tmp/run"));
    assert_eq!(c.host.runtime_dir, PathBuf::from("/tmp/run"));
    let legacy = c.legacy.as_ref().unwrap();
    assert_eq!(legacy.endpoint, "http://127.0.0.1:48480");
    assert_eq!(legacy.takeover_port, Some(48484));
    assert_eq!(
        c.listen,
        vec![ListenAddr::Unix("/tmp/run/helios.sock".into())]
    );
    assert_eq!(c.store.dir, PathBuf::from("/local/helios"));

    // Without both BALENA_API_* the container is unmanaged, whatever HELIOS_REMOTE_API_KEY says.
    let c = case
        .resolve(
            &[],
            &[
                ("BALENA_DEVICE_UUID", "dev-uuid"),
                ("HELIOS_REMOTE_API_KEY", "discarded"),
            ],
        )
        .unwrap();
    assert_eq!(c.remote, RemoteMode::Unmanaged);
}

#[test]
fn listen_addresses_tcp_and_unix() {
    let c = Case::new()
        .resolve(
            &[
                "--local-api-address",
                "/tmp/x.sock",
                "--local-api-address",
                "0.0.0.0:1",
            ],
            &[],
        )
        .unwrap();
    assert_eq!(
        c.listen,
        vec![
            ListenAddr::Unix("/tmp/x.sock".into()),
            ListenAddr::Tcp("0.0.0.0:1".parse().unwrap())
        ]
    );
    let c = Case::new()
        .resolve(&[], &[("HELIOS_LOCAL_API_ADDRESS", "/a.sock,127.0.0.1:9")])
        .unwrap();
    assert_eq!(c.listen.len(), 2);
}

#[test]
fn saved_identity_is_private_and_keeps_other_keys() {
    use std::os::unix::fs::PermissionsExt;
    let case = Case::new().file("[seek]\nlocal_retry_interval_ms = 1234\n");
    save_to_file(
        &case.path(),
        &Layer {
            uuid: Some("saved".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let mode = std::fs::metadata(case.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let c = case.resolve(&[], &[]).unwrap();
    assert_eq!(c.uuid, "saved");
    assert!(!c.uuid_generated);
    assert_eq!(c.seek.local_retry_interval, Duration::from_millis(1234));
}

#[test]
fn saved_identity_is_private_whatever_was_there_before() {
    use std::os::unix::fs::PermissionsExt;
    let case = Case::new().file("uuid = \"old\"\n");
    let path = case.path();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A temp file left by an interrupted save, readable by everyone, and a link to elsewhere.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, "stale").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
    save_identity(&path, "u1", "https://api.example", "device-key-0123456789").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let elsewhere = path.with_extension("elsewhere");
    std::fs::write(&elsewhere, "not ours").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
    save_identity(&path, "u1", "https://api.example", "device-key-0123456789").unwrap();
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "not ours");
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

fn is_key_line(l: &str) -> bool {
    l.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    })
}

/// `config.example.toml` documents every key with its default.
#[test]
fn example_config_matches_the_defaults() {
    let text = include_str!("../../config.example.toml");
    // Every commented-out `key = value` line, uncommented, must parse and equal the defaults.
    let uncommented: String = text
        .lines()
        .map(|l| l.strip_prefix("# ").filter(|r| is_key_line(r)).unwrap_or(l))
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let example: Layer = toml::from_str(&uncommented).expect("example parses");
    let defaults = Layer::defaults();
    assert_eq!(example.remote, defaults.remote);
    assert_eq!(example.remote.report_min_interval_ms, Some(10_000));
    assert_eq!(example.seek, defaults.seek);
    assert_eq!(example.engine, defaults.engine);
    assert_eq!(example.supervision, defaults.supervision);
    assert_eq!(
        example.store.cache_capacity_bytes,
        defaults.store.cache_capacity_bytes
    );
    assert_eq!(example.api.workers, defaults.api.workers);
    assert_eq!(example.api.max_body_bytes, defaults.api.max_body_bytes);
    assert_eq!(example.host.dbus_address, defaults.host.dbus_address);
    assert_eq!(example.api.listen, Some(vec![DEFAULT_LISTEN.to_string()]));
}

#[test]
fn a_stored_identity_wins_over_partial_flags_and_provisioning_is_ignored() {
    let case = Case::new().file(
        "uuid = \"stored\"\n[remote]\napi_endpoint = \"https://api.example.com\"\napi_key = \"stored-key\"\n",
    );
    let c = case
        .resolve(
            &[
                "--uuid",
                "other",
                "--provisioning-key",
                "p",
                "--provisioning-fleet",
                "1",
                "--provisioning-device-type",
                "t",
            ],
            &[],
        )
        .unwrap();
    assert_eq!(c.uuid, "stored");
    match &c.remote {
        RemoteMode::Managed(r) => assert_eq!(r.api_key.as_deref(), Some("stored-key")),
        other => panic!("expected managed, got {other:?}"),
    }
    assert!(c.ignored_identity.iter().any(|k| k == "uuid"));
    assert!(c
        .ignored_identity
        .iter()
        .any(|k| k.starts_with("provisioning.key")));

    // All three given together replace it.
    let c = case
        .resolve(
            &[
                "--uuid",
                "new",
                "--remote-api-endpoint",
                "https://b.example.com",
                "--remote-api-key",
                "k2",
            ],
            &[],
        )
        .unwrap();
    assert_eq!(c.uuid, "new");
    assert!(c.ignored_identity.is_empty());
}

#[test]
fn saving_an_identity_drops_the_provisioning_key() {
    let case = Case::new().file("[provisioning]\nkey = \"p\"\nfleet = 3\ndevice_type = \"t\"\n");
    save_identity(&case.path(), "u", "https://api.example.com", "k").unwrap();
    let text = std::fs::read_to_string(case.path()).unwrap();
    assert!(!text.contains("key = \"p\""), "{text}");
    let c = case.resolve(&[], &[]).unwrap();
    assert_eq!(c.uuid, "u");
    assert!(matches!(c.remote, RemoteMode::Managed(_)));
}
