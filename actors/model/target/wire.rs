//! The serde shapes of an app target as it arrives (remote document or local API), with the
//! lenient number and `null` handling of the wire.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// One app of a target (`apps[<uuid>]` remotely, the body of `POST /v3/device/apps/{uuid}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppTarget {
    #[serde(deserialize_with = "de_u32")]
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// At most one release (checked by [`app_from_target`](super::app_from_target)).
    #[serde(default, deserialize_with = "de_null_default")]
    pub releases: BTreeMap<String, ReleaseTarget>,
    /// `fleet` | `app` | `block`; accepted, not used here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, deserialize_with = "de_null_default")]
    pub is_host: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReleaseTarget {
    #[serde(
        default,
        deserialize_with = "de_opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<u64>,
    #[serde(default, deserialize_with = "de_null_default")]
    pub services: BTreeMap<String, ServiceTarget>,
    /// Compose volume definitions (`null` or an object).
    #[serde(default, deserialize_with = "de_null_default")]
    pub volumes: BTreeMap<String, Value>,
    /// Compose network definitions (`null` or an object).
    #[serde(default, deserialize_with = "de_null_default")]
    pub networks: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceTarget {
    #[serde(deserialize_with = "de_u32")]
    pub id: u32,
    pub image: String,
    #[serde(
        default,
        deserialize_with = "de_opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    #[serde(default, deserialize_with = "de_string_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "de_string_map")]
    pub environment: BTreeMap<String, String>,
    /// The compose service definition; parsed and validated by [`app_from_target`](super::app_from_target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composition: Option<Value>,
}

fn de_null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn id_from_value(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a non-negative integer")),
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is not a non-negative integer")),
        other => Err(format!("expected an integer, got {other}")),
    }
}

fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    let n = id_from_value(&v).map_err(serde::de::Error::custom)?;
    u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is too large an id")))
}

fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => id_from_value(&v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn de_string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m: Option<BTreeMap<String, Value>> = Option::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (k, v) in m.unwrap_or_default() {
        match v {
            Value::Null => {}
            Value::String(s) => {
                out.insert(k, s);
            }
            Value::Number(n) => {
                out.insert(k, n.to_string());
            }
            Value::Bool(b) => {
                out.insert(k, b.to_string());
            }
            other => {
                return Err(serde::de::Error::custom(format!(
                    "{k}: expected a string, got {other}"
                )))
            }
        }
    }
    Ok(out)
}
