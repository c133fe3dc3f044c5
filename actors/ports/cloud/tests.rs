//! Tests of the cloud port against a scripted local server: requests, errors, redaction, TLS.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

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
            HttpResponse::Forbidden().body(format!("{body} {}", String::from_utf8_lossy(&r.body)))
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
            let chunks =
                (0..64).map(|_| Ok::<_, std::io::Error>(web::Bytes::from_static(&[b' '; 1024])));
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
        ("GET", "/v7/device") => HttpResponse::Ok().json(serde_json::json!({"d": [{"id": 42}]})),
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
