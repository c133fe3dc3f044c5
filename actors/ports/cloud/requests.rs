//! The requests, one per endpoint (target poll, reports, registration, key exchange, tags),
//! and the bodies they send and read.
use std::fmt;

use awc::http::header::{self, HeaderValue};
use awc::http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::client::{bearer, SMALL_BODY};
use super::errors::parse_json;
use super::{Cloud, CloudError};

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

impl Cloud {
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
