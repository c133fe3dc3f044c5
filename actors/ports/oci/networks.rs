//! Networks: the create body and the read-back (IPAM and driver options kept in labels).
use std::collections::{BTreeMap, HashMap};

use bollard::models::{Ipam as EngineIpam, IpamConfig as EngineIpamConfig, NetworkCreateRequest};

use super::labels::{
    is_supervised, owner, user_labels, APP_UUID_LABEL, DRIVER_OPTS_LABEL, IPAM_CONFIG_LABEL,
    IPAM_OPTIONS_LABEL, NETWORK_NAME_LABEL, SUPERVISED_LABEL,
};
use crate::model::compose::{Ipam, IpamPool, NetworkConfig};
use crate::model::device::scoped_name;

/// Network create body: engine name `<name>_<app uuid>`, the compose settings, and the labels
/// needed to read the configuration back exactly.
pub fn network_create_body(
    app_uuid: &str,
    name: &str,
    cfg: &NetworkConfig,
) -> NetworkCreateRequest {
    let mut labels: HashMap<String, String> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(SUPERVISED_LABEL.into(), String::new());
    labels.insert(NETWORK_NAME_LABEL.into(), name.into());
    labels.insert(APP_UUID_LABEL.into(), app_uuid.into());
    labels.insert(
        IPAM_CONFIG_LABEL.into(),
        serde_json::to_string(&cfg.ipam.config).expect("IPAM pools serialise to JSON"),
    );
    labels.insert(
        IPAM_OPTIONS_LABEL.into(),
        if cfg.ipam.options.is_empty() {
            "[]".to_string()
        } else {
            serde_json::to_string(&cfg.ipam.options).expect("a map serialises to JSON")
        },
    );
    labels.insert(
        DRIVER_OPTS_LABEL.into(),
        serde_json::to_string(&cfg.driver_opts.keys().collect::<Vec<_>>())
            .expect("a list serialises to JSON"),
    );
    NetworkCreateRequest {
        name: scoped_name(name, app_uuid),
        driver: Some(cfg.driver.clone().unwrap_or_else(|| "bridge".to_string())),
        internal: Some(cfg.internal),
        enable_ipv6: Some(cfg.enable_ipv6),
        config_only: Some(cfg.config_only),
        options: Some(
            cfg.driver_opts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        ipam: Some(EngineIpam {
            driver: Some(cfg.ipam.driver.clone()),
            config: Some(
                cfg.ipam
                    .config
                    .iter()
                    .map(|p| EngineIpamConfig {
                        subnet: p.subnet.clone(),
                        gateway: p.gateway.clone(),
                        ip_range: p.ip_range.clone(),
                        auxiliary_addresses: (!p.aux_addresses.is_empty()).then(|| {
                            p.aux_addresses
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect()
                        }),
                    })
                    .collect(),
            ),
            options: Some(
                cfg.ipam
                    .options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        }),
        labels: Some(labels),
        ..Default::default()
    }
}

/// The parts of a network that [`read_network`] needs (list and inspect shapes differ).
struct NetworkFacts<'a> {
    name: Option<&'a String>,
    driver: Option<&'a String>,
    enable_ipv6: Option<bool>,
    internal: Option<bool>,
    config_only: Option<bool>,
    ipam: Option<&'a EngineIpam>,
    options: Option<&'a HashMap<String, String>>,
    labels: Option<&'a HashMap<String, String>>,
}

/// Reads a supervised network back: (app uuid, logical name, config). None for others.
pub fn read_network(n: &bollard::models::Network) -> Option<(String, String, NetworkConfig)> {
    network_from_facts(NetworkFacts {
        name: n.name.as_ref(),
        driver: n.driver.as_ref(),
        enable_ipv6: n.enable_ipv6,
        internal: n.internal,
        config_only: n.config_only,
        ipam: n.ipam.as_ref(),
        options: n.options.as_ref(),
        labels: n.labels.as_ref(),
    })
}

fn network_from_facts(n: NetworkFacts) -> Option<(String, String, NetworkConfig)> {
    let labels = n.labels?;
    if !is_supervised(labels) {
        return None;
    }
    let (app, name) = owner(n.name?, labels, NETWORK_NAME_LABEL)?;
    let engine_opts: BTreeMap<String, String> = n
        .options
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let driver_opts = match labels
        .get(DRIVER_OPTS_LABEL)
        .and_then(|l| serde_json::from_str::<Vec<String>>(l).ok())
    {
        Some(keys) => engine_opts
            .into_iter()
            .filter(|(k, _)| keys.contains(k))
            .collect(),
        None => engine_opts,
    };
    let engine_pools = || -> Vec<IpamPool> {
        n.ipam
            .and_then(|i| i.config.as_ref())
            .map(|c| {
                c.iter()
                    .map(|p| IpamPool {
                        subnet: p.subnet.clone(),
                        gateway: p.gateway.clone(),
                        ip_range: p.ip_range.clone(),
                        aux_addresses: p
                            .auxiliary_addresses
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let engine_ipam_opts = || -> BTreeMap<String, String> {
        n.ipam
            .and_then(|i| i.options.as_ref())
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let ipam = Ipam {
        driver: n
            .ipam
            .and_then(|i| i.driver.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        config: labels
            .get(IPAM_CONFIG_LABEL)
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(engine_pools),
        options: match labels.get(IPAM_OPTIONS_LABEL).map(String::as_str) {
            Some("[]") => BTreeMap::new(),
            Some(l) => serde_json::from_str(l).unwrap_or_else(|_| engine_ipam_opts()),
            None => engine_ipam_opts(),
        },
    };
    Some((
        app,
        name,
        NetworkConfig {
            driver: n.driver.cloned(),
            driver_opts,
            ipam,
            enable_ipv6: n.enable_ipv6.unwrap_or(false),
            internal: n.internal.unwrap_or(false),
            labels: user_labels(labels, NETWORK_NAME_LABEL),
            config_only: n.config_only.unwrap_or(false),
        },
    ))
}
