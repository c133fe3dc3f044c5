//! Tests of published ports and the per-target cap.
use serde_json::json;

use super::super::tests::{app, one, parse, rejected, REL};
use super::*;

#[test]
fn port_ranges_expand() {
    let pm = |t, p, proto: &str, ip: Option<&str>| PortMapping {
        target: t,
        published: p,
        protocol: proto.into(),
        host_ip: ip.map(Into::into),
    };
    assert_eq!(
        parse_port("8080-8081:8080").unwrap(),
        [pm(8080, 8080, "tcp", None), pm(8080, 8081, "tcp", None)]
    );
    assert_eq!(
        parse_port("9000-9001:80-81/udp").unwrap(),
        [pm(80, 9000, "udp", None), pm(81, 9001, "udp", None)]
    );
    assert_eq!(
        parse_port("48484").unwrap(),
        [pm(48484, 48484, "tcp", None)]
    );
    assert_eq!(
        parse_port("5000-5001").unwrap(),
        [pm(5000, 5000, "tcp", None), pm(5001, 5001, "tcp", None)]
    );
    assert_eq!(
        parse_port("127.0.0.1:8000:80").unwrap(),
        [pm(80, 8000, "tcp", Some("127.0.0.1"))]
    );
    assert_eq!(
        parse_port("127.0.0.1::80").unwrap(),
        [pm(80, 80, "tcp", Some("127.0.0.1"))]
    );
    assert_eq!(
        parse_port("[::1]:8000:80/sctp").unwrap(),
        [pm(80, 8000, "sctp", Some("::1"))]
    );
    for bad in [
        "",
        "0",
        "70000",
        "80/icmp",
        "1:2:3:4",
        "9000-9002:80-81",
        "81-80",
        "a:b",
    ] {
        assert!(parse_port(bad).is_err(), "{bad}");
    }
    let c = one(json!({"ports": [80, "8080-8081:8080",
        {"target": 53, "published": "1053-1054", "protocol": "udp", "host_ip": "0.0.0.0"}]}))
    .unwrap();
    assert_eq!(
        c.ports,
        [
            pm(80, 80, "tcp", None),
            pm(8080, 8080, "tcp", None),
            pm(8080, 8081, "tcp", None),
            pm(53, 1053, "udp", Some("0.0.0.0")),
            pm(53, 1054, "udp", Some("0.0.0.0")),
        ]
    );
    rejected(json!({"ports": ["80", "x"]}), "ports[1]");
    rejected(json!({"ports": [{"published": 80}]}), "ports[0]");
    rejected(
        json!({"ports": [{"target": 80, "protocol": "icmp"}]}),
        "ports[0].protocol",
    );
}

/// One full range is fine (coturn-style releases publish big ranges); past
/// [`MAX_PORT_MAPPINGS`] in total the target is refused, naming the service and field,
/// before anything is expanded.
#[test]
fn a_target_publishes_at_most_one_full_range_of_ports() {
    let c = one(json!({"ports": ["1-65535:1-65535"]})).unwrap();
    assert_eq!(c.ports.len(), 65_535);
    assert_eq!(c.ports[65_534].published, 65_535);
    assert_eq!(c.ports[65_534].target, 65_535);
    let c = one(json!({"ports": ["10000-20000:10000-20000/udp", "3478:3478"]})).unwrap();
    assert_eq!(c.ports.len(), 10_002);

    let e = parse(app(
        json!({"web": {"id": 1, "image": "a", "composition": {
            "ports": ["1-65535:1-65535", "1-65535:1-65535/udp", "1-65535:1"]}}}),
        json!({}),
    ))
    .unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.web.composition.ports[1]"),
        "{e}"
    );
    assert!(e.message.contains("65535"), "{e}");
    // Across services of the app too, and long-form entries count the same.
    let e = parse(app(
        json!({
            "a": {"id": 1, "image": "a", "composition": {"ports": ["1000-40000:1000"]}},
            "b": {"id": 2, "image": "a", "composition": {"ports": [
                {"target": 1, "published": "1-30000"}]}}}),
        json!({}),
    ))
    .unwrap_err();
    assert_eq!(
        e.field,
        format!("releases.{REL}.services.b.composition.ports[0]"),
        "{e}"
    );
    // Thousands of full ranges in one body are counted, never allocated.
    let many = vec![json!("1-65535:1-65535"); 5_000];
    let started = std::time::Instant::now();
    rejected(json!({ "ports": many }), "ports[1]");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
