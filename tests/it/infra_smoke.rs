//! The private bus started by `scripts/test` answers, and lets a test own the well-known names of
//! the host services the agent talks to.

use crate::support::infra::infra;

#[tokio::test]
async fn private_bus_lets_tests_own_host_service_names_and_lists_them() {
    let Some(infra) = infra("infra_smoke::private_bus") else {
        return;
    };
    let service = zbus::connection::Builder::address(infra.dbus_address.as_str())
        .build()
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", infra.dbus_address));
    for name in [
        "org.freedesktop.login1",
        "org.freedesktop.systemd1",
        "org.freedesktop.hostname1",
    ] {
        service
            .request_name(name)
            .await
            .unwrap_or_else(|e| panic!("owning {name}: {e}"));
    }

    let client = zbus::connection::Builder::address(infra.dbus_address.as_str())
        .build()
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", infra.dbus_address));
    let reply = client
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "ListNames",
            &(),
        )
        .await
        .expect("calling org.freedesktop.DBus.ListNames");
    let names: Vec<String> = reply.body().deserialize().expect("ListNames reply");
    for name in [
        "org.freedesktop.DBus",
        "org.freedesktop.login1",
        "org.freedesktop.systemd1",
        "org.freedesktop.hostname1",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
}
