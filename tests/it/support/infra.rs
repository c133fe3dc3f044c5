//! The real test infrastructure, started by `scripts/test` (or `scripts/test --infra-only`, then
//! `. /tmp/helios-it.env`): a private dockerd, a local registry holding two busybox images, and a
//! private D-Bus bus. Tests find it through the `HELIOS_IT_*` variables:
//!
//! | variable                 | example                                              |
//! |--------------------------|------------------------------------------------------|
//! | `HELIOS_IT`              | `require`: missing infra is a failure, not a skip    |
//! | `HELIOS_IT_DOCKER_HOST`  | `unix:///tmp/helios-it.XXXXXX/docker.sock`           |
//! | `HELIOS_IT_REGISTRY`     | `127.0.0.1:40363`                                    |
//! | `HELIOS_IT_IMAGE_A`      | `127.0.0.1:40363/helios-test/busybox:1`              |
//! | `HELIOS_IT_IMAGE_B`      | `127.0.0.1:40363/helios-test/busybox:2`              |
//! | `HELIOS_IT_DBUS_ADDRESS` | `unix:path=/tmp/helios-it.XXXXXX/dbus.sock`          |
//! | `HELIOS_IT_TMP`          | `/tmp/helios-it.XXXXXX` (scratch space for tests)    |
//!
//! Both images are busybox rootfs imports with `CMD ["sleep","infinity"]`; `/image-version` holds
//! `1` (image A) or `2` (image B). They are only in the registry: the engine starts empty and a
//! test pulls what it needs. The engine has no default bridge; user-defined networks get subnets
//! from 198.18.0.0/15 and published ports answer on 127.0.0.1 (through docker-proxy). The engine
//! adds an "IPv4 forwarding is disabled" warning to container creations: expected, ignore it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptions,
    ListVolumesOptions, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    RemoveVolumeOptionsBuilder,
};
use bollard::Docker;

/// Where the test infrastructure is.
#[derive(Debug, Clone)]
pub struct Infra {
    /// The test engine, `unix://…/docker.sock`. Never the system's docker.
    pub docker_host: String,
    /// The local registry, `127.0.0.1:<port>` (plain HTTP; the engine trusts 127.0.0.0/8).
    pub registry: String,
    /// `<registry>/helios-test/busybox:1`, `/image-version` = `1`.
    pub image_a: String,
    /// `<registry>/helios-test/busybox:2`, `/image-version` = `2`.
    pub image_b: String,
    /// The private bus, `unix:path=…/dbus.sock`; anyone may own any name on it.
    pub dbus_address: String,
    /// Scratch directory of this run (removed when the infra stops).
    pub tmp: PathBuf,
}

const HELP: &str = "run the tests with `bash scripts/test`, or start the infra with \
                    `bash scripts/test --infra-only` and `. /tmp/helios-it.env` in this shell";

static INFRA: OnceLock<Result<Infra, String>> = OnceLock::new();

fn var(name: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(format!("{name} is not set")),
    }
}

fn load() -> Result<Infra, String> {
    let infra = Infra {
        docker_host: var("HELIOS_IT_DOCKER_HOST")?,
        registry: var("HELIOS_IT_REGISTRY")?,
        image_a: var("HELIOS_IT_IMAGE_A")?,
        image_b: var("HELIOS_IT_IMAGE_B")?,
        dbus_address: var("HELIOS_IT_DBUS_ADDRESS")?,
        tmp: PathBuf::from(var("HELIOS_IT_TMP")?),
    };
    // a stale /tmp/helios-it.env names sockets that are gone
    let docker_socket = infra.docker_host.trim_start_matches("unix://");
    if !Path::new(docker_socket).exists() {
        return Err(format!(
            "HELIOS_IT_DOCKER_HOST={} names a socket that does not exist",
            infra.docker_host
        ));
    }
    if let Some(bus_socket) = infra.dbus_address.strip_prefix("unix:path=") {
        let bus_socket = bus_socket.split(',').next().unwrap_or(bus_socket);
        if !Path::new(bus_socket).exists() {
            return Err(format!(
                "HELIOS_IT_DBUS_ADDRESS={} names a socket that does not exist",
                infra.dbus_address
            ));
        }
    }
    Ok(infra)
}

/// The test infrastructure, for the test `what`.
///
/// `None` when the infra is not there and `HELIOS_IT` is not `require`: this function then prints
/// `skipped: <what>: <why>` itself, and the caller just returns. Panics, naming the missing
/// variable, when `HELIOS_IT=require` (as `scripts/test` sets it).
pub fn infra(what: &str) -> Option<&'static Infra> {
    match INFRA.get_or_init(load) {
        Ok(infra) => Some(infra),
        Err(why) if std::env::var("HELIOS_IT").as_deref() == Ok("require") => {
            panic!(
                "{what}: HELIOS_IT=require but the test infrastructure is missing: {why} ({HELP})"
            )
        }
        Err(why) => {
            eprintln!("skipped: {what}: {why} ({HELP})");
            None
        }
    }
}

/// A bollard client for the test engine, with the API version negotiated down to the engine's.
pub async fn docker(infra: &Infra) -> Docker {
    let docker = Docker::connect_with_unix(&infra.docker_host, 120, bollard::API_DEFAULT_VERSION)
        .unwrap_or_else(|e| panic!("connecting to the test engine {}: {e}", infra.docker_host));
    docker.negotiate_version().await.unwrap_or_else(|e| {
        panic!(
            "negotiating the API version with {}: {e}",
            infra.docker_host
        )
    })
}

/// Networks every engine has and that cannot be removed.
const BUILTIN_NETWORKS: [&str; 3] = ["bridge", "host", "none"];

/// Not found, or already being removed: someone else got there first.
fn is_gone(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }
    )
}

/// Remove every container (forced, with its anonymous volumes), every volume, every
/// non-builtin network and every image from the test engine, so that a test starts from an empty
/// engine. Panics if the engine cannot be emptied.
pub async fn empty_engine(docker: &Docker) {
    let mut left = Vec::new();
    for round in 0..20 {
        left.clear();

        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default().all(true).build(),
            ))
            .await
            .expect("listing containers");
        for id in containers.into_iter().filter_map(|c| c.id) {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            if let Err(e) = docker.remove_container(&id, Some(options)).await {
                if !is_gone(&e) {
                    left.push(format!("container {id}: {e}"));
                }
            }
        }

        let networks = docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .expect("listing networks");
        for network in networks {
            let name = network.name.unwrap_or_default();
            if BUILTIN_NETWORKS.contains(&name.as_str()) {
                continue;
            }
            let id = network.id.unwrap_or(name);
            if let Err(e) = docker.remove_network(&id).await {
                if !is_gone(&e) {
                    left.push(format!("network {id}: {e}"));
                }
            }
        }

        let volumes = docker
            .list_volumes(None::<ListVolumesOptions>)
            .await
            .expect("listing volumes");
        for volume in volumes.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptionsBuilder::default().force(true).build();
            if let Err(e) = docker.remove_volume(&volume.name, Some(options)).await {
                if !is_gone(&e) {
                    left.push(format!("volume {}: {e}", volume.name));
                }
            }
        }

        let images = docker
            .list_images(Some(ListImagesOptionsBuilder::default().all(true).build()))
            .await
            .expect("listing images");
        for image in images {
            let options = RemoveImageOptionsBuilder::default().force(true).build();
            if let Err(e) = docker.remove_image(&image.id, Some(options), None).await {
                if !is_gone(&e) {
                    left.push(format!("image {}: {e}", image.id));
                }
            }
        }

        if left.is_empty() && engine_is_empty(docker).await {
            return;
        }
        // a container still stopping, a network still referenced by one: try again shortly
        tokio::time::sleep(std::time::Duration::from_millis(100 * (round + 1).min(5))).await;
    }
    panic!("could not empty the test engine: {left:?}");
}

async fn engine_is_empty(docker: &Docker) -> bool {
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default().all(true).build(),
        ))
        .await
        .expect("listing containers");
    let networks = docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .expect("listing networks");
    let volumes = docker
        .list_volumes(None::<ListVolumesOptions>)
        .await
        .expect("listing volumes");
    let images = docker
        .list_images(Some(ListImagesOptionsBuilder::default().all(true).build()))
        .await
        .expect("listing images");
    containers.is_empty()
        && networks
            .iter()
            .all(|n| BUILTIN_NETWORKS.contains(&n.name.as_deref().unwrap_or_default()))
        && volumes.volumes.unwrap_or_default().is_empty()
        && images.is_empty()
}

/// Whether the container exists and runs.
pub async fn running(d: &Docker, name: &str) -> bool {
    d.inspect_container(
        name,
        None::<bollard::query_parameters::InspectContainerOptions>,
    )
    .await
    .ok()
    .and_then(|c| c.state?.running)
        == Some(true)
}

/// Runs `cmd` in a running container and returns what it printed (stdout and stderr).
pub async fn exec(d: &Docker, container: &str, cmd: &[&str]) -> String {
    use futures::StreamExt;
    let exec = d
        .create_exec(
            container,
            bollard::models::ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec in {container}: {e}"));
    let mut out = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        d.start_exec(&exec.id, None).await.expect("exec starts")
    {
        while let Some(Ok(chunk)) = output.next().await {
            out.push_str(&chunk.to_string());
        }
    }
    out
}

/// A dbus-daemon of the test's own (same policy as the shared test bus), for tests that stop
/// and restart the bus under a running agent. Killed on drop.
pub struct PrivateBus {
    pub address: String,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateBus {
    pub fn start(dir: &Path) -> PrivateBus {
        let mut bus = PrivateBus {
            address: format!("unix:path={}", dir.join("bus.sock").display()),
            dir: dir.to_path_buf(),
            child: None,
        };
        bus.restart();
        bus
    }

    /// Starts the daemon (again) on the same address and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let sock = self.dir.join("bus.sock");
        let _ = std::fs::remove_file(&sock);
        let conf = self.dir.join("dbus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
                sock.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--nosyslog"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dbus-daemon starts (scripts/test installs it)");
        self.child = Some(child);
        let up = crate::support::agent::eventually(std::time::Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).ok()
        });
        assert!(
            up.is_some(),
            "the private bus listens at {}",
            sock.display()
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds an image the way `scripts/test` does (`docker import` of a busybox-static rootfs,
/// here through the engine API) with `files` (path, contents, mode) added, pushes it as
/// `<registry>/<name>` and removes it from the engine again, so a test pulls it for real.
/// Returns the reference.
pub async fn push_image_with(
    infra: &Infra,
    d: &Docker,
    name: &str,
    files: &[(&str, &[u8], u32)],
) -> String {
    use futures::StreamExt;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (scripts/test installs it)");
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    };
    add("bin/busybox", &std::fs::read(busybox).unwrap(), 0o755);
    for (path, data, mode) in files {
        add(path.trim_start_matches('/'), data, *mode);
    }
    let body = tar.into_inner().unwrap();
    let reference = format!("{}/{name}", infra.registry);
    let (repo, tag) = reference.rsplit_once(':').expect("name has a tag");
    let opts = bollard::query_parameters::CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .build();
    let mut s = d.create_image(Some(opts), Some(bollard::body_full(body.into())), None);
    while let Some(r) = s.next().await {
        r.unwrap_or_else(|e| panic!("importing {reference}: {e}"));
    }
    let opts = bollard::query_parameters::PushImageOptionsBuilder::default()
        .tag(tag)
        .build();
    let creds = bollard::auth::DockerCredentials::default();
    let mut s = d.push_image(repo, Some(opts), Some(creds));
    while let Some(r) = s.next().await {
        let info = r.unwrap_or_else(|e| panic!("pushing {reference}: {e}"));
        assert!(info.error_detail.is_none(), "pushing {reference}: {info:?}");
    }
    let opts = RemoveImageOptionsBuilder::default().force(true).build();
    d.remove_image(&reference, Some(opts), None)
        .await
        .unwrap_or_else(|e| panic!("removing {reference} after the push: {e}"));
    reference
}
