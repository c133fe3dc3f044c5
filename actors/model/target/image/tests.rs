//! Tests of image reference normalisation.
use super::*;

#[test]
fn image_normalisation() {
    let ok = |i: &str, o: &str| assert_eq!(normalise_image(i).as_deref(), Ok(o), "{i}");
    let d = format!("sha256:{}", "a".repeat(64));
    ok("alpine", "alpine:latest");
    ok("alpine:3.19", "alpine:3.19");
    ok("library/alpine", "library/alpine:latest");
    ok("localhost:5000/x", "localhost:5000/x:latest");
    ok("localhost/x:1", "localhost/x:1");
    ok(
        "127.0.0.1:34837/helios-test/busybox:1",
        "127.0.0.1:34837/helios-test/busybox:1",
    );
    ok(
        "registry2.balena-cloud.com/v2/0f3a",
        "registry2.balena-cloud.com/v2/0f3a:latest",
    );
    ok(&format!("reg.io/a/b@{d}"), &format!("reg.io/a/b@{d}"));
    ok(&format!("reg.io/a/b:tag@{d}"), &format!("reg.io/a/b@{d}"));
    ok(
        &format!("reg.io:443/a:tag@{d}"),
        &format!("reg.io:443/a@{d}"),
    );
    ok(&d, &d);
    ok("a__b/c-d--e.f_g:T_1.0-x", "a__b/c-d--e.f_g:T_1.0-x");
    ok("[::1]:5000/x", "[::1]:5000/x:latest");
    for bad in [
        "",
        "Alpine",
        "alpine:",
        "alpine:bad tag",
        "a//b",
        "/a",
        "a/",
        "a@sha256:abc",
        "a:-x",
        "-a",
        "a..b",
        "reg.io:port/x",
        &"a".repeat(256),
    ] {
        assert!(normalise_image(bad).is_err(), "{bad}");
    }
}
