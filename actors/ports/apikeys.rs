//! Device API keys (spec/device-api.md §2.3): the global key (configured, or generated and saved
//! to the config file by `src/`) and one key per (app id, service name) for the containers with
//! the `io.balena.features.supervisor-api` label (behaviours.md §4.5), kept in the store under
//! [`STORE_KEY`]. A lookup compares the presented key with every key in constant time. Keys are
//! held as [`Secret`]s and never logged.
//!
//! The global key comes from the config file (`api.device_api_key`); when the device is
//! managed and none is configured, `src/startup.rs` generates one and saves it there. Keys are
//! required when the device is managed or a key is configured; an unmanaged device without a
//! key takes none (our reading of device-api.md §2.1 for a device that has no cloud). A
//! lookup compares against every key, every byte, whatever matches, so the time tells nothing
//! but the lengths.
//!
//! A service labelled `io.balena.features.supervisor-api` (`1`, `true`, `on`) gets its key on
//! first use, with the API's address: `BALENA_SUPERVISOR_API_KEY`, `_PORT`, `_HOST`,
//! `_ADDRESS` and their `RESIN_` twins ([`SupervisorApi::container_env`]). A regenerated
//! service key leaves the old one in its container's env: reading the engine, Seek marks such a
//! service's current config with `BALENA_SUPERVISOR_API_KEY=<regenerated>`
//! (`seek::current::mark_regenerated_keys`), so it equals no target and the next apply
//! recreates it with the new key. The global key is reported as `api_secret`, except in front
//! of a legacy supervisor, where the cloud keeps the legacy supervisor's key.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use log::{info, warn};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::compose::ServiceConfig;
use crate::ports::store::{Durability, Store, StoreError};
use crate::{random_hex32, ErrorChain, Secret};

/// Store key of the service keys.
pub const STORE_KEY: &str = crate::ports::store::keys::APIKEYS;
/// The label that gives a service a key and the API's address (behaviours.md §4.5).
pub const FEATURE_LABEL: &str = "io.balena.features.supervisor-api";
/// `BALENA_SUPERVISOR_PORT` when the API has no TCP listener (the relay's port, helios-proxy.md).
pub const DEFAULT_PORT: u16 = 48484;
/// The `supervisor0` gateway upstream gives containers without host networking.
pub const SUPERVISOR_NETWORK_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 114, 104, 1);

/// What a key may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every app, and the device-wide endpoints.
    Global,
    /// Only this app (legacy numeric app id), and the device-wide endpoints.
    App(u32),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::App(id) => write!(f, "app:{id}"),
        }
    }
}

/// Saves a new global key where the configuration keeps it (the config file); told before the
/// key is used, so a key that could not be saved never replaces the old one.
pub type GlobalKeySink = Arc<dyn Fn(&Secret) -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("store service keys")]
    Store(#[from] StoreError),
    #[error("save global key: {0}")]
    SaveGlobal(String),
}

#[derive(Clone)]
struct ServiceKey {
    app_id: u32,
    service: String,
    key: Secret,
}

/// The stored form of the service keys.
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    services: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    app_id: u32,
    service: String,
    key: String,
}

struct Inner {
    required: bool,
    store: Option<Store>,
    save_global: Option<GlobalKeySink>,
    /// The global key; receivers (ReportActor) see every change.
    global: watch::Sender<Option<Secret>>,
    /// The service keys. Its lock also serialises every change (creation, regeneration).
    services: Mutex<Vec<ServiceKey>>,
}

/// The keys the device API accepts. Cheap to clone; clones share the keys.
#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

impl Default for ApiKeys {
    /// No key, none required, nothing persisted.
    fn default() -> ApiKeys {
        ApiKeys::in_memory(None, false)
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("required", &self.inner.required)
            .field("global", &self.inner.global.borrow().is_some())
            .field("services", &self.lock().len())
            .finish()
    }
}

/// Which key a presented key is.
#[derive(Clone, Copy)]
enum Found {
    Global,
    Service(usize),
}

impl ApiKeys {
    /// Keys kept only in memory (tests, tools): service keys are lost at exit.
    pub fn in_memory(global: Option<Secret>, required: bool) -> ApiKeys {
        ApiKeys {
            inner: Arc::new(Inner {
                required,
                store: None,
                save_global: None,
                global: watch::Sender::new(global),
                services: Mutex::new(vec![]),
            }),
        }
    }

    /// The keys of this device: `global` as configured or generated (`src/startup.rs`), the
    /// service keys from the store. `required`: requests on the unix socket must present a key
    /// (spec §2.1: when managed); on TCP the API always requires one (`src/api/auth.rs`). An
    /// unreadable key record is logged and replaced by the next key created; a store that
    /// cannot be read is an error.
    pub fn open(
        store: Store,
        global: Option<Secret>,
        required: bool,
        save_global: GlobalKeySink,
    ) -> Result<ApiKeys, StoreError> {
        let stored = match store.get_json(STORE_KEY) {
            Ok(None) => Stored::default(),
            Ok(Some(v)) => serde_json::from_value(v).unwrap_or_else(|e| {
                warn!(key = STORE_KEY, error:% = e, decision = "reset",
                    reason = "service keys unreadable; services get new keys"; "Service keys unreadable");
                Stored::default()
            }),
            Err(e @ StoreError::Corrupt { .. }) => {
                warn!(key = STORE_KEY, error:% = ErrorChain(&e), decision = "reset",
                    reason = "service keys unreadable; services get new keys"; "Service keys unreadable");
                Stored::default()
            }
            Err(e) => return Err(e),
        };
        let services = stored
            .services
            .into_iter()
            .map(|s| ServiceKey {
                app_id: s.app_id,
                service: s.service,
                key: Secret::new(s.key),
            })
            .collect();
        Ok(ApiKeys {
            inner: Arc::new(Inner {
                required,
                store: Some(store),
                save_global: Some(save_global),
                global: watch::Sender::new(global),
                services: Mutex::new(services),
            }),
        })
    }

    /// Whether requests on the unix socket must present a key (spec §2.1: when managed). On
    /// TCP the API requires one regardless (`src/api/auth.rs`).
    pub fn required(&self) -> bool {
        self.inner.required
    }

    /// The current global key (reported as `api_secret`).
    pub fn global(&self) -> Option<Secret> {
        self.inner.global.borrow().clone()
    }

    /// The global key now and after every regeneration.
    pub fn subscribe_global(&self) -> watch::Receiver<Option<Secret>> {
        self.inner.global.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<ServiceKey>> {
        // A panic while holding the lock cannot leave the list half-changed (it is replaced
        // whole), so a poisoned lock is still usable.
        self.inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Compares `key` with every key, without stopping at a match.
    fn find(&self, services: &[ServiceKey], key: &str) -> Option<Found> {
        let mut found = None;
        if let Some(g) = self.inner.global.borrow().as_ref() {
            if constant_time_eq(g.expose().as_bytes(), key.as_bytes()) {
                found = Some(Found::Global);
            }
        }
        for (i, s) in services.iter().enumerate() {
            let hit = constant_time_eq(s.key.expose().as_bytes(), key.as_bytes());
            if hit && found.is_none() {
                found = Some(Found::Service(i));
            }
        }
        found
    }

    /// The scope of a presented key, if it is one of ours.
    pub fn lookup(&self, key: &str) -> Option<Scope> {
        let services = self.lock();
        self.find(&services, key).map(|f| match f {
            Found::Global => Scope::Global,
            Found::Service(i) => Scope::App(services[i].app_id),
        })
    }

    /// The key of a service, created (and stored, flushed) the first time it is asked for.
    pub fn service_key(&self, app_id: u32, service: &str) -> Result<Secret, StoreError> {
        let mut services = self.lock();
        if let Some(k) = services
            .iter()
            .find(|s| s.app_id == app_id && s.service == service)
        {
            return Ok(k.key.clone());
        }
        let key = Secret::new(random_hex32());
        let mut next = services.clone();
        next.push(ServiceKey {
            app_id,
            service: service.to_string(),
            key: key.clone(),
        });
        self.save(&next)?;
        *services = next;
        info!(app_id, service, decision = "create"; "Service API key created");
        Ok(key)
    }

    /// Replaces the presented key by a new one of the same scope (spec
    /// `/v1/regenerate-api-key`); the old key stops working. None: not one of ours. The new
    /// key is saved first: when that fails, the old key stays.
    pub fn regenerate(&self, old: &str) -> Result<Option<Secret>, ApiKeyError> {
        let mut services = self.lock();
        let Some(found) = self.find(&services, old) else {
            return Ok(None);
        };
        let new = Secret::new(random_hex32());
        match found {
            Found::Global => {
                if let Some(save) = &self.inner.save_global {
                    save(&new).map_err(ApiKeyError::SaveGlobal)?;
                }
                self.inner.global.send_replace(Some(new.clone()));
                info!(scope = "global", decision = "regenerate"; "Device API key regenerated");
            }
            Found::Service(i) => {
                let mut next = services.clone();
                next[i].key = new.clone();
                self.save(&next)?;
                *services = next;
                let s = &services[i];
                info!(scope = "app", app_id = s.app_id, service:% = s.service,
                    decision = "regenerate"; "Device API key regenerated");
            }
        }
        Ok(Some(new))
    }

    fn save(&self, services: &[ServiceKey]) -> Result<(), StoreError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let stored = Stored {
            services: services
                .iter()
                .map(|s| StoredKey {
                    app_id: s.app_id,
                    service: s.service.clone(),
                    key: s.key.expose().to_string(),
                })
                .collect(),
        };
        let v = serde_json::to_value(&stored).expect("the key records serialise");
        store.put_json(STORE_KEY, &v, Durability::Flush)
    }
}

/// What containers with the supervisor-api feature get: their service's key and where the API
/// listens. Cheap to clone.
#[derive(Clone, Default)]
pub struct SupervisorApi {
    pub keys: ApiKeys,
    /// The API's TCP address once bound (port 0 resolved); unset without a TCP listener.
    address: Arc<OnceLock<SocketAddr>>,
}

impl SupervisorApi {
    pub fn new(keys: ApiKeys) -> SupervisorApi {
        SupervisorApi {
            keys,
            address: Arc::default(),
        }
    }

    /// Records the API's bound TCP address; the first one wins.
    pub fn set_address(&self, address: SocketAddr) {
        let _ = self.address.set(address);
    }

    /// Host and port a container reaches the API at: `127.0.0.1` with host networking, else
    /// the listener's address when it is a specific non-loopback one, else the `supervisor0`
    /// gateway as upstream (reached through the relay on balenaOS). The port is the bound TCP
    /// port, or 48484 without a TCP listener (container mode: the relay's port).
    pub fn endpoint(&self, host_network: bool) -> SocketAddr {
        let bound = self.address.get().copied();
        let port = bound
            .map(|a| a.port())
            .filter(|p| *p != 0)
            .unwrap_or(DEFAULT_PORT);
        let ip = bound.map(|a| a.ip());
        let specific = ip.filter(|ip| !ip.is_unspecified() && !ip.is_loopback());
        let host = match (specific, host_network, ip) {
            (Some(ip), _, _) => ip,
            (None, true, Some(v6 @ IpAddr::V6(_))) if v6.is_loopback() => v6,
            (None, true, _) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (None, false, _) => IpAddr::V4(SUPERVISOR_NETWORK_GATEWAY),
        };
        SocketAddr::new(host, port)
    }

    /// The variables for a container of `service` in app `app_id`: empty unless its labels
    /// enable the feature (`1`, `true`, `on`); else `BALENA_SUPERVISOR_API_KEY`, `_PORT`,
    /// `_HOST`, `_ADDRESS` and their `RESIN_` twins. Creates the service's key on first use.
    pub fn container_env(
        &self,
        app_id: u32,
        service: &str,
        cfg: &ServiceConfig,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let mut env = BTreeMap::new();
        if !cfg.labels.get(FEATURE_LABEL).is_some_and(|v| truthy(v)) {
            return Ok(env);
        }
        let key = self.keys.service_key(app_id, service)?;
        let at = self.endpoint(cfg.network_mode.as_deref() == Some("host"));
        let host = at.ip().to_string();
        let port = at.port().to_string();
        let address = format!("http://{at}");
        for prefix in ["BALENA", "RESIN"] {
            for (name, value) in [
                ("API_KEY", key.expose()),
                ("PORT", &port),
                ("HOST", &host),
                ("ADDRESS", &address),
            ] {
                env.insert(format!("{prefix}_SUPERVISOR_{name}"), value.to_string());
            }
        }
        Ok(env)
    }
}

fn truthy(v: &str) -> bool {
    ["1", "true", "on"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t))
}

/// Compares without an early exit on the first differing byte (only the length leaks).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    #[cfg(test)]
    tests::COMPARED.with(|c| c.set(c.get() + a.len()));
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(dir, 1 << 20).expect("store opens").0
    }

    fn sink() -> (GlobalKeySink, Arc<Mutex<Vec<String>>>) {
        let saved = Arc::new(Mutex::new(vec![]));
        let s = saved.clone();
        let sink: GlobalKeySink = Arc::new(move |k: &Secret| {
            s.lock().unwrap().push(k.expose().to_string());
            Ok(())
        });
        (sink, saved)
    }

    fn open(dir: &std::path::Path, global: Option<&str>) -> ApiKeys {
        ApiKeys::open(store(dir), global.map(Secret::new), true, sink().0).unwrap()
    }

    fn is_key(k: &str) -> bool {
        k.len() == 32
            && k.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    }

    #[test]
    fn service_keys_are_created_once_reused_and_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = open(tmp.path(), Some("globalkey"));
        let a = keys.service_key(7, "main").unwrap();
        assert!(is_key(a.expose()));
        assert_eq!(keys.service_key(7, "main").unwrap(), a, "reused");
        let b = keys.service_key(7, "sidecar").unwrap();
        let c = keys.service_key(8, "main").unwrap();
        assert!(a != b && a != c && b != c, "one key per (app, service)");
        drop(keys);

        let keys = open(tmp.path(), Some("globalkey"));
        assert_eq!(keys.service_key(7, "main").unwrap(), a, "kept in the store");
        assert_eq!(keys.lookup(c.expose()), Some(Scope::App(8)));
    }

    thread_local! {
        /// Bytes compared by `constant_time_eq` on this thread.
        pub(super) static COMPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn compared(f: impl FnOnce()) -> usize {
        COMPARED.with(|c| c.set(0));
        f();
        COMPARED.with(|c| c.get())
    }

    #[test]
    fn a_lookup_compares_every_byte_of_every_key() {
        let tmp = tempfile::tempdir().unwrap();
        let global = "0123456789abcdef0123456789abcdef";
        let keys = open(tmp.path(), Some(global));
        let svc = keys.service_key(42, "main").unwrap();
        keys.service_key(43, "main").unwrap();
        let all = 3 * 32;
        // Wrong in the first byte, wrong in the last, the first key, the last key: the same
        // work, so the time says nothing about how much of a key was right or which matched.
        for k in [
            "x123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdex",
            global,
            svc.expose(),
        ] {
            assert_eq!(
                compared(|| {
                    let _ = keys.lookup(k);
                }),
                all,
                "{k}"
            );
        }
    }

    #[test]
    fn lookup_tells_global_from_service_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = open(tmp.path(), Some("0123456789abcdef0123456789abcdef"));
        let svc = keys.service_key(42, "main").unwrap();
        assert_eq!(
            keys.lookup("0123456789abcdef0123456789abcdef"),
            Some(Scope::Global)
        );
        assert_eq!(keys.lookup(svc.expose()), Some(Scope::App(42)));
        for wrong in ["", "0123456789abcdef0123456789abcdee", "0123", "x"] {
            assert_eq!(keys.lookup(wrong), None, "{wrong:?}");
        }
        let none = ApiKeys::default();
        assert!(!none.required());
        assert_eq!(none.lookup(""), None);
    }

    #[test]
    fn regenerating_the_global_key_saves_and_publishes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (sink, saved) = sink();
        let keys = ApiKeys::open(
            store(tmp.path()),
            Some(Secret::new("oldglobal")),
            true,
            sink,
        )
        .unwrap();
        let mut rx = keys.subscribe_global();
        rx.borrow_and_update();
        assert_eq!(keys.regenerate("notakey").unwrap(), None);
        let new = keys.regenerate("oldglobal").unwrap().expect("ours");
        assert!(is_key(new.expose()));
        assert_eq!(*saved.lock().unwrap(), vec![new.expose().to_string()]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), Some(new.clone()));
        assert_eq!(keys.global(), Some(new.clone()));
        assert_eq!(keys.lookup("oldglobal"), None);
        assert_eq!(keys.lookup(new.expose()), Some(Scope::Global));
    }

    #[test]
    fn a_global_key_that_cannot_be_saved_is_not_used() {
        let failing: GlobalKeySink = Arc::new(|_: &Secret| Err("read-only".to_string()));
        let tmp = tempfile::tempdir().unwrap();
        let keys =
            ApiKeys::open(store(tmp.path()), Some(Secret::new("old")), true, failing).unwrap();
        assert!(matches!(
            keys.regenerate("old"),
            Err(ApiKeyError::SaveGlobal(_))
        ));
        assert_eq!(keys.lookup("old"), Some(Scope::Global));
    }

    #[test]
    fn regenerating_a_service_key_keeps_its_scope_and_is_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = open(tmp.path(), Some("g"));
        let old = keys.service_key(5, "main").unwrap();
        let other = keys.service_key(5, "other").unwrap();
        let new = keys.regenerate(old.expose()).unwrap().expect("ours");
        assert_ne!(new, old);
        assert_eq!(keys.lookup(old.expose()), None);
        assert_eq!(keys.lookup(new.expose()), Some(Scope::App(5)));
        assert_eq!(keys.lookup(other.expose()), Some(Scope::App(5)));
        assert_eq!(keys.global(), Some(Secret::new("g")), "global unchanged");
        drop(keys);
        let keys = open(tmp.path(), Some("g"));
        assert_eq!(keys.service_key(5, "main").unwrap(), new);
    }

    #[test]
    fn an_unreadable_key_record_starts_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        s.put_json(STORE_KEY, &serde_json::json!([1, 2]), Durability::Flush)
            .unwrap();
        let keys = ApiKeys::open(s, None, true, sink().0).unwrap();
        assert!(is_key(keys.service_key(1, "main").unwrap().expose()));
    }

    fn labelled(value: &str, network_mode: Option<&str>) -> ServiceConfig {
        ServiceConfig {
            labels: BTreeMap::from([(FEATURE_LABEL.to_string(), value.to_string())]),
            network_mode: network_mode.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn containers_with_the_feature_get_their_key_and_the_address() {
        let api = SupervisorApi::new(ApiKeys::in_memory(None, false));
        api.set_address("0.0.0.0:41234".parse().unwrap());
        api.set_address("0.0.0.0:1".parse().unwrap());
        let env = api
            .container_env(3, "main", &labelled("TRUE", Some("host")))
            .unwrap();
        let key = api.keys.service_key(3, "main").unwrap();
        for p in ["BALENA", "RESIN"] {
            let get = |n: &str| env[&format!("{p}_SUPERVISOR_{n}")].as_str();
            assert_eq!(get("API_KEY"), key.expose());
            assert_eq!(get("PORT"), "41234");
            assert_eq!(get("HOST"), "127.0.0.1");
            assert_eq!(get("ADDRESS"), "http://127.0.0.1:41234");
        }
        assert_eq!(env.len(), 8);
        assert_eq!(api.keys.lookup(key.expose()), Some(Scope::App(3)));

        let bridge = api.container_env(3, "main", &labelled("on", None)).unwrap();
        assert_eq!(bridge["BALENA_SUPERVISOR_HOST"], "10.114.104.1");
        assert_eq!(
            bridge["BALENA_SUPERVISOR_ADDRESS"],
            "http://10.114.104.1:41234"
        );
        for off in ["0", "false", "", "yes"] {
            assert!(api
                .container_env(3, "x", &labelled(off, Some("host")))
                .unwrap()
                .is_empty());
        }
        assert!(api
            .container_env(3, "x", &ServiceConfig::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_address_follows_the_listener() {
        let none = SupervisorApi::default();
        assert_eq!(none.endpoint(true), "127.0.0.1:48484".parse().unwrap());
        assert_eq!(none.endpoint(false), "10.114.104.1:48484".parse().unwrap());
        let specific = SupervisorApi::default();
        specific.set_address("192.168.1.5:48484".parse().unwrap());
        assert_eq!(
            specific.endpoint(false),
            "192.168.1.5:48484".parse().unwrap()
        );
        assert_eq!(
            specific.endpoint(true),
            "192.168.1.5:48484".parse().unwrap()
        );
        let v6 = SupervisorApi::default();
        v6.set_address("[::1]:9".parse().unwrap());
        assert_eq!(v6.endpoint(true), "[::1]:9".parse().unwrap());
    }
}
