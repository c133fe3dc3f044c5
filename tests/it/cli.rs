//! The command line: help, version, and exit code 2 with the offending key for bad input.
use std::process::Stdio;

use crate::support::agent::helios_command;

fn run(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = helios_command(home)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("helios runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_flag() {
    let home = tempfile::tempdir().unwrap();
    let (code, out, _) = run(home.path(), &["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--uuid",
        "--host-os-version",
        "--host-runtime-dir",
        "--local-api-address",
        "--remote-api-endpoint",
        "--remote-api-key",
        "--remote-request-timeout-ms",
        "--remote-poll-interval-ms",
        "--remote-poll-min-interval-ms",
        "--remote-poll-max-jitter-ms",
        "--local-retry-interval-ms",
        "--legacy-api-endpoint",
        "--legacy-api-key",
        "--provisioning-key",
        "--provisioning-fleet",
        "--provisioning-device-type",
        "--provisioning-os-version",
        "--provisioning-supervisor-version",
        "--config",
        "--device-api-key",
        "--local-api-allowed-host",
        "register",
        "api-key",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
    let (code, out, _) = run(home.path(), &["register", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--provisioning-key"), "{out}");
}

#[test]
fn version_has_commit_and_build_time() {
    let home = tempfile::tempdir().unwrap();
    let (code, out, _) = run(home.path(), &["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("helios {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("commit: "), "{out}");
    assert!(out.contains("built: @"), "{out}");
}

#[test]
fn bad_flags_and_values_exit_2_naming_the_key() {
    let home = tempfile::tempdir().unwrap();
    let (code, _, err) = run(home.path(), &["--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");

    let (code, _, err) = run(home.path(), &["--remote-poll-interval-ms", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--remote-poll-interval-ms"), "{err}");

    let (code, _, err) = run(home.path(), &["--remote-api-key", "k"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("remote.api_key"), "{err}");

    let cfg = home.path().join("c.toml");
    std::fs::write(&cfg, "[seek]\nlocal_retry_interval_ms = -5\n").unwrap();
    let (code, _, err) = run(home.path(), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("local_retry_interval_ms"), "{err}");

    std::fs::write(&cfg, "[api]\nlistn = []\n").unwrap();
    let (code, _, err) = run(home.path(), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("listn"), "{err}");
}

#[test]
fn a_broken_config_line_never_reaches_stderr_or_the_log() {
    const SECRET: &str = "s3cr3t-K3Y-0123456789abcdef";
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("c.toml");
    for text in [
        format!("[remote]\napi_key = \"{SECRET}\n"),
        format!("[remote]\nrequest_timeout_ms = \"{SECRET}\"\n"),
    ] {
        std::fs::write(&cfg, &text).unwrap();
        let out = helios_command(home.path())
            .args(["--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .output()
            .expect("helios runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("line 2, column "), "{stderr}");
        assert!(stderr.contains("remote."), "{stderr}");
        assert!(
            !stderr.contains(SECRET) && !stdout.contains(SECRET),
            "{text:?} echoed: {stderr}"
        );
    }
}
