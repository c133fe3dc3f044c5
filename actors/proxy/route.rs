//! Request routing in front of the legacy supervisor (spec/helios-proxy.md §5,
//! spec/helios-api-v3.md §8.1): a pure decision from method, path and `User-Agent`, made
//! against the routing snapshot ProxyActor publishes, and who may take the routes helios
//! answers for the legacy supervisor (its `User-Agent` is only a claim: the device key is the
//! proof). The HTTP layer streams the bodies.
use std::sync::Arc;

use crate::ports::apikeys::constant_time_eq;
use crate::Secret;

/// The legacy supervisor's requests carry `User-Agent: Supervisor/<version>`.
pub const LEGACY_UA_PREFIX: &str = "Supervisor/";

/// What ProxyActor publishes for the HTTP layer: where each upstream is and what the legacy
/// supervisor is served as its target. Cheap to clone (read once per request).
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// This device's uuid (the target-state path names it).
    pub uuid: String,
    /// The legacy supervisor's device API (`http://10.114.104.1:48480`).
    pub legacy: String,
    /// The balena API; None when unmanaged.
    pub remote: Option<String>,
    /// The copy of the target the legacy supervisor may apply; None while helios applies or
    /// has not decided yet (the legacy supervisor then gets 503 + `Retry-After: 15`).
    pub target: Option<Arc<LegacyTarget>>,
    /// Apps of the legacy copy: the apps the legacy supervisor runs and reports.
    pub legacy_apps: std::collections::BTreeSet<String>,
}

/// The legacy supervisor's target document, serialised once, with its ETag.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyTarget {
    pub body: bytes::Bytes,
    /// A strong ETag (quoted) of `body`.
    pub etag: String,
}

impl LegacyTarget {
    pub fn new(doc: &serde_json::Value) -> LegacyTarget {
        let body = bytes::Bytes::from(serde_json::to_vec(doc).expect("a JSON value serialises"));
        let etag = format!("\"{:016x}\"", fnv1a(&body));
        LegacyTarget { body, etag }
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100000001b3)
    })
}

/// Where a request that helios does not answer itself goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// The legacy supervisor's target-state poll: answered from the legacy copy.
    LegacyTarget(Option<Arc<LegacyTarget>>),
    /// The legacy supervisor's state report: its `apps` are taken out (helios reports every
    /// app, so no PATCH carries a partial `apps`), the rest is forwarded to the API.
    LegacyReport { remote: String },
    /// Any other request of the legacy supervisor: forwarded to the balena API.
    Remote { base: String },
    /// The legacy supervisor called the API but the device is unmanaged: 503 +
    /// `Retry-After: 600`.
    Unmanaged,
    /// Any other caller: forwarded to the legacy supervisor's device API.
    Legacy { base: String },
}

impl Route {
    /// Whether helios acts on the request as the legacy supervisor's (serves it the legacy
    /// copy, or merges its report into its own): only with the device key ([`authenticate`]).
    /// The other routes are passed through to an upstream that checks the caller's key itself.
    pub fn acts_for_legacy(&self) -> bool {
        matches!(self, Route::LegacyTarget(_) | Route::LegacyReport { .. })
    }
}

/// Whether a request that claims to be the legacy supervisor's proves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyAuth {
    /// It presented the device's cloud API key: the legacy supervisor (which holds the same
    /// key, spec/registration.md §8).
    Device,
    /// No key presented.
    Missing,
    /// A key that is not the device key.
    Wrong,
    /// helios does not know the device key yet (registering, or unmanaged).
    Unknown,
}

impl LegacyAuth {
    /// The `reason` field of the refusal (never the key).
    pub fn reason(self) -> &'static str {
        match self {
            LegacyAuth::Device => "the device key",
            LegacyAuth::Missing => "a Supervisor/ user agent without the device key",
            LegacyAuth::Wrong => "a Supervisor/ user agent with a key that is not the device key",
            LegacyAuth::Unknown => "the device key is not known yet",
        }
    }
}

/// The key a request presents the way the legacy supervisor sends its device key
/// (spec/registration.md §8): the `apikey` query parameter (it wins, even when empty), else
/// `Authorization: Bearer <key>` (scheme case-insensitive). Any characters: the key is the
/// cloud's, whatever its format.
pub fn presented_key<'a>(query: &'a str, authorization: Option<&'a str>) -> Option<&'a str> {
    if let Some(k) = query.split('&').find_map(|p| p.strip_prefix("apikey=")) {
        return Some(k);
    }
    let (scheme, key) = authorization?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(key)
}

/// Compares the presented key with the device key in constant time.
pub fn authenticate(presented: Option<&str>, device_key: Option<&Secret>) -> LegacyAuth {
    let Some(device_key) = device_key else {
        return LegacyAuth::Unknown;
    };
    match presented {
        None => LegacyAuth::Missing,
        Some(k) if constant_time_eq(k.as_bytes(), device_key.expose().as_bytes()) => {
            LegacyAuth::Device
        }
        Some(_) => LegacyAuth::Wrong,
    }
}

impl Routing {
    /// The route of a request helios does not answer itself (`/ping`, `/v1/update`, `/v3/*`
    /// are matched before the proxy sees anything).
    pub fn route(&self, method: &str, path: &str, user_agent: Option<&str>) -> Route {
        let from_legacy = user_agent.is_some_and(|ua| ua.starts_with(LEGACY_UA_PREFIX));
        if !from_legacy {
            return Route::Legacy {
                base: self.legacy.clone(),
            };
        }
        let state_path = path
            .strip_prefix("/device/v3/")
            .and_then(|r| r.strip_suffix("/state"));
        if method == "GET" && state_path == Some(self.uuid.as_str()) {
            return Route::LegacyTarget(self.target.clone());
        }
        match &self.remote {
            None => Route::Unmanaged,
            Some(r) if method == "PATCH" && path == "/device/v3/state" => {
                Route::LegacyReport { remote: r.clone() }
            }
            Some(r) => Route::Remote { base: r.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(remote: Option<&str>) -> Routing {
        Routing {
            uuid: "dev1".into(),
            legacy: "http://legacy".into(),
            remote: remote.map(str::to_string),
            target: None,
            legacy_apps: Default::default(),
        }
    }

    #[test]
    fn routes_by_user_agent_and_path() {
        let r = routing(Some("http://api"));
        let ua = Some("Supervisor/19.0.5");
        assert_eq!(
            r.route("GET", "/device/v3/dev1/state", ua),
            Route::LegacyTarget(None)
        );
        // Another device's state, or another method, goes to the API.
        assert_eq!(
            r.route("GET", "/device/v3/other/state", ua),
            Route::Remote {
                base: "http://api".into()
            }
        );
        assert_eq!(
            r.route("PATCH", "/device/v3/state", ua),
            Route::LegacyReport {
                remote: "http://api".into()
            }
        );
        assert_eq!(
            r.route("GET", "/v7/device", ua),
            Route::Remote {
                base: "http://api".into()
            }
        );
        for ua in [
            None,
            Some("curl/8"),
            Some("supervisor/1"),
            Some("xSupervisor/1"),
        ] {
            assert_eq!(
                r.route("GET", "/device/v3/dev1/state", ua),
                Route::Legacy {
                    base: "http://legacy".into()
                }
            );
        }
        assert_eq!(routing(None).route("GET", "/v7/x", ua), Route::Unmanaged);
    }

    #[test]
    fn only_the_legacy_copy_and_report_need_the_device_key() {
        let r = routing(Some("http://api"));
        let ua = Some("Supervisor/16.0.0");
        assert!(r
            .route("GET", "/device/v3/dev1/state", ua)
            .acts_for_legacy());
        assert!(r.route("PATCH", "/device/v3/state", ua).acts_for_legacy());
        // Passed through: the API or the legacy supervisor checks the caller's own key.
        assert!(!r.route("GET", "/v7/device", ua).acts_for_legacy());
        assert!(!r
            .route("GET", "/device/v3/dev1/state", None)
            .acts_for_legacy());
        assert!(!routing(None)
            .route("PATCH", "/device/v3/state", ua)
            .acts_for_legacy());
    }

    #[test]
    fn the_device_key_authenticates_the_legacy_supervisor() {
        let key = Secret::new("c0ffee5a1b2c4d3e8f9a0b1c2d3e4f50");
        assert_eq!(
            authenticate(Some("c0ffee5a1b2c4d3e8f9a0b1c2d3e4f50"), Some(&key)),
            LegacyAuth::Device
        );
        assert_eq!(authenticate(None, Some(&key)), LegacyAuth::Missing);
        for wrong in [
            "",
            "c0ffee5a1b2c4d3e8f9a0b1c2d3e4f5",
            "C0FFEE5A1B2C4D3E8F9A0B1C2D3E4F50",
        ] {
            assert_eq!(
                authenticate(Some(wrong), Some(&key)),
                LegacyAuth::Wrong,
                "{wrong:?}"
            );
        }
        assert_eq!(
            authenticate(Some("c0ffee5a1b2c4d3e8f9a0b1c2d3e4f50"), None),
            LegacyAuth::Unknown
        );
    }

    #[test]
    fn the_key_is_read_from_apikey_or_a_bearer_token() {
        assert_eq!(
            presented_key("a=1&apikey=k-1", Some("Bearer other")),
            Some("k-1")
        );
        assert_eq!(presented_key("apikey=", None), Some(""));
        assert_eq!(
            presented_key("", Some("Bearer device-key")),
            Some("device-key")
        );
        assert_eq!(presented_key("", Some("bearer k")), Some("k"));
        assert_eq!(presented_key("xapikey=k", Some("Basic k")), None);
        assert_eq!(presented_key("", Some("Bearer")), None);
        assert_eq!(presented_key("", None), None);
    }

    #[test]
    fn etag_follows_the_body() {
        let a = LegacyTarget::new(&serde_json::json!({"a": 1}));
        let b = LegacyTarget::new(&serde_json::json!({"a": 2}));
        assert_ne!(a.etag, b.etag);
        assert_eq!(a, LegacyTarget::new(&serde_json::json!({"a": 1})));
    }
}
