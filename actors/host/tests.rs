//! Host OS version strings.
use super::*;

#[test]
fn parses_os_versions() {
    assert_eq!(
        OsVersion::parse("balenaOS 6.0.39@test-board-rev-000"),
        Ok(OsVersion {
            name: "balenaOS".into(),
            version: "6.0.39".into(),
            build: Some("test-board-rev-000".into())
        })
    );
    assert_eq!(
        OsVersion::parse("balena OS 2.1").map(|o| (o.name, o.version, o.build)),
        Ok(("balena OS".into(), "2.1".into(), None))
    );
    assert!(OsVersion::parse("balenaOS").is_err());
    assert!(OsVersion::parse("balenaOS 6.0@").is_err());
    assert_eq!(
        OsVersion::parse("balenaOS 6.0.39@b").unwrap().to_string(),
        "balenaOS 6.0.39@b"
    );
}
