//! Browser guard on the TCP listener: a page a browser on the device (or on the LAN) loads can
//! reach `127.0.0.1:48484`, by DNS rebinding (a name of the attacker's that resolves to us) or
//! by a cross-site request. Refused, before any route runs:
//! * a `Host` that is neither an IP literal (v4, `[v6]`) nor `localhost` (any port) nor a name
//!   of `api.allowed_hosts` (IP literals cannot be rebound, names can); no `Host` passes;
//! * an `Origin` whose host fails the same rule (`Origin: null` included), or
//!   `Sec-Fetch-Site: cross-site`;
//! * a body that is not `application/json` (every route that reads a body reads JSON): 415, so a
//!   form or `text/plain` POST, which a browser sends without a preflight, never reaches one.
//!
//! The unix socket is not guarded: browsers cannot reach it. One log line per refusal, with the
//! path (never the query, which may hold a key).
use std::net::Ipv4Addr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use log::info;

use super::error::ApiError;
use super::ApiState;

/// The names (besides IP literals and `localhost`) a request may address the API by.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// `configured` (`api.allowed_hosts`), else the defaults: the system's hostname and the
    /// device's short uuid (balenaOS's hostname, `balena push <short-uuid>.local`), each bare
    /// and with `.local`.
    pub fn new(configured: Option<&[String]>, uuid: &str) -> AllowedHosts {
        let names: Vec<String> = match configured {
            Some(c) => c.to_vec(),
            None => {
                let short: String = uuid.chars().take(7).collect();
                let mut bare = vec![short];
                bare.extend(system_hostname());
                bare.iter()
                    .flat_map(|n| [n.clone(), format!("{n}.local")])
                    .collect()
            }
        };
        AllowedHosts(
            names
                .iter()
                .map(|n| normalise(n))
                .filter(|n| !n.is_empty())
                .collect(),
        )
    }

    /// Whether `host` (a `Host` value or an origin's host, port included) may be addressed.
    pub fn allows(&self, host: &str) -> bool {
        let Some(name) = strip_port(host) else {
            return false;
        };
        if name.starts_with('[') {
            return name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
        }
        if name.parse::<Ipv4Addr>().is_ok() {
            return true;
        }
        let name = normalise(name);
        name == "localhost" || self.0.contains(&name)
    }
}

/// Lower case, without a trailing dot (`Host: localhost.` is `localhost`).
fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `host[:port]` or `[v6][:port]` without the port; None when the port is not a number.
fn strip_port(host: &str) -> Option<&str> {
    let (name, port) = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => (&host[..i], Some(&host[i + 1..])),
        _ => (host, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    (!name.is_empty()).then_some(name)
}

fn system_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Why a request is refused, or None.
fn verdict(allowed: &AllowedHosts, headers: &HeaderMap) -> Option<(&'static str, ApiError)> {
    let forbidden = |reason: &'static str| {
        let e = ApiError::Text {
            status: 403,
            message: format!("Forbidden: {reason}"),
        };
        Some((reason, e))
    };
    for h in headers.get_all(header::HOST) {
        if !h.to_str().is_ok_and(|h| allowed.allows(h.trim())) {
            return forbidden("host not allowed");
        }
    }
    for o in headers.get_all(header::ORIGIN) {
        let host = o.to_str().ok().and_then(|o| {
            let (scheme, rest) = o.trim().split_once("://")?;
            let ok_scheme =
                scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
            (ok_scheme && !rest.contains('/') && !rest.contains('@')).then_some(rest)
        });
        if !host.is_some_and(|h| allowed.allows(h)) {
            return forbidden("cross-origin request");
        }
    }
    let cross_site = headers
        .get_all("sec-fetch-site")
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site {
        return forbidden("cross-site request");
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0));
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if has_body && !json {
        return Some((
            "body is not application/json",
            ApiError::UnsupportedMediaType,
        ));
    }
    None
}

/// Middleware around every route (normal and proxy mode); requests on the unix socket pass.
pub async fn browser_guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let refused = match req.app_data::<web::Data<ApiState>>() {
        _ if super::auth::on_socket(req.request()) => None,
        Some(state) => verdict(&state.allowed_hosts, req.headers()),
        None => Some((
            "guard not configured",
            ApiError::Unavailable("API guard missing".into()),
        )),
    };
    match refused {
        Some((reason, e)) => {
            info!(path:% = req.path(), method:% = req.method(), decision = "refuse", reason;
                "Request refused");
            Ok(req.into_response(e.error_response()).map_into_right_body())
        }
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    use super::{verdict, AllowedHosts};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn ip_literals_localhost_and_allowed_names_pass() {
        let a = AllowedHosts::new(Some(&["MyDevice".to_string()]), "abcdef0123");
        for ok in [
            "127.0.0.1",
            "127.0.0.1:48484",
            "10.114.104.1:48484",
            "[::1]",
            "[::1]:48484",
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "mydevice",
            "mydevice:48484",
        ] {
            assert!(a.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:48484",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1",
            "::1",
            "127.0.0.1:",
            "127.0.0.1:x",
            "",
            ":48484",
            "abcdef0",
        ] {
            assert!(!a.allows(bad), "{bad}");
        }
    }

    #[test]
    fn the_default_names_are_the_hostname_and_short_uuid_with_dot_local() {
        let a = AllowedHosts::new(None, "abcdef0123456789");
        assert!(a.allows("abcdef0.local:48484"));
        assert!(a.allows("ABCDEF0"));
        assert!(!a.allows("abcdef01.local"));
    }

    #[test]
    fn origins_cross_site_fetches_and_non_json_bodies_are_refused() {
        let a = AllowedHosts::new(Some(&[]), "u");
        let refused = |pairs: &[(&str, &str)]| verdict(&a, &headers(pairs)).map(|(r, _)| r);
        assert_eq!(refused(&[]), None, "no Host (HTTP/1.0) passes");
        assert_eq!(refused(&[("host", "127.0.0.1:1")]), None);
        assert_eq!(
            refused(&[("host", "evil.example")]),
            Some("host not allowed")
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1.evil.example",
            "file://",
            "http://localhost@evil.example",
        ] {
            assert_eq!(
                refused(&[("host", "127.0.0.1"), ("origin", origin)]),
                Some("cross-origin request"),
                "{origin}"
            );
        }
        assert_eq!(refused(&[("origin", "http://localhost:3000")]), None);
        assert_eq!(refused(&[("origin", "https://127.0.0.1")]), None);
        assert_eq!(
            refused(&[("sec-fetch-site", "cross-site")]),
            Some("cross-site request")
        );
        assert_eq!(refused(&[("sec-fetch-site", "same-origin")]), None);
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert_eq!(
                refused(&[("content-type", ct), ("content-length", "2")]),
                Some("body is not application/json"),
                "{ct}"
            );
        }
        assert_eq!(
            refused(&[("content-length", "2")]),
            Some("body is not application/json")
        );
        assert_eq!(
            refused(&[("transfer-encoding", "chunked")]),
            Some("body is not application/json")
        );
        assert_eq!(
            refused(&[("content-length", "0")]),
            None,
            "empty POSTs pass"
        );
        assert_eq!(
            refused(&[
                ("content-type", "application/json; charset=utf-8"),
                ("content-length", "2")
            ]),
            None
        );
    }
}
