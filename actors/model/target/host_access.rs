//! What of the host a target may reach: the bind source allow-list (service binds and volumes
//! that bind) and device paths below `/dev`.
use serde_json::Value;

use super::scalars::string_list;
use super::{err, ValidationError};
use crate::model::compose::{DeviceMapping, VolumeConfig};

/// Bind sources helios accepts: these paths or anything below them.
pub const BIND_ALLOW_LIST: [&str; 9] = [
    "/var/run/docker.sock",
    "/run/dbus",
    "/sys",
    "/proc",
    "/lib/modules",
    "/lib/firmware",
    "/var/log/journal",
    "/run/log/journal",
    "/etc/machine-id",
];

/// Allow-listed paths that may only be bound whole. Below `/proc` are the processes'
/// directories (`/proc/<pid>`, `/proc/self`, `/proc/thread-self`, and `/proc/net`,
/// `/proc/mounts` that link into them) with magic links (`root`, `cwd`, `exe`, `fd/<n>`,
/// `map_files/*`, `ns/*`) that the engine, mounting as the host's root, follows to any file or
/// namespace of the host: `/proc/1/root` is the host's `/`. Refusing the whole subtree holds
/// whatever links a host or a kernel adds there; `/proc` itself stays (its magic links are
/// then resolved by the container's own credentials).
const BIND_WHOLE_ONLY: [&str; 1] = ["/proc"];

/// A volume whose driver options bind a host path (`o=bind`, the local driver's bind mount)
/// must bind an allow-listed one.
pub(super) fn check_volume_bind(c: &VolumeConfig, p: &str) -> Result<(), ValidationError> {
    let binds = c
        .driver_opts
        .get("o")
        .is_some_and(|o| o.split(',').any(|x| matches!(x.trim(), "bind" | "rbind")));
    if !binds {
        return Ok(());
    }
    let device = c
        .driver_opts
        .get("device")
        .map(String::as_str)
        .unwrap_or("");
    bind_source(device)
        .map(|_| ())
        .map_err(|e| err(&format!("{p}.driver_opts.device"), e))
}

/// The normalised bind source if it is allowed.
pub fn bind_source(src: &str) -> Result<String, String> {
    if !src.starts_with('/') {
        return Err(format!("bind source {src:?} must be an absolute host path"));
    }
    let parts: Vec<&str> = src.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(format!("bind source {src:?} must not contain . or .."));
    }
    let norm = format!("/{}", parts.join("/"));
    if let Some(whole) = BIND_WHOLE_ONLY
        .iter()
        .find(|a| norm.starts_with(&format!("{a}/")))
    {
        return Err(format!(
            "bind source {src:?} is below {whole}: only {whole} itself may be bound (paths \
             below it, like /proc/<pid>/root, /proc/self/cwd or /proc/<pid>/fd/<n>, are links \
             the engine follows anywhere on the host)"
        ));
    }
    let allowed = BIND_ALLOW_LIST
        .iter()
        .any(|a| norm == *a || norm.starts_with(&format!("{a}/")));
    if allowed {
        Ok(norm)
    } else {
        Err(format!(
            "bind source {src:?} is not allowed (allowed: {}, or below them except below {})",
            BIND_ALLOW_LIST.join(", "),
            BIND_WHOLE_ONLY.join(", ")
        ))
    }
}

/// `host[:container[:permissions]]`, host paths only (no CDI names).
pub(super) fn devices(v: &Value, p: &str) -> Result<Vec<DeviceMapping>, ValidationError> {
    let mut out = Vec::new();
    for (i, s) in string_list(v, p)?.into_iter().enumerate() {
        let ip = format!("{p}[{i}]");
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, perms) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, c] if !c.starts_with('/') => (*h, *h, *c),
            [h, c] => (*h, *c, "rwm"),
            [h, c, m] => (*h, *c, *m),
            _ => {
                return Err(err(
                    &ip,
                    format!("{s:?} is not host[:container[:permissions]]"),
                ))
            }
        };
        if !is_device_path(source) {
            return Err(err(
                &ip,
                format!(
                    "{source:?} is not a host device path below /dev without . or .. \
                     (CDI devices are not supported)"
                ),
            ));
        }
        if !target.starts_with('/') {
            return Err(err(&ip, format!("{target:?} is not an absolute path")));
        }
        if perms.is_empty() || !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(err(&ip, format!("{perms:?} is not a subset of rwm")));
        }
        out.push(DeviceMapping {
            source: source.to_string(),
            target: target.to_string(),
            permissions: perms.to_string(),
        });
    }
    Ok(out)
}

/// A host device path: absolute, below `/dev`, no `.` or `..` components.
pub fn is_device_path(source: &str) -> bool {
    let parts: Vec<&str> = source.split('/').filter(|c| !c.is_empty()).collect();
    source.starts_with('/')
        && parts.len() >= 2
        && parts[0] == "dev"
        && !parts.iter().any(|c| *c == "." || *c == "..")
}

#[cfg(test)]
mod tests;
