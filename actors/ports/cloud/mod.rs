//! Cloud port: the balena API over HTTPS (awc + rustls with the ring provider): target poll,
//! state report, registration and the key exchange (spec/target-state-v3.md §1,
//! spec/state-report-v3.md §1, spec/registration.md §4-§5).
//!
//! Keys are passed per call, sent as sensitive headers, and never appear in logs, in `Display`
//! or in `Debug`; a body snippet kept in an error has the call's key replaced by `<redacted>`.
//! `Cloud` holds one `awc::Client` (connection pool, keep-alive): its futures are `!Send`, so
//! use it only on the actix System thread (actors, `actix::spawn`), never in `tokio::spawn`.
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use awc::error::{ConnectError, PayloadError, SendRequestError};
use awc::http::header::{self, HeaderMap, HeaderValue};
use awc::http::{Method, StatusCode, Uri};
use log::debug;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// Bound of the bodies the port reads for itself: error answers, register and lookup answers.
const SMALL_BODY: usize = 64 * 1024;
/// Largest device-tag listing read (tags are small; a device has a handful).
const TAGS_BODY: usize = 1024 * 1024;

/// A device tag as the API lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceTag {
    pub id: u64,
    pub tag_key: String,
    #[serde(default)]
    pub value: String,
}
/// Bytes of an error answer kept in `CloudError::Status`.
const SNIPPET_LEN: usize = 200;
/// The helios proxy routes requests whose User-Agent starts with this to the legacy supervisor
/// (spec/helios-proxy.md §6): our own requests must never carry it.
const LEGACY_UA_PREFIX: &str = "Supervisor/";

/// How to reach the cloud. Holds no secret: keys are passed per call.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudSettings {
    /// API base URL, e.g. `https://api.balena-cloud.com` (a trailing `/` is ignored).
    pub endpoint: String,
    /// Bounds each whole request: connect, TLS, send, answer and body.
    pub request_timeout: Duration,
    /// PEM file of extra CA certificates (openBalena), trusted besides the built-in roots.
    pub extra_ca: Option<PathBuf>,
    /// `helios/<version>`; must not start with `Supervisor/`.
    pub user_agent: String,
}

/// The balena API client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Cloud {
    client: awc::Client,
    /// Endpoint without a trailing `/`.
    base: String,
    /// `scheme://host[:port]`: what errors and logs name.
    origin: String,
    timeout: Duration,
}

impl fmt::Debug for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cloud")
            .field("endpoint", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Result of a target poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// 304: the `If-None-Match` ETag still matches (or the device is deleted/frozen, which the
    /// API answers the same way).
    NotModified,
    /// 2xx: a target document and its `ETag`, to echo verbatim on the next poll.
    New {
        body: serde_json::Value,
        etag: Option<String>,
    },
}

/// Body of `POST /device/register` (spec/registration.md §4). `None` fields are omitted.
#[derive(Clone, PartialEq, Serialize)]
pub struct RegisterRequest {
    /// Fleet (application) id.
    pub application: u64,
    pub uuid: String,
    pub device_type: String,
    /// The device API key the device chose; the API creates exactly this key.
    pub api_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervisor_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_variant: Option<String>,
    /// Space-separated MAC addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

impl fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("application", &self.application)
            .field("uuid", &self.uuid)
            .field("device_type", &self.device_type)
            .field("api_key", &"<redacted>")
            .field("supervisor_version", &self.supervisor_version)
            .field("os_version", &self.os_version)
            .field("os_variant", &self.os_variant)
            .field("mac_address", &self.mac_address)
            .finish()
    }
}

/// Answer of a successful `POST /device/register`: `{"id", "uuid", "api_key"}`.
#[derive(Clone, PartialEq, Deserialize)]
pub struct RegisterResponse {
    /// Numeric device id (`deviceId`).
    pub id: u64,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
}

impl fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("id", &self.id)
            .field("uuid", &self.uuid)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("invalid cloud settings: {reason}")]
    Config { reason: String },
    #[error("read extra CA file {}", .path.display())]
    ExtraCaRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid extra CA file {}: {reason}", .path.display())]
    ExtraCaInvalid { path: PathBuf, reason: String },
    #[error("api key is not a valid header value")]
    InvalidKey,
    #[error("connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("tls with {endpoint}")]
    Tls {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("no complete answer within {} ms", .after.as_millis())]
    Timeout { after: Duration },
    #[error("connection to {endpoint} lost mid-request")]
    Disconnected {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("cloud answered {status}{}", snippet_suffix(.body_snippet))]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body_snippet: String,
    },
    #[error("device already registered (409)")]
    Conflict,
    #[error("cloud answer exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("cloud answer is not json")]
    InvalidJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("unexpected cloud answer: {reason}")]
    InvalidAnswer { reason: String },
}

fn snippet_suffix(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl CloudError {
    /// Worth retrying with backoff: the network, timeouts, 408/429/5xx and garbled answers
    /// (captive portals, truncation). TLS failures count as transient too: a device whose
    /// clock is not set yet at boot sees "certificate not yet valid" until NTP catches up.
    /// Permanent: settings, keys, other 4xx (401: wrong key or deleted device), 409, answers
    /// too large or of the wrong shape.
    pub fn is_transient(&self) -> bool {
        match self {
            CloudError::Connect { .. }
            | CloudError::Tls { .. }
            | CloudError::Timeout { .. }
            | CloudError::Disconnected { .. }
            | CloudError::InvalidJson { .. } => true,
            CloudError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            CloudError::Config { .. }
            | CloudError::ExtraCaRead { .. }
            | CloudError::ExtraCaInvalid { .. }
            | CloudError::InvalidKey
            | CloudError::Conflict
            | CloudError::TooLarge { .. }
            | CloudError::InvalidAnswer { .. } => false,
        }
    }

    /// The answer's `Retry-After` (seconds or HTTP-date), uncapped: the caller caps it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CloudError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of an answer that was not a success, if that is what this is.
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Status { status, .. } => Some(*status),
            CloudError::Conflict => Some(409),
            _ => None,
        }
    }
}

/// What a successful exchange returned.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Cloud {
    /// Validates the settings, loads the root certificates (built-in Mozilla roots plus
    /// `extra_ca`) and builds the client once. Reads `extra_ca` synchronously.
    pub fn new(s: &CloudSettings) -> Result<Cloud, CloudError> {
        let config = |reason: &str| CloudError::Config {
            reason: reason.to_owned(),
        };
        let base = s.endpoint.trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().map_err(|_| config("endpoint is not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_owned(),
            _ => return Err(config("endpoint must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| config("endpoint has no host"))?;
        if authority.as_str().contains('@') {
            return Err(config("credentials in the endpoint URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(config("endpoint must not have a query"));
        }
        if s.request_timeout.is_zero() {
            return Err(config("request timeout must be positive"));
        }
        if s.user_agent.starts_with(LEGACY_UA_PREFIX) {
            return Err(config(
                "user agent must not start with Supervisor/ (the proxy would route it to the legacy supervisor)",
            ));
        }
        let user_agent = HeaderValue::from_str(&s.user_agent)
            .map_err(|_| config("user agent is not a valid header value"))?;
        let tls = tls_config(s.extra_ca.as_deref())?;

        let connector = awc::Connector::new()
            .rustls_0_23(Arc::new(tls))
            .timeout(s.request_timeout)
            .handshake_timeout(s.request_timeout);
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(s.request_timeout)
            // A redirect could carry the bearer key to another host; the API never redirects.
            .disable_redirects()
            .add_default_header((header::USER_AGENT, user_agent))
            .finish();
        Ok(Cloud {
            client,
            origin: format!("{scheme}://{authority}"),
            base,
            timeout: s.request_timeout,
        })
    }

    /// The endpoint this client talks to (without a trailing `/`).
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// GET {endpoint}/device/v3/{uuid}/state with `Authorization: Bearer <device key>` and
    /// `If-None-Match: <etag>` when one is cached (spec/target-state-v3.md §1).
    /// 2xx bodies over `max_body` bytes fail with `TooLarge`.
    pub async fn fetch_target(
        &self,
        uuid: &str,
        api_key: &str,
        etag: Option<&str>,
        max_body: usize,
    ) -> Result<Fetched, CloudError> {
        let url = format!("{}/device/v3/{}/state", self.base, encode(uuid));
        let mut req = self
            .client
            .get(url)
            .insert_header((header::AUTHORIZATION, bearer(api_key)?))
            .insert_header((header::ACCEPT, "application/json"));
        // An ETag we stored came from a header, so it is a valid header value; if not, a full
        // fetch is the safe fallback.
        if let Some(v) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
            req = req.insert_header((header::IF_NONE_MATCH, v));
        }
        let answer = self
            .call("fetch target", req, None, max_body, &[api_key], true)
            .await?;
        if answer.status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        let etag = answer
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = serde_json::from_slice(&answer.body)
            .map_err(|source| CloudError::InvalidJson { source })?;
        Ok(Fetched::New { body, etag })
    }

    /// PATCH {endpoint}/device/v3/state with a JSON body (spec/state-report-v3.md §1).
    /// Any 2xx is success.
    pub async fn patch_state(
        &self,
        api_key: &str,
        body: &serde_json::Value,
    ) -> Result<(), CloudError> {
        self.patch_device("state", "report state", api_key, body)
            .await
    }

    /// PATCH {endpoint}/device/v3/tags with `{uuid: {key: value}}` (spec/state-report-v3.md
    /// §9). Any 2xx is success.
    pub async fn patch_tags(
        &self,
        api_key: &str,
        body: &serde_json::Value,
    ) -> Result<(), CloudError> {
        self.patch_device("tags", "report tags", api_key, body)
            .await
    }

    async fn patch_device(
        &self,
        what: &str,
        call: &'static str,
        api_key: &str,
        body: &serde_json::Value,
    ) -> Result<(), CloudError> {
        let url = format!("{}/device/v3/{what}", self.base);
        let req = self
            .client
            .request(Method::PATCH, url)
            .insert_header((header::AUTHORIZATION, bearer(api_key)?));
        self.call(call, req, Some(body), SMALL_BODY, &[api_key], false)
            .await?;
        Ok(())
    }

    /// POST {endpoint}/device/register with `Authorization: Bearer <provisioning key>`
    /// (spec/registration.md §4). 409 (uuid or key already known) is `CloudError::Conflict`.
    pub async fn register(
        &self,
        provisioning_key: &str,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, CloudError> {
        let url = format!("{}/device/register", self.base);
        let body = serde_json::to_value(req).expect("a RegisterRequest serialises to JSON");
        let http = self
            .client
            .post(url)
            .insert_header((header::AUTHORIZATION, bearer(provisioning_key)?));
        let answer = match self
            .call(
                "register",
                http,
                Some(&body),
                SMALL_BODY,
                // An error answer could echo the body, device key included.
                &[provisioning_key, &req.api_key],
                false,
            )
            .await
        {
            Err(CloudError::Status { status: 409, .. }) => return Err(CloudError::Conflict),
            other => other?,
        };
        parse_json(&answer.body)
    }

    /// Key exchange, look-up step (spec/registration.md §5.1-§5.2):
    /// GET {endpoint}/v7/device?$select=id&$filter=uuid eq '<uuid>' with the given key (the
    /// device key or the provisioning key). Returns the ids of the devices the key can see
    /// with that uuid: one when found, none when not.
    pub async fn find_device(&self, uuid: &str, key: &str) -> Result<Vec<u64>, CloudError> {
        #[derive(Deserialize)]
        struct Id {
            id: u64,
        }
        // OData string literal: a quote is escaped by doubling it.
        let filter = format!("uuid eq '{}'", uuid.replace('\'', "''"));
        let found: Vec<Id> = self
            .odata_list("find device", "device?$select=id", &filter, key, SMALL_BODY)
            .await?;
        Ok(found.into_iter().map(|d| d.id).collect())
    }

    /// The device's tags (spec/device-api.md, GET /v2/device/tags):
    /// GET {endpoint}/v7/device_tag?$select=id,tag_key,value&$filter=device eq <device id>
    /// with the device key; `{"d": [{"id", "tag_key", "value"}]}`.
    pub async fn get_tags(&self, device_id: u64, key: &str) -> Result<Vec<DeviceTag>, CloudError> {
        let filter = format!("device eq {device_id}");
        let select = "device_tag?$select=id,tag_key,value";
        self.odata_list("get tags", select, &filter, key, TAGS_BODY)
            .await
    }

    /// GET {endpoint}/v7/{resource_select}&$filter=<filter> with `key`: the `d` list of the
    /// OData answer.
    async fn odata_list<T: serde::de::DeserializeOwned>(
        &self,
        call: &'static str,
        resource_select: &str,
        filter: &str,
        key: &str,
        max_body: usize,
    ) -> Result<Vec<T>, CloudError> {
        #[derive(Deserialize)]
        struct Found<T> {
            d: Vec<T>,
        }
        let url = format!(
            "{}/v7/{resource_select}&$filter={}",
            self.base,
            encode(filter)
        );
        let req = self
            .client
            .get(url)
            .insert_header((header::AUTHORIZATION, bearer(key)?))
            .insert_header((header::ACCEPT, "application/json"));
        let answer = self.call(call, req, None, max_body, &[key], false).await?;
        let found: Found<T> = parse_json(&answer.body)?;
        Ok(found.d)
    }

    /// Key exchange, key step (spec/registration.md §5.3):
    /// POST {endpoint}/api-key/device/{device_id}/device-key `{"apiKey": <device key>}` with
    /// `Authorization: Bearer <provisioning key>`. Any 2xx is success.
    pub async fn create_device_key(
        &self,
        provisioning_key: &str,
        device_id: u64,
        device_api_key: &str,
    ) -> Result<(), CloudError> {
        let url = format!("{}/api-key/device/{device_id}/device-key", self.base);
        let body = serde_json::json!({ "apiKey": device_api_key });
        let req = self
            .client
            .post(url)
            .insert_header((header::AUTHORIZATION, bearer(provisioning_key)?));
        // The answer echoes the new key: it is read (to keep the connection) and dropped.
        self.call(
            "create device key",
            req,
            Some(&body),
            SMALL_BODY,
            &[provisioning_key, device_api_key],
            false,
        )
        .await?;
        Ok(())
    }

    /// Sends one request and reads its answer, the whole bounded by the request timeout.
    /// Success is 2xx (and 304 when `not_modified_ok`): the body is read up to `limit`.
    /// Anything else is `CloudError::Status` with a snippet of the body where `keys` are redacted.
    async fn call(
        &self,
        call: &'static str,
        req: awc::ClientRequest,
        json: Option<&serde_json::Value>,
        limit: usize,
        keys: &[&str],
        not_modified_ok: bool,
    ) -> Result<Answer, CloudError> {
        let started = Instant::now();
        let exchange = async {
            let sent = match json {
                Some(body) => req.send_json(body).await,
                None => req.send().await,
            };
            let mut resp = sent.map_err(|e| self.send_error(e))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if status.is_success() || (not_modified_ok && status == StatusCode::NOT_MODIFIED) {
                let body = resp
                    .body()
                    .limit(limit)
                    .await
                    .map_err(|e| self.payload_error(e, limit))?;
                Ok(Answer {
                    status,
                    headers,
                    body: Vec::from(body),
                })
            } else {
                // Best effort: the snippet is for humans, the status is what counts.
                let body = resp.body().limit(SMALL_BODY).await.unwrap_or_default();
                Err(CloudError::Status {
                    status: status.as_u16(),
                    retry_after: headers
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now())),
                    body_snippet: snippet(&body, keys),
                })
            }
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(CloudError::Timeout {
                after: self.timeout,
            }),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(a) => debug!(call, endpoint:% = self.origin, status = a.status.as_u16(),
                bytes = a.body.len(), elapsed_ms; "Cloud answered"),
            Err(e) => debug!(call, endpoint:% = self.origin, elapsed_ms,
                error:% = crate::ErrorChain(e); "Cloud request failed"),
        }
        result
    }

    fn send_error(&self, e: SendRequestError) -> CloudError {
        let endpoint = self.origin.clone();
        match e {
            SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
                CloudError::Timeout {
                    after: self.timeout,
                }
            }
            SendRequestError::Connect(ConnectError::Io(source)) if is_tls(&source) => {
                CloudError::Tls { endpoint, source }
            }
            SendRequestError::Connect(ConnectError::Io(source)) => {
                CloudError::Connect { endpoint, source }
            }
            SendRequestError::Connect(other) => CloudError::Connect {
                endpoint,
                source: io::Error::other(other.to_string()),
            },
            SendRequestError::Url(u) => CloudError::Config {
                reason: format!("request URL: {u}"),
            },
            SendRequestError::Send(source) => CloudError::Disconnected { endpoint, source },
            // Parse errors, h2, body errors: the connection did not carry a valid answer.
            // Stringified because some of awc's errors are not Send.
            other => CloudError::Disconnected {
                endpoint,
                source: io::Error::other(other.to_string()),
            },
        }
    }

    fn payload_error(&self, e: PayloadError, limit: usize) -> CloudError {
        match e {
            PayloadError::Overflow => CloudError::TooLarge { limit },
            PayloadError::Io(source) if source.kind() == io::ErrorKind::TimedOut => {
                CloudError::Timeout {
                    after: self.timeout,
                }
            }
            PayloadError::Io(source) => CloudError::Disconnected {
                endpoint: self.origin.clone(),
                source,
            },
            other => CloudError::Disconnected {
                endpoint: self.origin.clone(),
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

/// Root certificates: the built-in Mozilla set (webpki-roots) plus the PEM certificates of
/// `extra_ca`; ring as the crypto provider, chosen explicitly so no process-wide default is
/// needed; HTTP/1.1 only (one request at a time; what the legacy supervisor speaks).
pub fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, CloudError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let invalid = |reason: String| CloudError::ExtraCaInvalid {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|source| CloudError::ExtraCaRead {
            path: path.to_owned(),
            source,
        })?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| invalid(e.to_string()))?;
            roots.add(cert).map_err(|e| invalid(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(invalid("no PEM certificate in it".to_owned()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A rustls error wrapped in an io::Error by the TLS stream (handshake, certificate, alert).
fn is_tls(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

fn bearer(key: &str) -> Result<HeaderValue, CloudError> {
    let mut v =
        HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| CloudError::InvalidKey)?;
    v.set_sensitive(true);
    Ok(v)
}

/// Valid JSON of the wrong shape is `InvalidAnswer`; anything else that fails is `InvalidJson`.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CloudError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => CloudError::InvalidAnswer {
            reason: e.to_string(),
        },
        _ => CloudError::InvalidJson { source: e },
    })
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past is 0.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The first bytes of an error answer, printable, with `keys` redacted.
fn snippet(body: &[u8], keys: &[&str]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for key in keys.iter().filter(|k| !k.is_empty()) {
        text = text.replace(key, "<redacted>");
    }
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SNIPPET_LEN)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    /// One request as the test server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        peer_port: u16,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// Serves `respond` on 127.0.0.1:0 (one worker thread) and records every request.
    fn scripted<F>(respond: F) -> (String, Log)
    where
        F: Fn(&Seen) -> HttpResponse + Send + Sync + Clone + 'static,
    {
        let log: Log = Arc::default();
        let log2 = log.clone();
        let server = HttpServer::new(move || {
            let log = log2.clone();
            let respond = respond.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let seen = Seen {
                    method: req.method().to_string(),
                    path: req.path().to_owned(),
                    query: req.query_string().to_owned(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                    body: body.to_vec(),
                    peer_port: req.peer_addr().map(|a| a.port()).unwrap_or(0),
                };
                log.lock().unwrap().push(seen.clone());
                let resp = respond(&seen);
                async move { resp }
            }))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let addr = server.addrs()[0];
        actix_rt::spawn(server.run());
        (format!("http://{addr}"), log)
    }

    fn settings(endpoint: &str) -> CloudSettings {
        CloudSettings {
            endpoint: endpoint.to_owned(),
            request_timeout: Duration::from_secs(5),
            extra_ca: None,
            user_agent: "helios/0.0.0-test".into(),
        }
    }

    fn cloud(endpoint: &str) -> Cloud {
        Cloud::new(&settings(endpoint)).unwrap()
    }

    fn target_doc() -> serde_json::Value {
        serde_json::json!({"u1": {"name": "dev", "config": {}, "apps": {}}})
    }

    #[actix_rt::test]
    async fn fetch_sends_key_agent_and_etag_then_reads_304() {
        let (url, log) = scripted(|r| {
            if r.header("if-none-match") == Some("W/\"1-abc\"") {
                HttpResponse::NotModified().finish()
            } else {
                HttpResponse::Ok()
                    .insert_header(("ETag", "W/\"1-abc\""))
                    .json(target_doc())
            }
        });
        // A trailing slash on the endpoint is ignored.
        let c = cloud(&format!("{url}/"));
        let got = c.fetch_target("u1", KEY, None, 1 << 20).await.unwrap();
        assert_eq!(
            got,
            Fetched::New {
                body: target_doc(),
                etag: Some("W/\"1-abc\"".into())
            }
        );
        let got = c
            .fetch_target("u1", KEY, Some("W/\"1-abc\""), 1 << 20)
            .await
            .unwrap();
        assert_eq!(got, Fetched::NotModified);

        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].method, "GET");
        assert_eq!(log[0].path, "/device/v3/u1/state");
        assert_eq!(
            log[0].header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(log[0].header("user-agent"), Some("helios/0.0.0-test"));
        assert_eq!(log[0].header("if-none-match"), None);
        assert_eq!(log[1].header("if-none-match"), Some("W/\"1-abc\""));
        // One connection for both polls (keep-alive).
        assert_eq!(log[0].peer_port, log[1].peer_port);
    }

    #[actix_rt::test]
    async fn status_errors_are_classified_with_retry_after() {
        let (url, _) = scripted(|r| match r.path.as_str() {
            "/device/v3/s503/state" => HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "7"))
                .body("busy"),
            "/device/v3/s429/state" => HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"))
                .finish(),
            "/device/v3/s401/state" => HttpResponse::Unauthorized().finish(),
            "/device/v3/s302/state" => HttpResponse::Found()
                .insert_header(("Location", "http://127.0.0.1:1/elsewhere"))
                .finish(),
            _ => HttpResponse::NotFound().finish(),
        });
        let c = cloud(&url);
        let fetch = |uuid: &'static str| {
            let c = c.clone();
            async move { c.fetch_target(uuid, KEY, None, 1024).await.unwrap_err() }
        };

        let e = fetch("s503").await;
        assert!(matches!(e, CloudError::Status { status: 503, .. }), "{e:?}");
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.to_string(), "cloud answered 503: busy");

        let e = fetch("s429").await;
        assert!(e.is_transient());
        assert_eq!(
            e.retry_after(),
            Some(Duration::ZERO),
            "a past date means now"
        );

        let e = fetch("s401").await;
        assert_eq!(e.status(), Some(401));
        assert!(!e.is_transient());
        assert_eq!(e.retry_after(), None);

        let e = fetch("s404").await;
        assert_eq!(e.status(), Some(404));
        assert!(!e.is_transient());

        // Redirects are not followed: they could carry the key elsewhere.
        let e = fetch("s302").await;
        assert_eq!(e.status(), Some(302));
        assert!(!e.is_transient());
    }

    #[actix_rt::test]
    async fn keys_never_show_in_errors() {
        // A server that echoes the Authorization header into its error answer.
        let (url, _) = scripted(|r| {
            let auth = r.header("authorization").unwrap_or("").to_owned();
            let body = format!("{{\"error\": \"bad key {auth}\", \"other\": \"{KEY}x\"}}");
            if r.method == "POST" {
                HttpResponse::Forbidden()
                    .body(format!("{body} {}", String::from_utf8_lossy(&r.body)))
            } else {
                HttpResponse::Unauthorized().body(body)
            }
        });
        let c = cloud(&url);
        let device_key = "fedcba9876543210fedcba9876543210";
        let req = RegisterRequest {
            application: 1,
            uuid: "u1".into(),
            device_type: "raspberrypi4-64".into(),
            api_key: device_key.into(),
            supervisor_version: None,
            os_version: None,
            os_variant: None,
            mac_address: None,
        };
        let errors = vec![
            c.register(KEY, &req).await.unwrap_err(),
            c.fetch_target("u1", KEY, None, 1024).await.unwrap_err(),
            c.patch_state(KEY, &serde_json::json!({}))
                .await
                .unwrap_err(),
            c.find_device("u1", KEY).await.unwrap_err(),
            c.create_device_key(KEY, 7, device_key).await.unwrap_err(),
        ];
        for e in errors {
            let shown = format!("{e} {e:?} {}", crate::ErrorChain(&e));
            assert!(!shown.contains(KEY), "{shown}");
            assert!(!shown.contains(device_key), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert!(!format!("{req:?}").contains(device_key));
        let resp = RegisterResponse {
            id: 1,
            uuid: None,
            api_key: Some(KEY.into()),
        };
        assert!(!format!("{resp:?}").contains(KEY));
        // A key that cannot be a header value is refused without echoing it.
        let e = c
            .fetch_target("u1", "bad\nkey", None, 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, CloudError::InvalidKey));
        assert!(!format!("{e:?}").contains("bad"));
    }

    #[actix_rt::test]
    async fn bodies_are_bounded_and_json_is_classified() {
        let (url, _) = scripted(|r| match r.path.as_str() {
            "/device/v3/big/state" => HttpResponse::Ok().body(vec![b' '; 64 * 1024]),
            "/device/v3/chunked/state" => {
                let chunks = (0..64)
                    .map(|_| Ok::<_, std::io::Error>(web::Bytes::from_static(&[b' '; 1024])));
                HttpResponse::Ok().streaming(futures::stream::iter(chunks))
            }
            "/device/v3/garbage/state" => HttpResponse::Ok().body("<html>captive portal</html>"),
            "/device/register" => HttpResponse::Created().json(serde_json::json!({"uuid": "u1"})),
            "/v7/device" => HttpResponse::Ok().body("{\"d\": [{\"id\": 1}"),
            _ => HttpResponse::NotFound().finish(),
        });
        let c = cloud(&url);
        for uuid in ["big", "chunked"] {
            let e = c.fetch_target(uuid, KEY, None, 1024).await.unwrap_err();
            assert!(
                matches!(e, CloudError::TooLarge { limit: 1024 }),
                "{uuid}: {e:?}"
            );
            assert!(!e.is_transient());
        }
        let e = c
            .fetch_target("garbage", KEY, None, 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, CloudError::InvalidJson { .. }), "{e:?}");
        assert!(e.is_transient());

        // Valid JSON of the wrong shape (no id) is an invalid answer, not a JSON error.
        let req = RegisterRequest {
            application: 1,
            uuid: "u1".into(),
            device_type: "t".into(),
            api_key: KEY.into(),
            supervisor_version: None,
            os_version: None,
            os_variant: None,
            mac_address: None,
        };
        let e = c.register("prov", &req).await.unwrap_err();
        assert!(matches!(e, CloudError::InvalidAnswer { .. }), "{e:?}");
        assert!(!e.is_transient());
        let e = c.find_device("u1", KEY).await.unwrap_err();
        assert!(matches!(e, CloudError::InvalidJson { .. }), "{e:?}");
    }

    #[actix_rt::test]
    async fn slow_answers_time_out() {
        let server = HttpServer::new(|| {
            App::new().default_service(web::to(|| async {
                actix_rt::time::sleep(Duration::from_secs(3)).await;
                HttpResponse::Ok().finish()
            }))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let addr = server.addrs()[0];
        actix_rt::spawn(server.run());
        let mut s = settings(&format!("http://{addr}"));
        s.request_timeout = Duration::from_millis(300);
        let c = Cloud::new(&s).unwrap();
        let started = Instant::now();
        let e = c.fetch_target("u1", KEY, None, 1024).await.unwrap_err();
        assert!(matches!(e, CloudError::Timeout { .. }), "{e:?}");
        assert!(e.is_transient());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[actix_rt::test]
    async fn refused_and_reset_connections_are_transient() {
        // Refused: a port nobody listens on any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = cloud(&format!("http://127.0.0.1:{port}"));
        let e = c.fetch_target("u1", KEY, None, 1024).await.unwrap_err();
        assert!(matches!(e, CloudError::Connect { .. }), "{e:?}");
        assert!(e.is_transient());
        assert!(e.to_string().starts_with("connect to http://127.0.0.1:"));

        // Reset: a server that reads the request and closes the socket without answering.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            for stream in listener.incoming().take(1) {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
            }
        });
        let c = cloud(&format!("http://{addr}"));
        let e = c.fetch_target("u1", KEY, None, 1024).await.unwrap_err();
        assert!(
            matches!(
                e,
                CloudError::Disconnected { .. } | CloudError::Connect { .. }
            ),
            "{e:?}"
        );
        assert!(e.is_transient());
    }

    #[actix_rt::test]
    async fn patch_register_and_key_exchange_requests_follow_the_spec() {
        let (url, log) = scripted(|r| match (r.method.as_str(), r.path.as_str()) {
            ("PATCH", "/device/v3/state") => HttpResponse::Ok().finish(),
            ("POST", "/device/register") if r.body.windows(5).any(|w| w == b"dup00") => {
                HttpResponse::Conflict().body("\"uuid\" must be unique.")
            }
            ("POST", "/device/register") => HttpResponse::Created()
                .json(serde_json::json!({"id": 42, "uuid": "u1", "api_key": KEY})),
            ("GET", "/v7/device") => {
                HttpResponse::Ok().json(serde_json::json!({"d": [{"id": 42}]}))
            }
            ("POST", "/api-key/device/42/device-key") => HttpResponse::Ok().json(KEY),
            _ => HttpResponse::NotFound().finish(),
        });
        let c = cloud(&url);

        let report = serde_json::json!({"u1": {"apps": {}}});
        c.patch_state(KEY, &report).await.unwrap();

        let mut req = RegisterRequest {
            application: 2167345,
            uuid: "u1".into(),
            device_type: "raspberrypi4-64".into(),
            api_key: KEY.into(),
            supervisor_version: Some("0.1.0".into()),
            os_version: None,
            os_variant: Some("prod".into()),
            mac_address: None,
        };
        let resp = c.register("prov-key", &req).await.unwrap();
        assert_eq!(resp.id, 42);
        assert_eq!(resp.uuid.as_deref(), Some("u1"));
        req.uuid = "dup00".into();
        let e = c.register("prov-key", &req).await.unwrap_err();
        assert!(matches!(e, CloudError::Conflict), "{e:?}");
        assert!(!e.is_transient());

        assert_eq!(c.find_device("it's", KEY).await.unwrap(), vec![42]);
        c.create_device_key("prov-key", 42, KEY).await.unwrap();

        let log = log.lock().unwrap();
        let patch = &log[0];
        assert_eq!(patch.method, "PATCH");
        assert_eq!(patch.header("content-type"), Some("application/json"));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&patch.body).unwrap(),
            report
        );

        let register = &log[1];
        assert_eq!(register.header("authorization"), Some("Bearer prov-key"));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&register.body).unwrap(),
            serde_json::json!({
                "application": 2167345, "uuid": "u1", "device_type": "raspberrypi4-64",
                "api_key": KEY, "supervisor_version": "0.1.0", "os_variant": "prod"
            }),
            "None fields are omitted"
        );

        let find = &log[3];
        let query: Vec<(String, String)> = url_decode_query(&find.query);
        assert_eq!(
            query,
            vec![
                ("$select".to_owned(), "id".to_owned()),
                ("$filter".to_owned(), "uuid eq 'it''s'".to_owned()),
            ]
        );

        let key = &log[4];
        assert_eq!(key.method, "POST");
        assert_eq!(key.header("authorization"), Some("Bearer prov-key"));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&key.body).unwrap(),
            serde_json::json!({ "apiKey": KEY })
        );
    }

    /// Decodes `a=b&c=d` with %XX escapes (the server side of `encode`).
    fn url_decode_query(q: &str) -> Vec<(String, String)> {
        fn dec(s: &str) -> String {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        }
        q.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (dec(k), dec(v))
            })
            .collect()
    }

    #[test]
    fn settings_are_validated() {
        let bad = |f: &dyn Fn(&mut CloudSettings)| {
            let mut s = settings("https://api.example.com");
            f(&mut s);
            Cloud::new(&s).unwrap_err()
        };
        // Building a client needs no runtime; only requests do.
        assert!(Cloud::new(&settings("https://api.example.com")).is_ok());
        let e = bad(&|s| s.user_agent = "Supervisor/16.0.0".into());
        assert!(matches!(e, CloudError::Config { .. }), "{e:?}");
        for endpoint in [
            "",
            "api.example.com",
            "ftp://x",
            "https://user:pw@x",
            "https://x/?q=1",
        ] {
            let e = bad(&|s| s.endpoint = endpoint.into());
            assert!(matches!(e, CloudError::Config { .. }), "{endpoint}: {e:?}");
            assert!(!e.to_string().contains("pw"));
        }
        let e = bad(&|s| s.request_timeout = Duration::ZERO);
        assert!(matches!(e, CloudError::Config { .. }));
        let e = bad(&|s| s.extra_ca = Some("/nonexistent/ca.pem".into()));
        assert!(matches!(e, CloudError::ExtraCaRead { .. }), "{e:?}");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "not a certificate").unwrap();
        let e = bad(&|s| s.extra_ca = Some(f.path().into()));
        assert!(matches!(e, CloudError::ExtraCaInvalid { .. }), "{e:?}");
        assert!(!e.is_transient());
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    // Test PKI (ECDSA P-256, valid 2000-2100): a CA and a server certificate for 127.0.0.1.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBZTCCAQugAwIBAgIBATAKBggqhkjOPQQDAjAZMRcwFQYDVQQDDA5oZWxpb3Mg
dGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowGTEXMBUG
A1UEAwwOaGVsaW9zIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQH
+zMNvNNxroPzV5NRVUu9OmUHMGy51WJwF9NMD7jzl74ivfnBNqV2SYR7JYzEj98w
oxMQ1nVwGPG+mi3RBgJlo0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQE
AwIBBjAdBgNVHQ4EFgQUzhN0T2VSrCuB0cvZ8UmDVLvTPtUwCgYIKoZIzj0EAwID
SAAwRQIgJDDF6oCDktAu//Morla1IeujddsJsAsxfK7z8Ek6FZgCIQDknzysbuBu
k610oP5CD36kIzVpCAlLIyLBNuB/tbiuGQ==
-----END CERTIFICATE-----
";
    const TEST_SERVER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBrTCCAVSgAwIBAgIBAjAKBggqhkjOPQQDAjAZMRcwFQYDVQQDDA5oZWxpb3Mg
dGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowFDESMBAG
A1UEAwwJMTI3LjAuMC4xMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0VkdiIiZ
/+djXScmVbhhp9z2MbJENg/tAX+PzDeo0r0LzMjSABu6IaNqC6Tpnas4wSxggMyr
x58dAyXS+rkG9aOBjzCBjDAJBgNVHRMEAjAAMA4GA1UdDwEB/wQEAwIHgDATBgNV
HSUEDDAKBggrBgEFBQcDATAaBgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwHQYD
VR0OBBYEFBMMPLF6L9d/+ORZH9g7bzf1+fCTMB8GA1UdIwQYMBaAFM4TdE9lUqwr
gdHL2fFJg1S70z7VMAoGCCqGSM49BAMCA0cAMEQCIG5NObjTVkaJzfxJg5x0WEBr
W6dc8a/IbH56WlnZy0nbAiAu2Xy/R0IQ0TX6PlnIoahl2Py1ZxJdZcN+AavgdXlS
5g==
-----END CERTIFICATE-----
";
    const TEST_SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTHMQKvvda5+29VNs
TrJeXkFsjetu3iJuUpve062lNjihRANCAATRWR2IiJn/52NdJyZVuGGn3PYxskQ2
D+0Bf4/MN6jSvQvMyNIAG7oho2oLpOmdqzjBLGCAzKvHnx0DJdL6uQb1
-----END PRIVATE KEY-----
";

    #[actix_rt::test]
    async fn https_trusts_the_extra_ca_only_when_given() {
        use rustls::pki_types::PrivateKeyDer;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(TEST_SERVER_CERT.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(TEST_SERVER_KEY.as_bytes()).unwrap(),
            )
            .unwrap();
        let server = HttpServer::new(|| {
            App::new().default_service(web::to(|| async { HttpResponse::Ok().json(target_doc()) }))
        })
        .workers(1)
        .disable_signals()
        .bind_rustls_0_23(("127.0.0.1", 0), tls)
        .unwrap();
        let addr = server.addrs()[0];
        actix_rt::spawn(server.run());
        let endpoint = format!("https://{addr}");

        // Built-in roots only: the private CA is unknown.
        let e = cloud(&endpoint)
            .fetch_target("u1", KEY, None, 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, CloudError::Tls { .. }), "{e:?}");
        assert!(e.is_transient());

        // The extra CA file may hold other PEM sections; only certificates are used.
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), format!("# openBalena root\n{TEST_CA}")).unwrap();
        let mut s = settings(&endpoint);
        s.extra_ca = Some(f.path().into());
        let got = Cloud::new(&s)
            .unwrap()
            .fetch_target("u1", KEY, None, 1024)
            .await
            .unwrap();
        assert_eq!(
            got,
            Fetched::New {
                body: target_doc(),
                etag: None
            }
        );
    }
}
