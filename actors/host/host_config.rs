//! Host config handling: read the hostname and proxy, and patch them (config.json and
//! `system-proxy/` on balenaOS, hostnamed on generic Linux), restarting the proxy units.
use std::time::Duration;

use actix::{Context, Handler};
use log::{info, warn};
use serde_json::{Map, Value};

use crate::ports::dbus::{Bus, BusError, UnitAction};
use crate::ErrorChain;

use super::{config, GetHostConfig, HostActor, HostConfig, HostError, PatchHostConfig};

/// How long a unit job may take before its restart is an error.
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

impl Handler<GetHostConfig> for HostActor {
    type Result = actix::ResponseFuture<Result<HostConfig, HostError>>;

    fn handle(&mut self, _: GetHostConfig, _: &mut Context<Self>) -> Self::Result {
        let (boot, uuid) = (self.settings.boot.clone(), self.settings.uuid.clone());
        let hostnamed = self.bus_with("hostname1");
        Box::pin(async move {
            let failed = |e: &(dyn std::error::Error + 'static)| {
                HostError::Failed(ErrorChain(e).to_string())
            };
            let (hostname, proxy) = if boot.present() {
                let doc = boot.read_config_json().map_err(|e| failed(&e))?;
                let hostname = match doc.get("hostname").and_then(Value::as_str) {
                    Some(h) if !h.is_empty() => h.to_string(),
                    _ => short_uuid(&uuid),
                };
                (hostname, boot.read_proxy().map_err(|e| failed(&e))?)
            } else {
                let hostname = match hostnamed {
                    Some(bus) => bus.static_hostname().await.map_err(|e| failed(&e))?,
                    None => std::fs::read_to_string("/etc/hostname")
                        .map(|h| h.trim().to_string())
                        .map_err(|e| failed(&e))?,
                };
                (hostname, None)
            };
            Ok(HostConfig { hostname, proxy })
        })
    }
}

fn short_uuid(uuid: &str) -> String {
    uuid.chars().take(7).collect()
}

impl Handler<PatchHostConfig> for HostActor {
    type Result = actix::ResponseFuture<Result<(), HostError>>;

    fn handle(&mut self, msg: PatchHostConfig, _: &mut Context<Self>) -> Self::Result {
        let boot = self.settings.boot.clone();
        let balena_os = boot.present();
        let hostname = msg.hostname.map(|h| match h.is_empty() {
            true => short_uuid(&self.settings.uuid),
            false => h,
        });
        // Everything is checked before anything is locked or written.
        let checked = (|| {
            if let Some(h) = &hostname {
                if h.len() > 64
                    || !h
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    return Err(HostError::Invalid(format!(
                        "invalid hostname {h:?}: letters, digits, '-' and '.' only, at most 64"
                    )));
                }
            }
            let hostnamed = match (&hostname, balena_os) {
                (Some(_), false) => Some(self.bus_with("hostname1").ok_or_else(|| {
                    HostError::Unavailable(
                        "cannot set the hostname: no balenaOS config.json and org.freedesktop.hostname1 is not on the system bus".into(),
                    )
                })?),
                _ => None,
            };
            let systemd = match &msg.proxy {
                None => None,
                Some(_) if !balena_os => {
                    return Err(HostError::Unavailable(
                        "proxy settings need balenaOS (no config.json in the boot partition)"
                            .into(),
                    ))
                }
                Some(patch) => {
                    let current = boot
                        .read_proxy()
                        .map_err(|e| HostError::Failed(ErrorChain(&e).to_string()))?;
                    config::merge_proxy(current, patch)
                        .map_err(|e| HostError::Invalid(e.to_string()))?;
                    Some(self.bus_with("systemd1").ok_or_else(|| {
                        HostError::Unavailable(
                            "cannot restart the proxy: org.freedesktop.systemd1 is not on the system bus".into(),
                        )
                    })?)
                }
            };
            Ok((hostnamed, systemd))
        })();
        let (hostnamed, systemd) = match checked {
            Ok(x) => x,
            Err(e) => {
                warn!(error:% = e, decision = "refuse", reason = "bad or unsupported host config"; "Host config refused");
                return Box::pin(async move { Err(e) });
            }
        };
        let apps = match self.keep_all_locks(msg.force, false) {
            Ok(apps) => apps,
            Err((app, e)) => {
                warn!(app:% = app, error:% = e, decision = "refuse", reason = "update locks held"; "Host config refused");
                return Box::pin(async move { Err(HostError::Locked(e)) });
            }
        };
        let locks = self.deps.locks.clone();
        let proxy = msg.proxy;
        Box::pin(async move {
            let res = patch_host_config(&boot, hostname, hostnamed, proxy, systemd).await;
            for a in &apps {
                locks.unkeep(a);
            }
            if let Err(e) = &res {
                warn!(error:% = e, decision = "abort", reason = "the host refused the change"; "Host config failed");
            }
            res
        })
    }
}

/// Applies a checked host-config patch: hostname first, then the proxy files and units.
async fn patch_host_config(
    boot: &config::BootFiles,
    hostname: Option<String>,
    hostnamed: Option<Bus>,
    proxy: Option<Map<String, Value>>,
    systemd: Option<Bus>,
) -> Result<(), HostError> {
    let failed =
        |e: &(dyn std::error::Error + 'static)| HostError::Failed(ErrorChain(e).to_string());
    if let Some(h) = hostname {
        match hostnamed {
            Some(bus) => {
                bus.set_static_hostname(&h).await.map_err(|e| failed(&e))?;
                info!(hostname:% = h, decision = "set_hostname", reason = "device API request, generic Linux: hostnamed";
                    "Hostname set");
            }
            None => {
                boot.write_hostname(&h).map_err(|e| failed(&e))?;
                info!(hostname:% = h, decision = "set_hostname",
                    reason = "device API request, balenaOS: config.json, applied by the OS"; "Hostname set");
            }
        }
    }
    if let (Some(patch), Some(bus)) = (proxy, systemd) {
        let now = boot.patch_proxy(&patch).map_err(|e| failed(&e))?;
        let (kind, ip) = now
            .as_ref()
            .map(|p| (p.get("type").cloned(), p.get("ip").cloned()))
            .unwrap_or_default();
        info!(proxy_type:? = kind, proxy_ip:? = ip, decision = "set_proxy", reason = "device API request";
            "Proxy configured");
        // The proxy config unit has had two names; the first one that exists is restarted.
        let mut restarted = false;
        for unit in config::PROXY_CONFIG_UNITS {
            match bus.unit(UnitAction::Restart, unit, JOB_TIMEOUT).await {
                Ok(()) => {
                    restarted = true;
                    break;
                }
                Err(BusError::NoSuchUnit { .. }) => continue,
                Err(e) => return Err(failed(&e)),
            }
        }
        bus.unit(UnitAction::Restart, config::REDSOCKS_UNIT, JOB_TIMEOUT)
            .await
            .map_err(|e| failed(&e))?;
        info!(units = if restarted { 2 } else { 1 }, decision = "restart_units", reason = "the proxy changed";
            "Proxy units restarted");
    }
    Ok(())
}
