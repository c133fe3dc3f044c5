//! The fake cloud checked against the spec with a raw HTTP client, then our cloud port and
//! registration checked against the fake (each was written from the spec, not from the other).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::fake_cloud::{FakeCloud, Fault, Route};

const PROV: &str = "fleet-7-provisioning-key";
const KEY: &str = "0123456789abcdef0123456789abcdef";

struct Answer {
    /// 0 when the connection closed without an answer.
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`, read to the end.
fn call(
    fake: &FakeCloud,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let addr = fake.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect to the fake cloud");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: selftest\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw); // a reset ends in an error: whatever arrived counts
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return Answer {
            status: 0,
            headers: vec![],
            body: raw,
        };
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn auth(key: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {key}"))
}

fn register_body(uuid: &str, api_key: &str) -> Value {
    json!({"application": 7, "uuid": uuid, "device_type": "raspberrypi4-64", "api_key": api_key})
}

#[test]
fn registers_serves_targets_with_etags_and_records_reports() {
    let fake = FakeCloud::start();
    fake.add_fleet(7, PROV);
    let (h, v) = auth(PROV);

    let a = call(
        &fake,
        "POST",
        "/device/register",
        &[(h, &v)],
        Some(&register_body("u1", KEY)),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let answer = a.json();
    assert_eq!(
        (answer["uuid"].as_str(), answer["api_key"].as_str()),
        (Some("u1"), Some(KEY))
    );
    let id = answer["id"].as_u64().unwrap();
    let a = call(
        &fake,
        "POST",
        "/device/register",
        &[(h, &v)],
        Some(&register_body("u1", "other")),
    );
    assert_eq!(
        (a.status, a.body.as_str()),
        (409, "\"uuid\" must be unique.")
    );
    let (wh, wv) = auth("wrong");
    let a = call(
        &fake,
        "POST",
        "/device/register",
        &[(wh, &wv)],
        Some(&register_body("u2", "k2")),
    );
    assert_eq!(a.status, 401);
    let devices = fake.devices();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (devices[0].id, devices[0].fleet, devices[0].api_keys.clone()),
        (id, 7, vec![KEY.to_owned()])
    );
    assert_eq!(devices[0].device_type, "raspberrypi4-64");
    assert_eq!(devices[0].registration, Some(register_body("u1", KEY)));

    // Target: a default document, a real weak ETag, 304 on a match, 401 for a wrong key.
    let (dh, dv) = auth(KEY);
    let a = call(&fake, "GET", "/device/v3/u1/state", &[(dh, &dv)], None);
    assert_eq!(a.status, 200);
    assert!(a.json()["u1"]["apps"].is_object());
    let tag = a.header("etag").unwrap().to_owned();
    assert!(tag.starts_with("W/\""), "{tag}");
    assert_eq!(tag, fake.target_etag("u1"));
    let a = call(
        &fake,
        "GET",
        "/device/v3/u1/state",
        &[(dh, &dv), ("If-None-Match", &tag)],
        None,
    );
    assert_eq!((a.status, a.body.as_str()), (304, ""));
    fake.set_target("u1", json!({"name": "renamed", "config": {}, "apps": {}}));
    let a = call(
        &fake,
        "GET",
        "/device/v3/u1/state",
        &[(dh, &dv), ("If-None-Match", &tag)],
        None,
    );
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json(),
        json!({"u1": {"name": "renamed", "config": {}, "apps": {}}})
    );
    assert_ne!(a.header("etag"), Some(tag.as_str()));
    assert_eq!(
        call(&fake, "GET", "/device/v3/u1/state", &[(wh, &wv)], None).status,
        401
    );
    assert_eq!(
        call(&fake, "GET", "/device/v3/u2/state", &[(dh, &dv)], None).status,
        401
    );
    assert_eq!(fake.target_gets(), 5);

    // Reports: recorded with a time; 401 without a device object, 400 for a wrong type.
    let report = json!({"u1": {"status": "Idle", "apps": {}}});
    let a = call(
        &fake,
        "PATCH",
        "/device/v3/state",
        &[(dh, &dv)],
        Some(&report),
    );
    assert_eq!(a.status, 200);
    let a = call(
        &fake,
        "PATCH",
        "/device/v3/state",
        &[(dh, &dv)],
        Some(&json!({"u1": 1})),
    );
    assert_eq!(a.status, 401);
    let bad = json!({"u1": {"ip_address": null}});
    assert_eq!(
        call(&fake, "PATCH", "/device/v3/state", &[(dh, &dv)], Some(&bad)).status,
        400
    );
    assert_eq!(fake.reports(), vec![report.clone()]);
    let timed = fake.timed_reports();
    assert_eq!((timed.len(), &timed[0].body), (1, &report));
    assert!(timed[0].at <= Instant::now());

    // Frozen: a bare 304 for GET, 401 for PATCH.
    fake.set_frozen("u1", true);
    let a = call(&fake, "GET", "/device/v3/u1/state", &[(dh, &dv)], None);
    assert_eq!((a.status, a.header("etag")), (304, None));
    let a = call(
        &fake,
        "PATCH",
        "/device/v3/state",
        &[(dh, &dv)],
        Some(&json!({"u1": {}})),
    );
    assert_eq!(a.status, 401);

    let requests = fake.requests();
    assert_eq!(requests.len(), 13);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/device/register");
    assert_eq!(requests[0].route, Route::Register);
    assert_eq!(requests[3].route, Route::Target);
    assert_eq!(requests[0].user_agent(), Some("selftest"));
    assert_eq!(requests[0].bearer(), Some(PROV));
    assert_eq!(requests[0].json().unwrap()["uuid"], "u1");
    assert_eq!(requests[1].answered, Some(409));
    assert!(requests.windows(2).all(|w| w[0].at <= w[1].at));
}

#[test]
fn key_exchange_endpoints_follow_the_spec() {
    let fake = FakeCloud::start();
    fake.add_fleet(7, PROV);
    fake.add_fleet(8, "fleet-8-key");
    let id = fake.add_device("u1", "old-key", 7);
    let find = |key: &str, uuid: &str| {
        let (h, v) = auth(key);
        let target = format!("/v7/device?$select=id&$filter=uuid%20eq%20'{uuid}'");
        call(&fake, "GET", &target, &[(h, &v)], None)
    };
    assert_eq!(find("old-key", "u1").json(), json!({"d": [{"id": id}]}));
    assert_eq!(find(PROV, "u1").json(), json!({"d": [{"id": id}]}));
    assert_eq!(find("fleet-8-key", "u1").json(), json!({"d": []}));
    assert_eq!(find("unknown", "u1").status, 401);

    let (h, v) = auth(PROV);
    let path = format!("/api-key/device/{id}/device-key");
    let a = call(
        &fake,
        "POST",
        &path,
        &[(h, &v)],
        Some(&json!({"apiKey": KEY})),
    );
    assert_eq!((a.status, a.json()), (200, json!(KEY)));
    assert_eq!(
        fake.devices()[0].api_keys,
        vec!["old-key".to_owned(), KEY.to_owned()]
    );
    assert_eq!(find(KEY, "u1").json(), json!({"d": [{"id": id}]}));
    let (h8, v8) = auth("fleet-8-key");
    let a = call(
        &fake,
        "POST",
        &path,
        &[(h8, &v8)],
        Some(&json!({"apiKey": "x"})),
    );
    assert_eq!(a.status, 404);

    // `+` for spaces works too; the query is recorded as sent.
    let (h, v) = auth(PROV);
    let a = call(
        &fake,
        "GET",
        "/v7/device?$select=id&$filter=uuid+eq+'u1'",
        &[(h, &v)],
        None,
    );
    assert_eq!(a.json(), json!({"d": [{"id": id}]}));
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.query, "$select=id&$filter=uuid+eq+'u1'");
    assert_eq!(last.route, Route::KeyExchange);

    // A removed device: its keys are gone, its uuid is free.
    fake.remove_device("u1");
    assert_eq!(find(KEY, "u1").status, 401);
    assert_eq!(find(PROV, "u1").json(), json!({"d": []}));
}

#[tokio::test]
async fn faults_and_latency_hit_the_next_requests() {
    let fake = FakeCloud::start();
    fake.add_device("u1", KEY, 7);
    let (h, v) = auth(KEY);
    let get = || call(&fake, "GET", "/device/v3/u1/state", &[(h, &v)], None);

    fake.fail_next(2, 503, Some(Duration::from_secs(7)));
    for _ in 0..2 {
        let a = get();
        assert_eq!((a.status, a.header("retry-after")), (503, Some("7")));
    }
    assert_eq!(get().status, 200);

    fake.unauthorized_next(1);
    assert_eq!(get().status, 401);
    fake.garbage_next(1);
    let a = get();
    assert_eq!(a.status, 200);
    assert!(serde_json::from_str::<Value>(&a.body).is_err());
    fake.huge_next(1, 3 << 20);
    let a = get();
    assert_eq!(a.status, 200);
    assert!(a.body.len() >= 3 << 20);
    assert!(a.json().is_object());
    fake.reset_next(1);
    let a = get();
    assert_eq!(a.status, 0, "no answer: {:?}", a.body);
    assert_eq!(fake.requests().last().unwrap().answered, None);

    // A fault on one route leaves the others alone; faults queue in order.
    fake.inject(
        Route::Report,
        1,
        Fault::Status {
            status: 500,
            retry_after: None,
        },
    );
    assert_eq!(get().status, 200);
    let report = json!({"u1": {"apps": {}}});
    assert_eq!(
        call(
            &fake,
            "PATCH",
            "/device/v3/state",
            &[(h, &v)],
            Some(&report)
        )
        .status,
        500
    );
    assert_eq!(
        call(
            &fake,
            "PATCH",
            "/device/v3/state",
            &[(h, &v)],
            Some(&report)
        )
        .status,
        200
    );
    fake.fail_next(1, 502, None);
    fake.clear_faults();
    assert_eq!(get().status, 200);

    fake.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get().status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(fake.target_gets(), 10);
}

/// Our port and registration against the fake: both come from the spec, so this checks the
/// two readings against each other.
#[actix_web::test]
async fn our_cloud_client_and_registration_work_against_the_fake() {
    use helios_actors::poll::register::{register, Outcome, RegisterParams};
    use helios_actors::ports::cloud::{Cloud, CloudError, CloudSettings, Fetched};

    let fake = FakeCloud::start();
    fake.add_fleet(7, PROV);
    let cloud = Cloud::new(&CloudSettings {
        endpoint: fake.url.clone(),
        request_timeout: Duration::from_secs(5),
        extra_ca: None,
        user_agent: "helios/selftest".into(),
    })
    .unwrap();
    let params = |uuid: &str, api_key: Option<&str>| RegisterParams {
        provisioning_key: PROV.into(),
        fleet: 7,
        device_type: "raspberrypi4-64".into(),
        uuid: uuid.into(),
        api_key: api_key.map(Into::into),
        supervisor_version: Some("0.1.0".into()),
        os_version: None,
        os_variant: None,
        mac_address: None,
    };

    let id = register(&cloud, &params("u1", None)).await.unwrap();
    assert_eq!(id.outcome, Outcome::Registered);
    assert_eq!(fake.devices()[0].api_keys, vec![id.api_key.clone()]);
    // A crash lost the key: the retry with a new one goes through the key exchange.
    let again = register(&cloud, &params("u1", Some(KEY))).await.unwrap();
    assert_eq!(
        (again.outcome, again.device_id),
        (Outcome::KeyExchanged, id.device_id)
    );
    // The uuid of a device of another fleet: a new identity is needed.
    fake.add_device("taken", "their-key", 8);
    let e = register(&cloud, &params("taken", Some("k")))
        .await
        .unwrap_err();
    assert!(e.needs_new_identity(), "{e:?}");

    let Fetched::New { body, etag } = cloud.fetch_target("u1", KEY, None, 1 << 20).await.unwrap()
    else {
        panic!("expected a target")
    };
    assert!(body["u1"].is_object());
    let etag = etag.expect("the fake sends an ETag");
    let got = cloud
        .fetch_target("u1", KEY, Some(&etag), 1 << 20)
        .await
        .unwrap();
    assert_eq!(got, Fetched::NotModified);
    cloud
        .patch_state(KEY, &json!({"u1": {"apps": {}}}))
        .await
        .unwrap();
    assert_eq!(fake.reports(), vec![json!({"u1": {"apps": {}}})]);

    fake.fail_next(1, 503, Some(Duration::from_secs(9)));
    let e = cloud
        .fetch_target("u1", KEY, None, 1 << 20)
        .await
        .unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(9)));
    fake.reset_next(1);
    let e = cloud
        .fetch_target("u1", KEY, None, 1 << 20)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    fake.huge_next(1, 2 << 20);
    let e = cloud
        .fetch_target("u1", KEY, None, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::TooLarge { .. }), "{e:?}");
    fake.garbage_next(1);
    let e = cloud
        .fetch_target("u1", KEY, None, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::InvalidJson { .. }), "{e:?}");
    let e = cloud
        .fetch_target("u1", "wrong", None, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));

    let requests = fake.requests();
    assert!(requests
        .iter()
        .all(|r| r.user_agent() == Some("helios/selftest")));
    assert!(requests
        .iter()
        .all(|r| !r.user_agent().unwrap().starts_with("Supervisor/")));
}
