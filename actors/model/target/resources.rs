//! The release's networks (with IPAM) and volumes, as the app's resources.
use std::collections::BTreeMap;

use serde_json::Value;

use super::scalars::{boolean, list, string, string_map};
use super::service::{check_label_key, normalise_labels};
use super::{err, ValidationError};
use crate::model::compose::{Ipam, IpamPool, NetworkConfig, VolumeConfig};

fn object<'a>(
    v: &'a Value,
    p: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, ValidationError> {
    match v {
        Value::Null => Ok(None),
        Value::Object(o) => Ok(Some(o)),
        other => Err(err(p, format!("expected an object, got {other}"))),
    }
}

/// Labels helios sets on networks and volumes itself.
fn check_reserved_labels(
    labels: &BTreeMap<String, String>,
    p: &str,
) -> Result<(), ValidationError> {
    for k in labels.keys() {
        check_label_key(k, &format!("{p}.{k}"))?;
        let reserved = matches!(
            k.as_str(),
            "io.balena.supervised"
                | "io.balena.app-uuid"
                | "io.balena.network-name"
                | "io.balena.volume-name"
        ) || k.starts_with("io.balena.private.");
        if reserved {
            return Err(err(
                &format!("{p}.{k}"),
                "this label is reserved for helios",
            ));
        }
    }
    Ok(())
}

pub(super) fn network_config(v: &Value, p: &str) -> Result<NetworkConfig, ValidationError> {
    let mut c = NetworkConfig {
        driver: Some("bridge".to_string()),
        ..Default::default()
    };
    let Some(o) = object(v, p)? else {
        return Ok(c);
    };
    for (k, x) in o {
        if x.is_null() {
            continue;
        }
        let kp = format!("{p}.{k}");
        match k.as_str() {
            "driver" => c.driver = Some(string(x, &kp)?),
            "driver_opts" => c.driver_opts = string_map(x, &kp)?,
            "enable_ipv6" => c.enable_ipv6 = boolean(x, &kp)?,
            "internal" => c.internal = boolean(x, &kp)?,
            "config_only" => c.config_only = boolean(x, &kp)?,
            "labels" => {
                c.labels = normalise_labels(string_map(x, &kp)?);
                check_reserved_labels(&c.labels, &kp)?;
            }
            "ipam" => c.ipam = ipam(x, &kp)?,
            _ => {}
        }
    }
    Ok(c)
}

fn ipam(v: &Value, p: &str) -> Result<Ipam, ValidationError> {
    let mut ipam = Ipam::default();
    let Some(o) = object(v, p)? else {
        return Ok(ipam);
    };
    for (k, x) in o {
        if x.is_null() {
            continue;
        }
        let kp = format!("{p}.{k}");
        match k.as_str() {
            "driver" => ipam.driver = string(x, &kp)?,
            "options" => ipam.options = string_map(x, &kp)?,
            "config" => {
                for (i, pool) in list(x, &kp)?.iter().enumerate() {
                    let pp = format!("{kp}[{i}]");
                    let po = object(pool, &pp)?.ok_or_else(|| err(&pp, "expected an object"))?;
                    let mut pool = IpamPool::default();
                    for (pk, pv) in po {
                        if pv.is_null() {
                            continue;
                        }
                        let fp = format!("{pp}.{pk}");
                        match pk.as_str() {
                            "subnet" => pool.subnet = Some(string(pv, &fp)?),
                            "gateway" => pool.gateway = Some(string(pv, &fp)?),
                            "ip_range" => pool.ip_range = Some(string(pv, &fp)?),
                            "aux_addresses" => pool.aux_addresses = string_map(pv, &fp)?,
                            _ => {}
                        }
                    }
                    ipam.config.push(pool);
                }
            }
            _ => {}
        }
    }
    Ok(ipam)
}

pub(super) fn volume_config(v: &Value, p: &str) -> Result<VolumeConfig, ValidationError> {
    let mut c = VolumeConfig {
        driver: Some("local".to_string()),
        ..Default::default()
    };
    let Some(o) = object(v, p)? else {
        return Ok(c);
    };
    for (k, x) in o {
        if x.is_null() {
            continue;
        }
        let kp = format!("{p}.{k}");
        match k.as_str() {
            "driver" => c.driver = Some(string(x, &kp)?),
            "driver_opts" => c.driver_opts = string_map(x, &kp)?,
            "labels" => {
                c.labels = normalise_labels(string_map(x, &kp)?);
                check_reserved_labels(&c.labels, &kp)?;
            }
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests;
