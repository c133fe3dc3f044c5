//! The test engine and registry work as the agent's tests need them: an image pulled from the
//! local registry runs on a user-defined bridge network with a port published on 127.0.0.1.

use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, StartContainerOptions,
};
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::infra::{docker, empty_engine, infra};

/// GET `http://127.0.0.1:<port>/` until it answers (httpd needs a moment to start).
async fn http_get(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream
                .write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(response)) if response.starts_with("HTTP/1.") => return response,
            other if Instant::now() > deadline => {
                panic!("127.0.0.1:{port} did not answer over HTTP: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn image_a_pulled_from_the_registry_runs_on_a_user_network_with_a_published_port() {
    let Some(infra) = infra("engine::infra_smoke") else {
        return;
    };
    assert!(infra.image_a.starts_with(&format!("{}/", infra.registry)));
    assert!(infra.image_b.starts_with(&format!("{}/", infra.registry)));
    assert_ne!(infra.image_a, infra.image_b);
    assert!(infra.tmp.is_dir(), "HELIOS_IT_TMP {:?}", infra.tmp);

    let docker = docker(infra).await;
    empty_engine(&docker).await;

    // pull for real: the engine starts without images
    let progress: Vec<_> = docker
        .create_image(
            Some(
                CreateImageOptionsBuilder::default()
                    .from_image(&infra.image_a)
                    .build(),
            ),
            None,
            None,
        )
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("pulling {}: {e}", infra.image_a));
    assert!(!progress.is_empty());
    let image = docker
        .inspect_image(&infra.image_a)
        .await
        .expect("inspecting the pulled image");
    let config = image.config.expect("image config");
    assert_eq!(
        config.cmd,
        Some(vec!["sleep".to_string(), "infinity".to_string()])
    );

    let network = "helios-it-smoke";
    docker
        .create_network(NetworkCreateRequest {
            name: network.to_string(),
            driver: Some("bridge".to_string()),
            // no IPAM config: the subnet comes from the engine's pool, 198.18.0.0/15
            ..Default::default()
        })
        .await
        .expect("creating a user-defined bridge network");

    let body = ContainerCreateBody {
        image: Some(infra.image_a.clone()),
        cmd: Some(
            [
                "sh",
                "-c",
                "mkdir -p /www && cat /image-version > /www/index.html && exec httpd -f -p 8080 -h /www",
            ]
            .map(String::from)
            .to_vec(),
        ),
        exposed_ports: Some(vec!["8080/tcp".to_string()]),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            // no host port: the engine picks a free one on 127.0.0.1
            port_bindings: Some(
                [(
                    "8080/tcp".to_string(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_string()),
                        host_port: None,
                    }]),
                )]
                .into(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name("helios-it-smoke-web")
                    .build(),
            ),
            body,
        )
        .await
        .expect("creating the container");
    docker
        .start_container(&created.id, None::<StartContainerOptions>)
        .await
        .expect("starting the container");

    let inspect = docker
        .inspect_container(&created.id, None::<InspectContainerOptions>)
        .await
        .expect("inspecting the container");
    assert_eq!(inspect.state.and_then(|s| s.running), Some(true));
    let settings = inspect.network_settings.expect("network settings");
    let address = settings
        .networks
        .as_ref()
        .and_then(|n| n.get(network))
        .and_then(|e| e.ip_address.clone())
        .expect("an address on the user network");
    assert!(
        address.starts_with("198.1"),
        "address {address} outside 198.18.0.0/15"
    );
    let binding = settings
        .ports
        .as_ref()
        .and_then(|p| p.get("8080/tcp").cloned().flatten())
        .and_then(|b| b.into_iter().next())
        .expect("a binding for 8080/tcp");
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    let port: u16 = binding
        .host_port
        .expect("a host port")
        .parse()
        .expect("a numeric host port");

    let response = http_get(port).await;
    assert!(response.contains(" 200 "), "{response}");
    assert_eq!(response.rsplit("\r\n\r\n").next().map(str::trim), Some("1"));

    // remove everything again
    docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .expect("removing the container");
    docker
        .remove_network(network)
        .await
        .expect("removing the network");
    docker
        .remove_image(
            &infra.image_a,
            Some(RemoveImageOptionsBuilder::default().build()),
            None,
        )
        .await
        .expect("removing the image");
    empty_engine(&docker).await;
}
