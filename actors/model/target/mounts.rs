//! A service's `volumes` (named volumes, binds, tmpfs; short and long form) and `tmpfs`.
use serde_json::Value;

use super::host_access::bind_source;
use super::scalars::{boolean, bytes, list, one_of, string, string_list};
use super::{err, Declared, ValidationError};
use crate::model::compose::Mount;

fn container_path(t: &str, p: &str) -> Result<String, ValidationError> {
    if !t.starts_with('/') {
        return Err(err(p, format!("target {t:?} must be an absolute path")));
    }
    Ok(t.to_string())
}

pub(super) fn volumes(
    v: &Value,
    p: &str,
    declared: &Declared,
) -> Result<Vec<Mount>, ValidationError> {
    let mut out = Vec::new();
    for (i, x) in list(v, p)?.iter().enumerate() {
        let ip = format!("{p}[{i}]");
        let m = match x {
            Value::String(s) => short_volume(s, &ip)?,
            Value::Object(o) => long_volume(o, &ip)?,
            other => {
                return Err(err(
                    &ip,
                    format!("expected a string or an object, got {other}"),
                ))
            }
        };
        if m.kind == "volume" {
            if let Some(name) = &m.source {
                if !declared.volumes.contains(name) {
                    return Err(err(
                        &ip,
                        format!("volume {name:?} is not declared in the release"),
                    ));
                }
            }
        }
        out.push(m);
    }
    Ok(out)
}

const PROPAGATIONS: [&str; 6] = [
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

/// `name:/path[:opts]`, `/host:/path[:opts]` or `/path` (anonymous volume).
fn short_volume(s: &str, p: &str) -> Result<Mount, ValidationError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [t] => (None, *t, None),
        [src, t] => (Some(*src), *t, None),
        [src, t, o] => (Some(*src), *t, Some(*o)),
        _ => return Err(err(p, format!("{s:?} is not source:target[:options]"))),
    };
    let mut m = Mount {
        kind: "volume".to_string(),
        target: container_path(target, p)?,
        ..Default::default()
    };
    if let Some(src) = source {
        if src.is_empty() {
            return Err(err(p, format!("{s:?} has an empty source")));
        }
        if src.starts_with(['/', '.', '~']) {
            m.kind = "bind".to_string();
            m.source = Some(bind_source(src).map_err(|e| err(p, e))?);
        } else {
            m.source = Some(src.to_string());
        }
    }
    for o in opts.into_iter().flat_map(|o| o.split(',')) {
        match o {
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            "z" | "Z" => {}
            "nocopy" if m.kind == "volume" => m.nocopy = true,
            o if m.kind == "bind" && PROPAGATIONS.contains(&o) => {
                m.propagation = Some(o.to_string())
            }
            o => return Err(err(p, format!("unsupported volume option {o:?}"))),
        }
    }
    Ok(m)
}

fn long_volume(o: &serde_json::Map<String, Value>, p: &str) -> Result<Mount, ValidationError> {
    let get = |k: &str| o.get(k).filter(|v| !v.is_null());
    let target = match get("target") {
        Some(t) => string(t, &format!("{p}.target"))?,
        None => return Err(err(p, "target is required")),
    };
    let source = get("source")
        .map(|s| string(s, &format!("{p}.source")))
        .transpose()?
        .filter(|s| !s.is_empty());
    let kind = match get("type") {
        Some(t) => string(t, &format!("{p}.type"))?,
        None if source.as_deref().is_some_and(|s| s.starts_with('/')) => "bind".to_string(),
        None => "volume".to_string(),
    };
    let mut m = Mount {
        kind: kind.clone(),
        target: container_path(&target, &format!("{p}.target"))?,
        ..Default::default()
    };
    if let Some(ro) = get("read_only") {
        m.read_only = boolean(ro, &format!("{p}.read_only"))?;
    }
    let sub = |k: &str| -> Result<Option<&serde_json::Map<String, Value>>, ValidationError> {
        match get(k) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(other) => Err(err(
                &format!("{p}.{k}"),
                format!("expected an object, got {other}"),
            )),
        }
    };
    match kind.as_str() {
        "bind" => {
            let src = source.ok_or_else(|| err(&format!("{p}.source"), "a bind needs a source"))?;
            m.source = Some(bind_source(&src).map_err(|e| err(&format!("{p}.source"), e))?);
            if let Some(b) = sub("bind")? {
                if let Some(prop) = b.get("propagation").filter(|v| !v.is_null()) {
                    let pp = format!("{p}.bind.propagation");
                    m.propagation = Some(one_of(prop, &pp, &PROPAGATIONS)?);
                }
            }
        }
        "volume" => {
            m.source = source;
            if let Some(vo) = sub("volume")? {
                if let Some(n) = vo.get("nocopy").filter(|v| !v.is_null()) {
                    m.nocopy = boolean(n, &format!("{p}.volume.nocopy"))?;
                }
                if let Some(s) = vo.get("subpath").filter(|v| !v.is_null()) {
                    let sp = format!("{p}.volume.subpath");
                    let s = string(s, &sp)?;
                    if s.starts_with('/') || s.split('/').any(|c| c == "..") {
                        return Err(err(&sp, "must be a relative path inside the volume"));
                    }
                    m.subpath = Some(s);
                }
            }
        }
        "tmpfs" => {
            if source.is_some() {
                return Err(err(&format!("{p}.source"), "a tmpfs has no source"));
            }
            if let Some(t) = sub("tmpfs")? {
                if let Some(s) = t.get("size").filter(|v| !v.is_null()) {
                    m.size = Some(bytes(s, &format!("{p}.tmpfs.size"))?);
                }
                if let Some(md) = t.get("mode").filter(|v| !v.is_null()) {
                    m.mode = Some(octal_mode(md, &format!("{p}.tmpfs.mode"))?);
                }
            }
        }
        other => {
            return Err(err(
                &format!("{p}.type"),
                format!("{other:?} is not one of volume, bind, tmpfs"),
            ))
        }
    }
    Ok(m)
}

/// A file mode written in octal digits (`1777`, `"0755"`).
fn octal_mode(v: &Value, p: &str) -> Result<u32, ValidationError> {
    let digits = match v {
        Value::Number(n) if n.is_u64() => n.to_string(),
        Value::String(s) => s.trim().trim_start_matches("0o").to_string(),
        other => return Err(err(p, format!("expected an octal mode, got {other}"))),
    };
    u32::from_str_radix(&digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| err(p, format!("{digits:?} is not an octal file mode")))
}

pub(super) fn tmpfs(v: &Value, p: &str) -> Result<Vec<String>, ValidationError> {
    let entries = string_list(v, p)?;
    for (i, e) in entries.iter().enumerate() {
        let path = e.split_once(':').map_or(e.as_str(), |(a, _)| a);
        container_path(path, &format!("{p}[{i}]"))?;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests;
