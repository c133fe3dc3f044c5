//! The port's errors, their classification (transient or not), and key redaction in snippets.
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Bytes of an error answer kept in `CloudError::Status`.
const SNIPPET_LEN: usize = 200;

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

/// Valid JSON of the wrong shape is `InvalidAnswer`; anything else that fails is `InvalidJson`.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CloudError> {
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
pub(super) fn snippet(body: &[u8], keys: &[&str]) -> String {
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
