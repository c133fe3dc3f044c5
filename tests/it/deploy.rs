//! deploy/helios.service passes `systemd-analyze verify` (with ExecStart pointed at the binary
//! under test, since verify checks that it exists) without a warning about the unit, and keeps
//! the settings the README's install section promises.
use std::path::Path;
use std::process::Command;

#[test]
fn systemd_unit_verifies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("deploy/helios.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/helios",
        "Restart=always",
        "Environment=HELIOS_CONFIG=/etc/helios/config.toml",
        "Environment=HELIOS_STATE_DIR=/var/lib/helios",
        "StateDirectory=helios",
        "ReadWritePaths=/etc/helios",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line:?} in the unit");
    }

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        // scripts/test installs it and sets HELIOS_IT=require: there a missing tool fails.
        assert_ne!(
            std::env::var("HELIOS_IT").as_deref(),
            Ok("require"),
            "systemd-analyze is not installed (apt-get install systemd)"
        );
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("helios.service");
    let unit = unit.replace("/usr/local/bin/helios", env!("CARGO_BIN_EXE_helios"));
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("helios.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
