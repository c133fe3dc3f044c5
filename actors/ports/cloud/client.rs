//! The client: settings, TLS roots, and one bounded exchange with its transport errors.
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use awc::error::{ConnectError, PayloadError, SendRequestError};
use awc::http::header::{self, HeaderMap, HeaderValue};
use awc::http::{StatusCode, Uri};
use log::debug;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::errors::{parse_retry_after, snippet, CloudError};

/// Bound of the bodies the port reads for itself: error answers, register and lookup answers.
pub(super) const SMALL_BODY: usize = 64 * 1024;
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
    pub(super) client: awc::Client,
    /// Endpoint without a trailing `/`.
    pub(super) base: String,
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

/// What a successful exchange returned.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
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

    /// Sends one request and reads its answer, the whole bounded by the request timeout.
    /// Success is 2xx (and 304 when `not_modified_ok`): the body is read up to `limit`.
    /// Anything else is `CloudError::Status` with a snippet of the body where `keys` are redacted.
    pub(super) async fn call(
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

pub(super) fn bearer(key: &str) -> Result<HeaderValue, CloudError> {
    let mut v =
        HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| CloudError::InvalidKey)?;
    v.set_sensitive(true);
    Ok(v)
}
