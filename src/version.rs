//! The version stamp: crate version, git commit and build time (from build.rs).
use serde::Serialize;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("HELIOS_GIT_COMMIT");
const BUILD_EPOCH: &str = env!("HELIOS_BUILD_EPOCH");

/// `--version`.
pub const SHORT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("HELIOS_GIT_COMMIT"),
    ")"
);
/// `--version` in its long form (`helios --version` prints this too; the time is UTC epoch
/// seconds, rendered by [`build_time`] in the API).
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("HELIOS_GIT_COMMIT"),
    "\nbuilt: @",
    env!("HELIOS_BUILD_EPOCH")
);

/// What `GET /v3/version` serves.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VersionInfo {
    pub version: &'static str,
    pub git_commit: &'static str,
    pub build_time: String,
}

pub fn info() -> VersionInfo {
    VersionInfo {
        version: VERSION,
        git_commit: GIT_COMMIT,
        build_time: build_time(),
    }
}

/// The build time as RFC 3339 UTC.
pub fn build_time() -> String {
    rfc3339(BUILD_EPOCH.parse().unwrap_or(0))
}

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (days-from-civil, no calendar crate).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_epochs() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_829_999), "2026-11-28T01:39:59Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
