//! Scalar compose values: strings, booleans, integers, lists and maps of strings, commands,
//! durations, sizes and CPU counts, with the coercions compose files rely on.
use std::collections::BTreeMap;

use serde_json::Value;

use super::{err, ValidationError};

pub(super) fn string(v: &Value, p: &str) -> Result<String, ValidationError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(err(p, format!("expected a string, got {other}"))),
    }
}

pub(super) fn one_of(v: &Value, p: &str, allowed: &[&str]) -> Result<String, ValidationError> {
    let s = string(v, p)?;
    if allowed.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(err(
            p,
            format!("{s:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

pub(super) fn boolean(v: &Value, p: &str) -> Result<bool, ValidationError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        other => Err(err(p, format!("expected a boolean, got {other}"))),
    }
}

pub(super) fn integer(v: &Value, p: &str) -> Result<i64, ValidationError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| err(p, format!("{n} is not an integer"))),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| err(p, format!("{s:?} is not an integer"))),
        other => Err(err(p, format!("expected an integer, got {other}"))),
    }
}

pub(super) fn list<'a>(v: &'a Value, p: &str) -> Result<&'a Vec<Value>, ValidationError> {
    v.as_array()
        .ok_or_else(|| err(p, format!("expected a list, got {v}")))
}

/// A list of strings (numbers coerced), or a single string.
pub(super) fn string_list(v: &Value, p: &str) -> Result<Vec<String>, ValidationError> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| string(x, &format!("{p}[{i}]")))
            .collect(),
        other => Ok(vec![string(other, p)?]),
    }
}

/// A map of strings (numbers and booleans coerced, `null` dropped) or a list of `k=v`.
pub(super) fn string_map(v: &Value, p: &str) -> Result<BTreeMap<String, String>, ValidationError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if !x.is_null() {
                    out.insert(k.clone(), string(x, &format!("{p}.{k}"))?);
                }
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let ip = format!("{p}[{i}]");
                let s = string(x, &ip)?;
                match s.split_once('=') {
                    Some((k, val)) => out.insert(k.to_string(), val.to_string()),
                    None => out.insert(s, String::new()),
                };
            }
        }
        other => return Err(err(p, format!("expected a map or a list, got {other}"))),
    }
    Ok(out)
}

pub(super) fn environment(v: &Value, p: &str) -> Result<BTreeMap<String, String>, ValidationError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let s = string(x, &format!("{p}[{i}]"))?;
                if let Some((k, val)) = s.split_once('=') {
                    out.insert(k.to_string(), val.to_string());
                }
            }
        }
        _ => out = string_map(v, p)?,
    }
    for k in out.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(err(&format!("{p}.{k}"), "invalid variable name"));
        }
    }
    Ok(out)
}

/// Compose `command`/`entrypoint`: a string (shell-split) or a list.
pub(super) fn command(v: &Value, p: &str) -> Result<Vec<String>, ValidationError> {
    match v {
        Value::String(s) => shell_split(s).map_err(|m| err(p, m)),
        Value::Array(_) => string_list(v, p),
        other => Err(err(p, format!("expected a string or a list, got {other}"))),
    }
}

/// Splits a command line the way a POSIX shell would, without any expansion (`$` stays
/// literal): whitespace separates words, single quotes are literal, double quotes allow
/// `\"`, `\\`, `\$`, `` \` `` escapes, a backslash outside quotes escapes the next character.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => w.push(e),
                            Some('\n') => {}
                            Some(e) => {
                                w.push('\\');
                                w.push(e);
                            }
                            None => return Err(format!("unclosed double quote in {s:?}")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed double quote in {s:?}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(e) => word.get_or_insert_with(String::new).push(e),
                None => return Err(format!("trailing backslash in {s:?}")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    Ok(words)
}

/// A compose duration string, or a number of seconds.
fn duration(v: &Value, p: &str) -> Result<std::time::Duration, ValidationError> {
    match v {
        Value::String(s) => crate::model::compose::parse_duration(s).map_err(|m| err(p, m)),
        Value::Number(n) => n
            .as_f64()
            .and_then(|f| std::time::Duration::try_from_secs_f64(f).ok())
            .ok_or_else(|| err(p, format!("{n} is not a number of seconds"))),
        other => Err(err(p, format!("expected a duration, got {other}"))),
    }
}

/// The longest stop grace period: the engine's stop request takes whole seconds as an `i32`
/// (rounded up, like
/// [`ServiceConfig::stop_timeout_secs`](crate::model::compose::ServiceConfig::stop_timeout_secs)).
const MAX_STOP_SECS: u64 = 2_147_483_647;

pub(super) fn stop_grace_period(
    v: &Value,
    p: &str,
) -> Result<std::time::Duration, ValidationError> {
    let d = duration(v, p)?;
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    if secs > MAX_STOP_SECS {
        return Err(err(
            p,
            format!("at most {MAX_STOP_SECS}s (the engine's stop timeout), got {secs}s"),
        ));
    }
    Ok(d)
}

/// A duration the engine takes in nanoseconds as an `i64` (healthcheck timings): at most
/// about 292 years.
pub(super) fn engine_duration(v: &Value, p: &str) -> Result<std::time::Duration, ValidationError> {
    let d = duration(v, p)?;
    if i64::try_from(d.as_nanos()).is_err() {
        return Err(err(
            p,
            format!("at most {}ns (the engine's limit)", i64::MAX),
        ));
    }
    Ok(d)
}

/// A byte count: a number, or `<n>[bkmgt][b]` (powers of 1024, case-insensitive).
pub(super) fn bytes(v: &Value, p: &str) -> Result<i64, ValidationError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| err(p, format!("{n} is not a byte count"))),
        Value::String(s) => parse_bytes(s).map_err(|m| err(p, m)),
        other => Err(err(p, format!("expected a size, got {other}"))),
    }
}

/// `<n>[bkmgt][b]` (`64m`, `1.5g`, `512kb`, `100`) in bytes.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_len);
    let mult: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" => 1024.0,
        "m" | "mb" => 1024.0 * 1024.0,
        "g" | "gb" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{s:?} is not a size like 64m or 1g")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64m or 1g"))?;
    let b = (n * mult).floor();
    if !b.is_finite() || b >= 9.0e18 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(b as i64)
}

pub(super) fn cpus(v: &Value, p: &str) -> Result<i64, ValidationError> {
    let c = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| err(p, format!("expected a number of CPUs, got {v}")))?;
    if !c.is_finite() || c < 0.0 {
        return Err(err(p, "must be a finite number ≥ 0"));
    }
    let n = (c * 1e9).round();
    if n >= 9.0e18 {
        return Err(err(p, "too large"));
    }
    Ok(n as i64)
}

#[cfg(test)]
mod tests;
