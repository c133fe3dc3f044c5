//! The reboot breadcrumb (spec/behaviours.md §5.5, §13.5): a service labelled
//! `io.balena.update.requires-reboot` is not started in a container created since the last
//! boot; the breadcrumb `<runtime dir>/reboot-after-apply` is touched instead, and once the
//! device is otherwise on target and the breadcrumb is newer than the boot, the device reboots
//! (taking every update lock, like `/v1/reboot`). After the reboot the container is older than
//! the boot and starts normally. The decisions here are pure; the file and clock helpers are
//! the only IO.
//!
//! Before planning, SeekActor holds such a service stopped when its container does not exist
//! yet, or is not running and was created after the boot (`/proc/stat` `btime` against the
//! engine's `Created`), and touches the breadcrumb (`decision=schedule_reboot`) unless it is
//! already newer than the boot. When an apply ends on target with the breadcrumb newer than
//! the boot, Seek sends HostActor the same `Power` message `/v1/reboot` does, with the
//! target's `force`. It asks once per process, unless the reboot is refused (a user lock):
//! then the apply is retried after the retry interval and asks again when it ends on target.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::device::{Device, DeviceTarget};

pub const LABEL: &str = "io.balena.update.requires-reboot";
pub const BREADCRUMB: &str = "reboot-after-apply";

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "on")
}

/// Makes the target want stopped every requires-reboot service whose container does not exist
/// yet or was created after `boot` and is not running; returns them as `app/release/service`.
pub fn hold_for_reboot(tgt: &mut DeviceTarget, current: &Device, boot: SystemTime) -> Vec<String> {
    let mut held = vec![];
    for (app_uuid, app) in tgt.apps.iter_mut() {
        for (rel_uuid, rel) in app.releases.iter_mut() {
            for (name, svc) in rel.services.iter_mut() {
                if !svc.running || !svc.config.labels.get(LABEL).is_some_and(|v| truthy(v)) {
                    continue;
                }
                let container = current
                    .apps
                    .get(app_uuid)
                    .and_then(|a| a.releases.get(rel_uuid))
                    .and_then(|r| r.services.get(name))
                    .and_then(|s| s.container.as_ref());
                let hold = match container {
                    None => true,
                    Some(c) if c.status == "running" => false,
                    Some(c) => parse_rfc3339(&c.created).is_none_or(|created| created > boot),
                };
                if hold {
                    svc.running = false;
                    held.push(format!("{app_uuid}/{rel_uuid}/{name}"));
                }
            }
        }
    }
    held
}

pub fn breadcrumb(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(BREADCRUMB)
}

/// Whether the breadcrumb was touched since `boot`.
pub fn pending(runtime_dir: &Path, boot: SystemTime) -> bool {
    std::fs::metadata(breadcrumb(runtime_dir))
        .and_then(|m| m.modified())
        .is_ok_and(|t| t > boot)
}

/// Touches the breadcrumb (creates it, or updates its mtime).
pub fn touch(runtime_dir: &Path) -> std::io::Result<()> {
    let p = breadcrumb(runtime_dir);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)?;
    f.set_modified(SystemTime::now())
}

/// When the host booted, from `/proc/stat` `btime`.
pub fn boot_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// `2026-11-28T07:06:25.770123456Z` (the engine's `Created`) as a time; offsets other than
/// `Z` are honoured.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (clock, offset) = match time.find(['Z', '+', '-']) {
        Some(i) => time.split_at(i),
        None => return None,
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let offset_secs = match offset {
        "Z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    let nanos: u32 = format!("{frac:0<9}")
        .get(..9)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_timestamps() {
        let t = |s| {
            parse_rfc3339(s)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        assert_eq!(t("1970-01-01T00:00:00Z"), 0.0);
        assert_eq!(t("2026-11-28T07:06:25Z"), 1_795_849_585.0);
        assert_eq!(t("2026-11-28T07:06:25.5Z"), 1_795_849_585.5);
        assert_eq!(t("2026-11-28T08:06:25+01:00"), 1_795_849_585.0);
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn breadcrumb_is_pending_only_when_newer_than_the_boot() {
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        assert!(!pending(d.path(), now - Duration::from_secs(60)));
        touch(d.path()).unwrap();
        assert!(pending(d.path(), now - Duration::from_secs(60)));
        assert!(!pending(d.path(), now + Duration::from_secs(60)));
        assert!(boot_time().is_some_and(|b| b < now));
    }
}
