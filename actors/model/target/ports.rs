//! Published ports: the long and short forms, range expansion, and the per-target cap.
use serde_json::Value;

use super::scalars::{list, string};
use super::{err, ValidationError};
use crate::model::compose::PortMapping;

/// Port mappings one target may expand to (`1-65535` is one full range's worth): one app
/// target (`POST /v3/device/apps/{uuid}`), or every app of one cloud document together. Each
/// costs a few hundred bytes through to the engine's HostConfig (model, stored config label,
/// port bindings, exposed ports, the create body), so the cap keeps a target's ports to tens
/// of MB at worst; without it a few `"1-65535:1-65535"` strings ask for gigabytes.
pub const MAX_PORT_MAPPINGS: u32 = 65_535;

/// What is left of [`MAX_PORT_MAPPINGS`] while a target is validated; counted from range
/// bounds before anything is expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBudget {
    left: u32,
}

impl Default for PortBudget {
    fn default() -> Self {
        PortBudget {
            left: MAX_PORT_MAPPINGS,
        }
    }
}

impl PortBudget {
    fn take(&mut self, n: u32, field: &str) -> Result<(), ValidationError> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(err(
                field,
                format!(
                    "{n} port mappings would exceed the {MAX_PORT_MAPPINGS} a target may publish \
                     in total ({} left)",
                    self.left
                ),
            )),
        }
    }
}

/// Parses every entry first, takes their expanded count from `budget`, and only then expands.
pub(super) fn ports(
    v: &Value,
    p: &str,
    budget: &mut PortBudget,
) -> Result<Vec<PortMapping>, ValidationError> {
    let mut specs = Vec::new();
    for (i, x) in list(v, p)?.iter().enumerate() {
        let ip = format!("{p}[{i}]");
        let spec = match x {
            Value::Number(_) => port_spec(&string(x, &ip)?).map_err(|m| err(&ip, m))?,
            Value::String(s) => port_spec(s).map_err(|m| err(&ip, m))?,
            Value::Object(o) => long_port(o, &ip)?,
            other => {
                return Err(err(
                    &ip,
                    format!("expected a string or an object, got {other}"),
                ))
            }
        };
        budget.take(spec.count(), &ip)?;
        specs.push(spec);
    }
    Ok(specs.iter().flat_map(PortSpec::expand).collect())
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let one = |x: &str| -> Result<u16, String> {
        x.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{x:?} is not a port number (1-65535)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("{s:?} is not an increasing range"));
            }
            Ok((a, b))
        }
        None => {
            let a = one(s)?;
            Ok((a, a))
        }
    }
}

fn protocol(s: &str) -> Result<String, String> {
    let l = s.to_ascii_lowercase();
    if matches!(l.as_str(), "tcp" | "udp" | "sctp") {
        Ok(l)
    } else {
        Err(format!("{s:?} is not one of tcp, udp, sctp"))
    }
}

/// One `ports` entry before expansion: host and container ranges of equal length map one to
/// one; one container port with a host range publishes every host port on it.
#[derive(Debug, Clone, PartialEq)]
struct PortSpec {
    host: (u16, u16),
    container: (u16, u16),
    protocol: String,
    host_ip: Option<String>,
}

impl PortSpec {
    fn new(
        host: (u16, u16),
        container: (u16, u16),
        protocol: String,
        host_ip: Option<String>,
    ) -> Result<PortSpec, String> {
        let spec = PortSpec {
            host,
            container,
            protocol,
            host_ip,
        };
        let cn = u32::from(container.1 - container.0) + 1;
        if cn != 1 && spec.count() != cn {
            return Err(format!(
                "host range {}-{} and container range {}-{} differ in length",
                host.0, host.1, container.0, container.1
            ));
        }
        Ok(spec)
    }

    /// How many mappings [`PortSpec::expand`] makes: one per host port.
    fn count(&self) -> u32 {
        u32::from(self.host.1 - self.host.0) + 1
    }

    fn expand(&self) -> impl Iterator<Item = PortMapping> + '_ {
        let one = self.container.0 == self.container.1;
        let at = |base: u16, i: u32| {
            u16::try_from(u32::from(base) + i).expect("i is below the range's length")
        };
        (0..self.count()).map(move |i| PortMapping {
            target: if one {
                self.container.0
            } else {
                at(self.container.0, i)
            },
            published: at(self.host.0, i),
            protocol: self.protocol.clone(),
            host_ip: self.host_ip.clone(),
        })
    }
}

/// `[[ip:]host[-host]:]container[-container][/protocol]`; a bare container port (or an
/// empty host part) is published on the same host port.
pub fn parse_port(s: &str) -> Result<Vec<PortMapping>, String> {
    Ok(port_spec(s)?.expand().collect())
}

fn port_spec(s: &str) -> Result<PortSpec, String> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((a, b)) => (a, protocol(b)?),
        None => (s, "tcp".to_string()),
    };
    let (ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (ip, rest) = r
            .split_once("]:")
            .ok_or_else(|| format!("{s:?}: unterminated [ipv6] address"))?;
        (Some(ip.to_string()), rest)
    } else {
        (None, spec)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [a, h, c]) => (Some(a.to_string()), Some(*h), *c),
        (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
        _ => return Err(format!("{s:?} is not [[ip:]host:]container[/protocol]")),
    };
    let container = port_range(container)?;
    let host = match host {
        Some(h) if !h.is_empty() => port_range(h)?,
        _ => container,
    };
    let ip = ip.filter(|i| !i.is_empty());
    PortSpec::new(host, container, proto, ip)
}

fn long_port(o: &serde_json::Map<String, Value>, p: &str) -> Result<PortSpec, ValidationError> {
    let get = |k: &str| o.get(k).filter(|v| !v.is_null());
    let target = get("target").ok_or_else(|| err(p, "target is required"))?;
    let tp = format!("{p}.target");
    let container = port_range(&string(target, &tp)?).map_err(|m| err(&tp, m))?;
    let host = match get("published") {
        Some(h) => {
            let pp = format!("{p}.published");
            port_range(&string(h, &pp)?).map_err(|m| err(&pp, m))?
        }
        None => container,
    };
    let proto = match get("protocol") {
        Some(x) => {
            let pp = format!("{p}.protocol");
            protocol(&string(x, &pp)?).map_err(|m| err(&pp, m))?
        }
        None => "tcp".to_string(),
    };
    let ip = get("host_ip")
        .map(|x| string(x, &format!("{p}.host_ip")))
        .transpose()?
        .filter(|i| !i.is_empty());
    PortSpec::new(host, container, proto, ip).map_err(|m| err(p, m))
}

#[cfg(test)]
mod tests;
