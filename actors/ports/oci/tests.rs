//! Tests of the model ↔ engine mapping: create bodies, read-back, drift, networks, volumes.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, ContainerState,
    ContainerStateStatusEnum, DeviceMapping as EngineDevice, EndpointSettings, Health,
    HealthConfig, HealthStatusEnum, HostConfigCgroupnsModeEnum, IpamConfig as EngineIpamConfig,
    Mount as EngineMount, MountBindOptions, MountBindOptionsPropagationEnum, MountTmpfsOptions,
    MountType, NetworkSettings, RestartPolicy as EngineRestartPolicy, RestartPolicyNameEnum,
};
use serde_json::json;

use super::*;
use crate::model::compose::{RestartPolicy, ServiceConfig, VolumeConfig};
use crate::model::device::{container_name, App, Container};
use crate::model::host::OsVersion;
use crate::model::target::{app_from_target, AppTarget};

const APP: &str = "app1";
const REL: &str = "rel1";

fn app(v: serde_json::Value) -> App {
    let t: AppTarget = serde_json::from_value(v).expect("wire shape");
    app_from_target(APP, t).expect("valid target")
}

fn ctx<'a>(
    service: &'a str,
    image: &'a str,
    os: Option<&'a OsVersion>,
    extra: &'a BTreeMap<String, String>,
) -> ServiceContext<'a> {
    ServiceContext {
        app_uuid: APP,
        app_id: 12,
        app_name: Some("demo"),
        service_name: service,
        service_id: 3,
        release: REL,
        device_uuid: "dev-uuid",
        device_name: Some("my-device"),
        host_os: os,
        host_runtime_dir: Path::new("/tmp/run"),
        image,
        extra_env: extra,
    }
}

/// What the engine would report for a container created from `body` (+ `connect`).
fn inspect(
    body: &ContainerCreateBody,
    connect: &[(String, EndpointSettings)],
    name: &str,
    state: ContainerState,
) -> ContainerInspectResponse {
    let mut networks: HashMap<String, EndpointSettings> = body
        .networking_config
        .as_ref()
        .and_then(|n| n.endpoints_config.clone())
        .unwrap_or_default();
    networks.extend(connect.iter().cloned());
    ContainerInspectResponse {
        id: Some("0123456789abcdef0123".into()),
        name: Some(format!("/{name}")),
        created: Some("2026-11-28T01:54:00.604943066Z".into()),
        image: Some(format!("sha256:{}", "b".repeat(64))),
        state: Some(state),
        config: Some(ContainerConfig {
            image: body.image.clone(),
            env: body.env.clone(),
            cmd: body.cmd.clone(),
            labels: body.labels.clone(),
            ..Default::default()
        }),
        host_config: body.host_config.clone(),
        network_settings: Some(NetworkSettings {
            networks: Some(networks),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn created() -> ContainerState {
    ContainerState {
        status: Some(ContainerStateStatusEnum::CREATED),
        running: Some(false),
        started_at: Some("0001-01-01T00:00:00Z".into()),
        ..Default::default()
    }
}

const FULL: &str = r#"{
    "id": 12, "name": "demo",
    "releases": {"rel1": {"id": 1,
        "networks": {"front": {"ipam": {"config": [{"subnet": "10.9.0.0/16"}]}}, "back": {}},
        "volumes": {"data": {}},
        "services": {
            "web": {"id": 3, "image": "alpine", "environment": {"FOO": "bar"},
                "labels": {"com.example": "x"},
                "composition": {
                    "command": "sleep infinity", "entrypoint": ["/bin/sh", "-c"],
                    "networks": {"front": {"aliases": ["www"], "priority": 5}, "back": null},
                    "volumes": ["data:/data", "/sys:/sys:ro",
                        {"type": "tmpfs", "target": "/cache", "tmpfs": {"size": "1m", "mode": "1777"}},
                        "data:/tmp/balena"],
                    "tmpfs": ["/run:size=1m"],
                    "ports": ["8080-8081:8080", "127.0.0.1:53:53/udp"],
                    "restart": "on-failure:2", "sysctls": {"net.core.somaxconn": 1024},
                    "security_opt": ["no-new-privileges:true"], "cap_add": ["NET_ADMIN"],
                    "devices": ["/dev/ttyUSB0"], "privileged": false,
                    "healthcheck": {"test": ["CMD", "true"], "interval": "10s", "retries": 2},
                    "working_dir": "/app", "user": "1000", "hostname": "web",
                    "tty": false, "init": true, "read_only": true, "stop_signal": "SIGINT",
                    "stop_grace_period": "1500ms", "dns": ["1.1.1.1"],
                    "extra_hosts": ["db=10.0.0.2"], "mem_limit": "1g", "shm_size": "64m",
                    "cpus": 0.5, "cpu_shares": 512, "pids_limit": 100, "oom_score_adj": 5,
                    "group_add": ["audio"], "cgroup": "private",
                    "ulimits": {"nofile": {"soft": 1024, "hard": 2048}},
                    "annotations": {"a": "b"}, "depends_on": ["db"]
                }},
            "db": {"id": 4, "image": "postgres:16"},
            "sidecar": {"id": 5, "image": "alpine", "composition": {"network_mode": "service:web"}},
            "hosty": {"id": 6, "image": "alpine", "composition": {"network_mode": "host", "restart": "no"}}
        }}}}"#;

fn full() -> App {
    app(serde_json::from_str(FULL).unwrap())
}

#[test]
fn every_service_round_trips_through_the_engine() {
    let a = full();
    let no_env = BTreeMap::new();
    let os = OsVersion::parse("balenaOS 6.0.39@rev-1").unwrap();
    for (name, svc) in a.releases[&REL.to_string()].services.iter() {
        let cx = ctx(name, &svc.image, Some(&os), &no_env);
        let (body, connect) = container_create_body(&cx, &svc.config);
        let c = inspect(&body, &connect, &container_name(name, REL), created());
        let rb = read_container(&c).expect("supervised");
        assert_eq!(rb.config, svc.config, "{name}");
        assert_eq!(rb.app_uuid, APP);
        assert_eq!(rb.app_id, 12);
        assert_eq!(rb.app_name.as_deref(), Some("demo"));
        assert_eq!(rb.service_name, *name);
        assert_eq!(rb.release, REL);
        assert_eq!(rb.image, svc.image);
        assert_eq!(rb.image_id, format!("sha256:{}", "b".repeat(64)));
        assert!(!rb.running);
        assert_eq!(
            rb.container,
            Container {
                id: "0123456789abcdef0123".into(),
                name: container_name(name, REL),
                created: "2026-11-28T01:54:00.604943066Z".into(),
                status: "created".into(),
                exit_code: 0,
                health: "none".into(),
                started: false,
            }
        );
    }
}

#[test]
fn the_create_body_maps_the_compose_configuration() {
    let a = full();
    let web = &a.releases[&REL.to_string()].services[&"web".to_string()];
    let extra = BTreeMap::from([("BALENA_SUPERVISOR_API_KEY".to_string(), "k".to_string())]);
    let os = OsVersion::parse("balenaOS 6.0.39@rev-1").unwrap();
    let (body, connect) =
        container_create_body(&ctx("web", &web.image, Some(&os), &extra), &web.config);
    assert_eq!(body.image.as_deref(), Some("alpine:latest"));
    assert_eq!(body.cmd, Some(vec!["sleep".into(), "infinity".into()]));
    assert_eq!(body.entrypoint, Some(vec!["/bin/sh".into(), "-c".into()]));
    assert_eq!(body.tty, Some(false));
    assert_eq!(body.stop_timeout, Some(2));
    assert_eq!(body.user.as_deref(), Some("1000"));
    assert_eq!(
        body.healthcheck,
        Some(HealthConfig {
            test: Some(vec!["CMD".into(), "true".into()]),
            interval: Some(10_000_000_000),
            retries: Some(2),
            ..Default::default()
        })
    );
    let env: BTreeSet<&str> = body
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    for e in [
        "FOO=bar",
        "BALENA_APP_UUID=app1",
        "RESIN_APP_UUID=app1",
        "BALENA_APP_ID=12",
        "BALENA_APP_NAME=demo",
        "BALENA_SERVICE_NAME=web",
        "BALENA_DEVICE_UUID=dev-uuid",
        "BALENA_HOST_OS_VERSION=balenaOS 6.0.39",
        "BALENA_HOST_OS_BUILD=rev-1",
        "RESIN_HOST_OS_VERSION=balenaOS 6.0.39",
        "BALENA_APP_LOCK_PATH=/tmp/balena/updates.lock",
        "BALENA_SERVICE_HANDOVER_COMPLETE_PATH=/tmp/balena/handover-complete",
        "RESIN_SERVICE_KILL_ME_PATH=/tmp/balena/handover-complete",
        "BALENA_DEVICE_NAME_AT_INIT=my-device",
        "BALENA=1",
        "RESIN=1",
        "BALENA_SUPERVISOR_API_KEY=k",
    ] {
        assert!(env.contains(e), "{e} in {env:?}");
    }
    let labels = body.labels.as_ref().unwrap();
    assert_eq!(labels["io.balena.supervised"], "");
    assert_eq!(labels["io.balena.app-uuid"], "app1");
    assert_eq!(labels["io.balena.service-name"], "web");
    assert_eq!(labels["io.balena.service-id"], "3");
    assert_eq!(labels["io.balena.app-id"], "12");
    assert_eq!(labels["com.example"], "x");
    assert_eq!(labels[DEPENDS_ON_LABEL], r#"{"db":"service_started"}"#);

    let h = body.host_config.as_ref().unwrap();
    assert_eq!(
        h.restart_policy,
        Some(EngineRestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(2)
        })
    );
    // Main network (highest priority) at create time, the rest connected afterwards.
    assert_eq!(h.network_mode.as_deref(), Some("front_app1"));
    let eps = body
        .networking_config
        .as_ref()
        .unwrap()
        .endpoints_config
        .as_ref()
        .unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(
        eps["front_app1"].aliases,
        Some(vec!["www".into(), "web".into()])
    );
    assert_eq!(connect.len(), 1);
    assert_eq!(connect[0].0, "back_app1");
    assert_eq!(connect[0].1.aliases, Some(vec!["web".into()]));

    let ports = h.port_bindings.as_ref().unwrap();
    let hp = |k: &str| -> Vec<(Option<String>, Option<String>)> {
        ports[k]
            .iter()
            .flatten()
            .map(|b| (b.host_ip.clone(), b.host_port.clone()))
            .collect()
    };
    assert_eq!(
        hp("8080/tcp"),
        [(None, Some("8080".into())), (None, Some("8081".into()))]
    );
    assert_eq!(
        hp("53/udp"),
        [(Some("127.0.0.1".into()), Some("53".into()))]
    );
    assert_eq!(
        body.exposed_ports,
        Some(vec!["53/udp".into(), "8080/tcp".into()])
    );

    let mounts = h.mounts.as_ref().unwrap();
    let lock = |t: &str| EngineMount {
        target: Some(t.into()),
        source: Some("/tmp/run/update-locks/app1".into()),
        typ: Some(MountType::BIND),
        bind_options: Some(MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::PRIVATE),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        *mounts,
        vec![
            EngineMount {
                target: Some("/data".into()),
                source: Some("data_app1".into()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            },
            EngineMount {
                target: Some("/sys".into()),
                source: Some("/sys".into()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            },
            EngineMount {
                target: Some("/cache".into()),
                typ: Some(MountType::TMPFS),
                tmpfs_options: Some(MountTmpfsOptions {
                    size_bytes: Some(1 << 20),
                    mode: Some(0o1777),
                    ..Default::default()
                }),
                ..Default::default()
            },
            lock("/tmp/balena"),
            lock("/tmp/resin"),
        ],
        "the user's /tmp/balena mount is replaced"
    );
    assert_eq!(
        h.tmpfs,
        Some(HashMap::from([("/run".into(), "size=1m".into())]))
    );
    assert_eq!(
        h.sysctls,
        Some(HashMap::from([(
            "net.core.somaxconn".into(),
            "1024".into()
        )]))
    );
    assert_eq!(h.security_opt, Some(vec!["no-new-privileges=true".into()]));
    assert_eq!(
        h.devices,
        Some(vec![EngineDevice {
            path_on_host: Some("/dev/ttyUSB0".into()),
            path_in_container: Some("/dev/ttyUSB0".into()),
            cgroup_permissions: Some("rwm".into())
        }])
    );
    assert_eq!(h.extra_hosts, Some(vec!["db:10.0.0.2".into()]));
    assert_eq!(h.memory, Some(1 << 30));
    assert_eq!(h.nano_cpus, Some(500_000_000));
    assert_eq!(h.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::PRIVATE));
    assert_eq!(h.readonly_rootfs, Some(true));
    assert_eq!(h.privileged, Some(false));
    assert_eq!(h.init, Some(true));
}

#[test]
fn network_modes() {
    let a = full();
    let services = &a.releases[&REL.to_string()].services;
    let no_env = BTreeMap::new();
    let body = |n: &str| {
        let s = &services[&n.to_string()];
        container_create_body(&ctx(n, &s.image, None, &no_env), &s.config)
    };
    let (b, connect) = body("hosty");
    let h = b.host_config.unwrap();
    assert_eq!(h.network_mode.as_deref(), Some("host"));
    assert!(b.networking_config.is_none() && connect.is_empty());
    assert_eq!(
        h.restart_policy,
        Some(EngineRestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: Some(0)
        })
    );
    assert_eq!(b.tty, Some(true), "tty defaults to true");
    let (b, _) = body("sidecar");
    assert_eq!(
        b.host_config.unwrap().network_mode.as_deref(),
        Some("container:web_rel1")
    );
    let (b, connect) = body("db");
    assert_eq!(
        b.host_config.unwrap().network_mode.as_deref(),
        Some("default_app1")
    );
    assert!(connect.is_empty());
    let env = b.env.unwrap();
    assert!(
        !env.iter().any(|e| e.starts_with("BALENA_HOST_OS_")),
        "no host OS known"
    );
}

#[test]
fn user_variables_win_over_injected_ones_and_extra_ones_win_over_both() {
    let cfg = ServiceConfig {
        environment: BTreeMap::from([
            ("BALENA_APP_NAME".to_string(), "mine".to_string()),
            ("K".to_string(), "user".to_string()),
        ]),
        ..Default::default()
    };
    let extra = BTreeMap::from([("K".to_string(), "feature".to_string())]);
    let env = container_environment(&ctx("web", "a:1", None, &extra), &cfg);
    assert_eq!(env["BALENA_APP_NAME"], "mine");
    assert_eq!(env["RESIN_APP_NAME"], "demo");
    assert_eq!(env["K"], "feature");
}

#[test]
fn hand_made_changes_show_as_drift() {
    let a = full();
    let web = &a.releases[&REL.to_string()].services[&"web".to_string()];
    let no_env = BTreeMap::new();
    let (body, connect) =
        container_create_body(&ctx("web", &web.image, None, &no_env), &web.config);
    let base = inspect(&body, &connect, "web_rel1", created());

    // docker update --restart always
    let mut c = base.clone();
    c.host_config.as_mut().unwrap().restart_policy = Some(EngineRestartPolicy {
        name: Some(RestartPolicyNameEnum::ALWAYS),
        maximum_retry_count: Some(0),
    });
    let rb = read_container(&c).unwrap();
    assert_eq!(rb.config.restart_policy, RestartPolicy::default());
    assert_ne!(rb.config, web.config);

    // docker network disconnect back_app1 web_rel1; docker network connect bridge web_rel1
    let mut c = base.clone();
    let nets = c
        .network_settings
        .as_mut()
        .unwrap()
        .networks
        .as_mut()
        .unwrap();
    nets.remove("back_app1");
    nets.insert(
        "bridge".into(),
        EndpointSettings {
            aliases: Some(vec!["0123456789ab".into()]),
            ..Default::default()
        },
    );
    let rb = read_container(&c).unwrap();
    assert_eq!(
        rb.config.networks.keys().collect::<Vec<_>>(),
        ["bridge", "front"]
    );
    assert_eq!(rb.config.networks["front"], web.config.networks["front"]);
    assert!(rb.config.networks["bridge"].aliases.is_empty());

    // The image comes from the engine.
    let mut c = base.clone();
    c.config.as_mut().unwrap().image = Some("other:1".into());
    assert_eq!(read_container(&c).unwrap().image, "other:1");
}

#[test]
fn unreadable_or_foreign_containers() {
    let a = full();
    let web = &a.releases[&REL.to_string()].services[&"web".to_string()];
    let no_env = BTreeMap::new();
    let (body, connect) =
        container_create_body(&ctx("web", &web.image, None, &no_env), &web.config);
    let base = inspect(&body, &connect, "web_rel1", created());

    for broken in [None, Some("{not json")] {
        let mut c = base.clone();
        let labels = c.config.as_mut().unwrap().labels.as_mut().unwrap();
        match broken {
            None => labels.remove(CONFIG_LABEL),
            Some(b) => labels.insert(CONFIG_LABEL.into(), b.into()),
        };
        let rb = read_container(&c).unwrap();
        assert_ne!(rb.config, web.config);
        assert!(rb.config.labels.contains_key(UNREADABLE_CONFIG_LABEL));
        assert_eq!(rb.config.labels["com.example"], "x");
        assert!(!rb.config.labels.contains_key(APP_UUID_LABEL));
    }

    let mut c = base.clone();
    c.config
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .remove(SUPERVISED_LABEL);
    assert!(read_container(&c).is_none());

    let mut c = base.clone();
    c.name = Some("/something-else".into());
    c.config
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .remove(APP_UUID_LABEL);
    let rb = read_container(&c).unwrap();
    assert_eq!(rb.app_uuid, UNKNOWN_APP);
    assert_eq!(rb.release, UNKNOWN_RELEASE);
    assert_eq!(rb.service_name, "web");
}

#[test]
fn container_states() {
    let a = full();
    let web = &a.releases[&REL.to_string()].services[&"web".to_string()];
    let no_env = BTreeMap::new();
    let (body, connect) =
        container_create_body(&ctx("web", &web.image, None, &no_env), &web.config);
    let read = |state: ContainerState| {
        let rb = read_container(&inspect(&body, &connect, "web_rel1", state)).unwrap();
        (
            rb.running,
            rb.container.status,
            rb.container.health,
            rb.container.started,
            rb.container.exit_code,
        )
    };
    let started = "2026-11-28T01:54:01Z".to_string();
    assert_eq!(
        read(ContainerState {
            status: Some(ContainerStateStatusEnum::RUNNING),
            running: Some(true),
            started_at: Some(started.clone()),
            health: Some(Health {
                status: Some(HealthStatusEnum::HEALTHY),
                ..Default::default()
            }),
            ..Default::default()
        }),
        (true, "running".into(), "healthy".into(), true, 0)
    );
    assert_eq!(
        read(ContainerState {
            status: Some(ContainerStateStatusEnum::EXITED),
            running: Some(false),
            started_at: Some(started.clone()),
            exit_code: Some(3),
            ..Default::default()
        }),
        (true, "stopped".into(), "none".into(), true, 3),
        "started once and exited: left to the restart policy"
    );
    assert_eq!(
        read(ContainerState {
            status: Some(ContainerStateStatusEnum::RESTARTING),
            restarting: Some(true),
            started_at: Some(started.clone()),
            ..Default::default()
        }),
        (true, "running".into(), "none".into(), true, 0)
    );
    assert_eq!(
        read(ContainerState {
            status: Some(ContainerStateStatusEnum::DEAD),
            dead: Some(true),
            started_at: Some(started),
            ..Default::default()
        }),
        (false, "dead".into(), "none".into(), true, 0)
    );
    assert_eq!(
        read(created()),
        (false, "created".into(), "none".into(), false, 0)
    );
}

#[test]
fn networks_and_volumes_round_trip() {
    let a = full();
    for (name, net) in a.networks.iter() {
        let body = network_create_body(APP, name, &net.config);
        assert_eq!(body.name, format!("{name}_{APP}"));
        // The engine picks subnets when none were given and may add options of its own.
        let mut ipam = body.ipam.clone().unwrap();
        if ipam.config.as_ref().is_none_or(Vec::is_empty) {
            ipam.config = Some(vec![EngineIpamConfig {
                subnet: Some("172.20.0.0/16".into()),
                gateway: Some("172.20.0.1".into()),
                ..Default::default()
            }]);
        }
        let mut options = body.options.clone().unwrap();
        options.insert("com.docker.network.enable_ipv4".into(), "true".into());
        let n = bollard::models::Network {
            name: Some(body.name.clone()),
            id: Some("n1".into()),
            driver: body.driver.clone(),
            enable_ipv6: body.enable_ipv6,
            internal: body.internal,
            config_only: body.config_only,
            ipam: Some(ipam),
            options: Some(options),
            labels: body.labels.clone(),
            ..Default::default()
        };
        assert_eq!(
            read_network(&n),
            Some((APP.to_string(), name.clone(), net.config.clone())),
            "{name}"
        );
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels[NETWORK_NAME_LABEL], *name);
        assert_eq!(labels[SUPERVISED_LABEL], "");
    }
    let net = &a.networks[&"back".to_string()];
    let labels = network_create_body(APP, "back", &net.config)
        .labels
        .unwrap();
    assert_eq!(labels[IPAM_CONFIG_LABEL], "[]");
    assert_eq!(labels[IPAM_OPTIONS_LABEL], "[]");

    let cfg = VolumeConfig {
        driver: Some("local".into()),
        driver_opts: BTreeMap::from([("type".to_string(), "tmpfs".to_string())]),
        labels: BTreeMap::from([("l".to_string(), "v".to_string())]),
    };
    let body = volume_create_body(APP, "data", &cfg);
    assert_eq!(body.name.as_deref(), Some("data_app1"));
    let v = bollard::models::Volume {
        name: body.name.clone().unwrap(),
        driver: body.driver.clone().unwrap(),
        mountpoint: "/var/lib/docker/volumes/data_app1/_data".into(),
        labels: body.labels.clone().unwrap(),
        options: body.driver_opts.clone().unwrap(),
        ..Default::default()
    };
    assert_eq!(
        read_volume(&v),
        Some((APP.to_string(), "data".to_string(), cfg))
    );
    let foreign = bollard::models::Volume {
        name: "x".into(),
        ..Default::default()
    };
    assert_eq!(read_volume(&foreign), None);
}

#[test]
fn lock_dir() {
    assert_eq!(
        update_lock_dir(Path::new("/tmp/run"), "app1"),
        PathBuf::from("/tmp/run/update-locks/app1")
    );
}

/// The config object of spec §4.4, for the example's app: same keys (except `cgroup`,
/// which upstream reports from the engine's default cgroup namespace mode and helios only
/// when set), same shapes.
#[test]
fn the_documented_config_shape() {
    let a = app(json!({"id": 12, "name": "demo", "releases": {"rel-1": {
        "networks": {"front": {}}, "volumes": {"data": {}},
        "services": {"web": {"id": 3, "image": "alpine:latest",
            "environment": {"FOO": "bar", "MY_KEY": "123"}, "labels": {"com.example": "x"},
            "composition": {"command": "sleep infinity",
                "networks": {"front": {"aliases": ["www"]}},
                "volumes": ["data:/data"], "ports": ["9000:9000"]}}}}}}));
    let web = &a.releases[&"rel-1".to_string()].services[&"web".to_string()];
    let doc = web.config.document();
    let documented = json!({
        "cgroup": "private",
        "command": ["sleep", "infinity"],
        "environment": {"FOO": "bar", "MY_KEY": 123},
        "labels": { "com.example": "x" },
        "restart_policy": { "name": "always" },
        "networks": { "front": { "aliases": ["www"] } },
        "volumes": [{ "type": "volume", "target": "/data", "source": "data" }],
        "ports": [ { "target": 9000, "protocol": "tcp", "published": 9000 } ]
    });
    let mut expected = documented.as_object().unwrap().clone();
    expected.remove("cgroup");
    assert_eq!(doc, serde_json::Value::Object(expected));
    let net = serde_json::to_value(&a.networks[&"front".to_string()].config).unwrap();
    assert_eq!(
        net,
        json!({ "driver": "bridge", "enable_ipv6": false, "internal": false,
                "ipam": { "driver": "default" } })
    );
    let vol = serde_json::to_value(&a.volumes[&"data".to_string()].config).unwrap();
    assert_eq!(vol, json!({ "driver": "local" }));
}
