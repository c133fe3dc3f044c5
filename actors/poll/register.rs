//! Registration of a new device (spec/registration.md §4-§5): `POST /device/register` with the
//! uuid and device key the device chose, and on 409 the key exchange instead of upstream
//! helios' "409 means it worked". One attempt per call: retry and backoff are the caller's,
//! errors say whether to retry (`is_transient`) or to start over with a new identity
//! (`needs_new_identity`). Keys are never logged.
//!
//! The 409 key exchange (registration.md §5): when our own key already sees the device, an
//! earlier attempt went through; else the provisioning key looks the device up and creates
//! our key for it. A transient failure of the first lookup stops there, so the same identity
//! is retried rather than given up. The answer's uuid must be ours; a different device key in
//! the answer wins over ours (logged).
//!
//! Which identity is used at all is decided once in `src/config.rs` (spec/helios-api-v3.md
//! §5.4): uuid, endpoint and key all given are used; else a stored identity in the config
//! file wins (differing values given are ignored, with a warning); else a provisioning key
//! makes PollActor register (retrying with its poll backoff) and the identity is written to
//! the config file; else the device is unmanaged. PollActor lets each attempt generate the
//! device key and retries any failure with the same uuid; it does not act on
//! `needs_new_identity` yet.
use std::fmt;
use std::time::{Duration, SystemTime};

use log::{debug, info, warn};

use crate::ports::cloud::{Cloud, CloudError, RegisterRequest};

/// What one registration attempt needs.
#[derive(Clone, PartialEq)]
pub struct RegisterParams {
    /// Fleet provisioning key.
    pub provisioning_key: String,
    /// Fleet (application) id.
    pub fleet: u64,
    pub device_type: String,
    pub uuid: String,
    /// The device API key chosen earlier. Generated when `None`; better generated and
    /// persisted by the caller *before* the first attempt, so that an attempt after a crash
    /// sends the same key (registration.md §2). Either way the key exchange recovers.
    pub api_key: Option<String>,
    pub supervisor_version: Option<String>,
    pub os_version: Option<String>,
    /// `dev` or `prod`.
    pub os_variant: Option<String>,
    /// Space-separated MAC addresses.
    pub mac_address: Option<String>,
}

impl fmt::Debug for RegisterParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterParams")
            .field("provisioning_key", &"<redacted>")
            .field("fleet", &self.fleet)
            .field("device_type", &self.device_type)
            .field("uuid", &self.uuid)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("supervisor_version", &self.supervisor_version)
            .field("os_version", &self.os_version)
            .field("os_variant", &self.os_variant)
            .field("mac_address", &self.mac_address)
            .finish()
    }
}

/// How the identity was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 201: a new device.
    Registered,
    /// 409, and the device key already works (an earlier attempt went through).
    KeyAlreadyValid,
    /// 409, and the device key was created for the existing device with the provisioning key.
    KeyExchanged,
}

/// The identity to persist: from now on every call uses `api_key` (never the provisioning key).
#[derive(Clone, PartialEq)]
pub struct Identity {
    pub uuid: String,
    pub api_key: String,
    /// Numeric device id on the API (`deviceId`).
    pub device_id: u64,
    pub fleet: u64,
    pub device_type: String,
    pub registered_at: SystemTime,
    pub outcome: Outcome,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("uuid", &self.uuid)
            .field("api_key", &"<redacted>")
            .field("device_id", &self.device_id)
            .field("fleet", &self.fleet)
            .field("device_type", &self.device_type)
            .field("registered_at", &self.registered_at)
            .field("outcome", &self.outcome)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("register device {uuid}")]
    Register {
        uuid: String,
        #[source]
        source: CloudError,
    },
    #[error("look up device {uuid}")]
    Lookup {
        uuid: String,
        #[source]
        source: CloudError,
    },
    #[error("create the device key of device {uuid}")]
    CreateKey {
        uuid: String,
        #[source]
        source: CloudError,
    },
    #[error("device {uuid} exists but the provisioning key cannot see it")]
    UnknownDevice { uuid: String },
    #[error("registration of device {uuid}: {reason}")]
    InvalidAnswer { uuid: String, reason: String },
}

impl RegisterError {
    /// Retry the same identity with backoff (network, timeouts, 408/429/5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            RegisterError::Register { source, .. }
            | RegisterError::Lookup { source, .. }
            | RegisterError::CreateKey { source, .. } => source.is_transient(),
            RegisterError::UnknownDevice { .. } | RegisterError::InvalidAnswer { .. } => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegisterError::Register { source, .. }
            | RegisterError::Lookup { source, .. }
            | RegisterError::CreateKey { source, .. } => source.retry_after(),
            RegisterError::UnknownDevice { .. } | RegisterError::InvalidAnswer { .. } => None,
        }
    }

    /// The uuid is taken by a device the fleet's provisioning key cannot see (deleted, moved,
    /// someone else's): generate a new uuid and device key, persist both, and register again
    /// (registration.md §5, `regenerateOnFailure`). Only a definite "not found" says so; a
    /// failed request never does, so a flaky network cannot make a device change identity.
    pub fn needs_new_identity(&self) -> bool {
        matches!(self, RegisterError::UnknownDevice { .. })
    }
}

/// One registration attempt: POST /device/register; on 409 the key exchange.
pub async fn register(cloud: &Cloud, p: &RegisterParams) -> Result<Identity, RegisterError> {
    let api_key = chosen_key(p);
    let req = RegisterRequest {
        application: p.fleet,
        uuid: p.uuid.clone(),
        device_type: p.device_type.clone(),
        api_key: api_key.clone(),
        supervisor_version: p.supervisor_version.clone(),
        os_version: p.os_version.clone(),
        os_variant: p.os_variant.clone(),
        mac_address: p.mac_address.clone(),
    };
    match cloud.register(&p.provisioning_key, &req).await {
        Ok(resp) => {
            if let Some(uuid) = resp.uuid.as_deref().filter(|u| *u != p.uuid) {
                return Err(RegisterError::InvalidAnswer {
                    uuid: p.uuid.clone(),
                    reason: format!("the answer names another device {uuid}"),
                });
            }
            let api_key = match resp.api_key {
                Some(remote) if remote != api_key => {
                    warn!(uuid:% = p.uuid, device_id = resp.id, decision = "use-remote-key",
                        reason = "the remote answered with another device key than ours";
                        "Device registered with another key");
                    remote
                }
                _ => api_key,
            };
            info!(uuid:% = p.uuid, fleet = p.fleet, device_id = resp.id, decision = "registered";
                "Device registered");
            Ok(identity(p, api_key, resp.id, Outcome::Registered))
        }
        Err(CloudError::Conflict) => {
            info!(uuid:% = p.uuid, fleet = p.fleet, decision = "key-exchange",
                reason = "the remote already knows this uuid or key (409)"; "Device exists");
            exchange(cloud, p, api_key).await
        }
        Err(source) => Err(RegisterError::Register {
            uuid: p.uuid.clone(),
            source,
        }),
    }
}

/// The key exchange alone (registration.md §5), for a device that may exist in the cloud but
/// whose key or id is uncertain: registered without a known device id, or still holding a
/// provisioning key. Generates the device key when `p.api_key` is `None`.
pub async fn exchange_key(cloud: &Cloud, p: &RegisterParams) -> Result<Identity, RegisterError> {
    exchange(cloud, p, chosen_key(p)).await
}

async fn exchange(
    cloud: &Cloud,
    p: &RegisterParams,
    api_key: String,
) -> Result<Identity, RegisterError> {
    let lookup = |source| RegisterError::Lookup {
        uuid: p.uuid.clone(),
        source,
    };
    // 1. Does our own key already see the device? Then an earlier attempt went through.
    match cloud.find_device(&p.uuid, &api_key).await {
        Ok(ids) if ids.len() == 1 => {
            info!(uuid:% = p.uuid, device_id = ids[0], decision = "keep-key",
                reason = "the device key already works"; "Key exchange done");
            return Ok(identity(p, api_key, ids[0], Outcome::KeyAlreadyValid));
        }
        Ok(ids) => debug!(uuid:% = p.uuid, found = ids.len(), decision = "ask-provisioning-key",
            reason = "the device key does not see the device"; "Key exchange"),
        // The safer exchange: when the network fails, stop here and retry the same identity
        // rather than go on to a step whose failure would mean a new identity.
        Err(e) if e.is_transient() => return Err(lookup(e)),
        Err(e) => debug!(uuid:% = p.uuid, error:% = crate::ErrorChain(&e),
            decision = "ask-provisioning-key", reason = "the device key was refused"; "Key exchange"),
    }
    // 2. Can the fleet's provisioning key see it?
    let ids = cloud
        .find_device(&p.uuid, &p.provisioning_key)
        .await
        .map_err(lookup)?;
    let device_id = match ids[..] {
        [id] => id,
        [] => {
            warn!(uuid:% = p.uuid, fleet = p.fleet, decision = "new-identity",
                reason = "the uuid is taken by a device the provisioning key cannot see";
                "Key exchange failed");
            return Err(RegisterError::UnknownDevice {
                uuid: p.uuid.clone(),
            });
        }
        _ => {
            return Err(RegisterError::InvalidAnswer {
                uuid: p.uuid.clone(),
                reason: format!("{} devices have this uuid", ids.len()),
            })
        }
    };
    // 3. Create our key for it.
    cloud
        .create_device_key(&p.provisioning_key, device_id, &api_key)
        .await
        .map_err(|source| RegisterError::CreateKey {
            uuid: p.uuid.clone(),
            source,
        })?;
    info!(uuid:% = p.uuid, device_id, decision = "key-created",
        reason = "the device existed without our key"; "Key exchange done");
    Ok(identity(p, api_key, device_id, Outcome::KeyExchanged))
}

fn chosen_key(p: &RegisterParams) -> String {
    match &p.api_key {
        Some(k) if !k.is_empty() => k.clone(),
        _ => {
            info!(uuid:% = p.uuid, decision = "generate-key", reason = "no device key yet";
                "Device key generated");
            crate::random_hex32()
        }
    }
}

fn identity(p: &RegisterParams, api_key: String, device_id: u64, outcome: Outcome) -> Identity {
    Identity {
        uuid: p.uuid.clone(),
        api_key,
        device_id,
        fleet: p.fleet,
        device_type: p.device_type.clone(),
        registered_at: SystemTime::now(),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use serde_json::{json, Value};

    use super::*;
    use crate::ports::cloud::CloudSettings;

    const PROV: &str = "provisioning-key-of-fleet-1";

    #[derive(Debug, Clone)]
    struct Device {
        id: u64,
        uuid: String,
        fleet: u64,
        keys: Vec<String>,
    }

    #[derive(Default)]
    struct Remote {
        devices: Vec<Device>,
        /// Answer the next look-ups with 503.
        lookups_fail: usize,
        calls: Vec<String>,
        register_bodies: Vec<Value>,
    }

    type Shared = Arc<Mutex<Remote>>;

    fn bearer(req: &HttpRequest) -> String {
        req.headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_owned()
    }

    /// The registration endpoints of spec/registration.md §4-§5, fleet 1 only.
    fn handle(remote: &Shared, req: &HttpRequest, body: &[u8]) -> HttpResponse {
        let mut r = remote.lock().unwrap();
        r.calls.push(format!("{} {}", req.method(), req.path()));
        let key = bearer(req);
        match (req.method().as_str(), req.path()) {
            ("POST", "/device/register") => {
                if key != PROV {
                    return HttpResponse::Unauthorized().finish();
                }
                let b: Value = serde_json::from_slice(body).unwrap();
                r.register_bodies.push(b.clone());
                let uuid = b["uuid"].as_str().unwrap().to_owned();
                let api_key = b["api_key"].as_str().unwrap().to_owned();
                if r.devices
                    .iter()
                    .any(|d| d.uuid == uuid || d.keys.contains(&api_key))
                {
                    return HttpResponse::Conflict().body("\"uuid\" must be unique.");
                }
                let id = 100 + r.devices.len() as u64;
                r.devices.push(Device {
                    id,
                    uuid: uuid.clone(),
                    fleet: 1,
                    keys: vec![api_key.clone()],
                });
                HttpResponse::Created().json(json!({"id": id, "uuid": uuid, "api_key": api_key}))
            }
            ("GET", "/v7/device") => {
                if r.lookups_fail > 0 {
                    r.lookups_fail -= 1;
                    return HttpResponse::ServiceUnavailable().finish();
                }
                let q = req.query_string().replace("%20", " ").replace("%27", "'");
                let uuid = q
                    .split("uuid eq '")
                    .nth(1)
                    .unwrap()
                    .trim_end_matches('\'')
                    .to_owned();
                let visible: Vec<Value> = r
                    .devices
                    .iter()
                    .filter(|d| {
                        d.uuid == uuid && (d.keys.contains(&key) || (key == PROV && d.fleet == 1))
                    })
                    .map(|d| json!({"id": d.id}))
                    .collect();
                if visible.is_empty()
                    && key != PROV
                    && !r.devices.iter().any(|d| d.keys.contains(&key))
                {
                    return HttpResponse::Unauthorized().finish();
                }
                HttpResponse::Ok().json(json!({ "d": visible }))
            }
            ("POST", path) if path.starts_with("/api-key/device/") => {
                let id: u64 = path.split('/').nth(3).unwrap().parse().unwrap();
                let new: Value = serde_json::from_slice(body).unwrap();
                let new = new["apiKey"].as_str().unwrap().to_owned();
                match r.devices.iter_mut().find(|d| d.id == id && d.fleet == 1) {
                    Some(d) if key == PROV => {
                        d.keys.push(new.clone());
                        HttpResponse::Ok().json(new)
                    }
                    _ => HttpResponse::Unauthorized().finish(),
                }
            }
            _ => HttpResponse::NotFound().finish(),
        }
    }

    fn serve(remote: Shared) -> Cloud {
        let server = HttpServer::new(move || {
            let remote = remote.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let resp = handle(&remote, &req, &body);
                async move { resp }
            }))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let addr = server.addrs()[0];
        actix_rt::spawn(server.run());
        Cloud::new(&CloudSettings {
            endpoint: format!("http://{addr}"),
            request_timeout: Duration::from_secs(5),
            extra_ca: None,
            user_agent: "helios/test".into(),
        })
        .unwrap()
    }

    fn params(uuid: &str, api_key: Option<&str>) -> RegisterParams {
        RegisterParams {
            provisioning_key: PROV.into(),
            fleet: 1,
            device_type: "raspberrypi4-64".into(),
            uuid: uuid.into(),
            api_key: api_key.map(Into::into),
            supervisor_version: Some("0.1.0".into()),
            os_version: None,
            os_variant: Some("prod".into()),
            mac_address: None,
        }
    }

    fn existing(id: u64, uuid: &str, fleet: u64, key: &str) -> Device {
        Device {
            id,
            uuid: uuid.into(),
            fleet,
            keys: vec![key.into()],
        }
    }

    #[actix_rt::test]
    async fn a_new_device_is_registered_with_a_generated_key() {
        let remote = Shared::default();
        let cloud = serve(remote.clone());
        let id = register(&cloud, &params("u1", None)).await.unwrap();
        assert_eq!(id.outcome, Outcome::Registered);
        assert_eq!((id.uuid.as_str(), id.device_id, id.fleet), ("u1", 100, 1));
        assert_eq!(id.api_key.len(), 32);
        assert!(id
            .api_key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let r = remote.lock().unwrap();
        assert_eq!(
            r.register_bodies[0],
            json!({"application": 1, "uuid": "u1", "device_type": "raspberrypi4-64",
                   "api_key": id.api_key, "supervisor_version": "0.1.0", "os_variant": "prod"})
        );
        assert!(!format!("{id:?} {:?}", params("u1", Some("k"))).contains(&id.api_key));
    }

    #[actix_rt::test]
    async fn a_409_with_a_working_key_keeps_it() {
        let remote = Shared::default();
        remote
            .lock()
            .unwrap()
            .devices
            .push(existing(7, "u1", 1, "mykey"));
        let cloud = serve(remote.clone());
        let id = register(&cloud, &params("u1", Some("mykey")))
            .await
            .unwrap();
        assert_eq!(
            (id.outcome, id.device_id, id.api_key.as_str()),
            (Outcome::KeyAlreadyValid, 7, "mykey")
        );
        let calls = remote.lock().unwrap().calls.clone();
        assert_eq!(calls, ["POST /device/register", "GET /v7/device"]);
    }

    #[actix_rt::test]
    async fn a_409_with_an_unknown_key_creates_it_with_the_provisioning_key() {
        let remote = Shared::default();
        remote
            .lock()
            .unwrap()
            .devices
            .push(existing(7, "u1", 1, "lost-key"));
        let cloud = serve(remote.clone());
        let id = register(&cloud, &params("u1", Some("new-key")))
            .await
            .unwrap();
        assert_eq!(
            (id.outcome, id.device_id, id.api_key.as_str()),
            (Outcome::KeyExchanged, 7, "new-key")
        );
        let r = remote.lock().unwrap();
        assert!(r.devices[0].keys.contains(&"new-key".to_owned()));
        assert_eq!(
            r.calls,
            [
                "POST /device/register",
                "GET /v7/device",
                "GET /v7/device",
                "POST /api-key/device/7/device-key"
            ]
        );
    }

    #[actix_rt::test]
    async fn a_uuid_taken_outside_the_fleet_needs_a_new_identity() {
        let remote = Shared::default();
        remote
            .lock()
            .unwrap()
            .devices
            .push(existing(7, "u1", 2, "their-key"));
        let cloud = serve(remote.clone());
        let e = register(&cloud, &params("u1", Some("mykey")))
            .await
            .unwrap_err();
        assert!(e.needs_new_identity(), "{e:?}");
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            "device u1 exists but the provisioning key cannot see it"
        );
    }

    #[actix_rt::test]
    async fn a_failing_network_never_asks_for_a_new_identity() {
        let remote = Shared::default();
        {
            let mut r = remote.lock().unwrap();
            r.devices.push(existing(7, "u1", 2, "their-key"));
            r.lookups_fail = 2;
        }
        let cloud = serve(remote.clone());
        for _ in 0..2 {
            let e = register(&cloud, &params("u1", Some("mykey")))
                .await
                .unwrap_err();
            assert!(e.is_transient(), "{e:?}");
            assert!(!e.needs_new_identity());
            assert!(matches!(e, RegisterError::Lookup { .. }));
        }
        // exchange_key alone, once the network is back.
        let e = exchange_key(&cloud, &params("u1", Some("mykey")))
            .await
            .unwrap_err();
        assert!(e.needs_new_identity());
    }

    #[actix_rt::test]
    async fn a_wrong_provisioning_key_is_permanent() {
        let cloud = serve(Shared::default());
        let mut p = params("u1", Some("mykey"));
        p.provisioning_key = "wrong".into();
        let e = register(&cloud, &p).await.unwrap_err();
        assert!(
            matches!(&e, RegisterError::Register { source, .. } if source.status() == Some(401)),
            "{e:?}"
        );
        assert!(!e.is_transient());
        assert!(!e.needs_new_identity());
    }
}
