//! Engine port: connects to the container engine (Docker/balenaEngine API ≥ 1.41) with bollard,
//! negotiates the API version, and exposes the calls the actors need. Errors are classified.
use std::collections::HashMap;
use std::pin::Pin;

use bollard::Docker;
use futures::Stream;

/// Label carried by every object helios manages (spec/helios-api-v3.md §6.2).
pub const SUPERVISED_LABEL: &str = "io.balena.supervised";

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineSettings {
    Unix(String),
    Http(String),
}

impl EngineSettings {
    /// `unix:///path`, a bare `/path`, `tcp://host:port` or `http://host:port`.
    pub fn parse(v: &str) -> Result<EngineSettings, String> {
        let v = v.trim();
        if let Some(p) = v.strip_prefix("unix://") {
            if p.is_empty() {
                return Err("empty unix socket path".into());
            }
            Ok(EngineSettings::Unix(p.to_string()))
        } else if v.starts_with('/') {
            Ok(EngineSettings::Unix(v.to_string()))
        } else if let Some(rest) = v
            .strip_prefix("tcp://")
            .or_else(|| v.strip_prefix("http://"))
        {
            if rest.is_empty() {
                return Err("empty engine address".into());
            }
            Ok(EngineSettings::Http(format!("http://{rest}")))
        } else {
            Err(format!(
                "{v:?} is not unix:///path, tcp://host:port or http://host:port"
            ))
        }
    }
}

impl std::fmt::Display for EngineSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineSettings::Unix(p) => write!(f, "unix://{p}"),
            EngineSettings::Http(a) => f.write_str(a),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine unreachable at {address}")]
    Unreachable {
        address: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("pull of {image} failed: {message}")]
    Pull { image: String, message: String },
    #[error("engine call {call} failed")]
    Call {
        call: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
}

impl EngineError {
    /// Transient: worth retrying with backoff (the engine may come back).
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Unreachable { .. } | EngineError::Pull { .. } => true,
            EngineError::Call { source, .. } => !matches!(
                source,
                bollard::errors::Error::DockerResponseServerError { status_code, .. }
                    if (400..500).contains(status_code)
            ),
        }
    }
}

/// The engine as negotiated at connect time.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    pub version: String,
    pub api_version: String,
}

/// Requests wait this long for response headers (streams are not limited by it).
const REQUEST_TIMEOUT_SECS: u64 = 120;

impl Engine {
    /// Connects, negotiates the API version down to the engine's, and reads its version.
    pub async fn connect(settings: &EngineSettings) -> Result<Engine, EngineError> {
        let address = settings.to_string();
        let unreachable = |source| EngineError::Unreachable {
            address: address.clone(),
            source,
        };
        let docker = match settings {
            EngineSettings::Unix(p) => {
                Docker::connect_with_unix(p, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            EngineSettings::Http(a) => {
                Docker::connect_with_http(a, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        let v = docker.version().await.map_err(unreachable)?;
        Ok(Engine {
            docker,
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Container, network, volume and image events of the engine. The stream ends or yields an
    /// error when the engine goes away.
    pub fn events(
        &self,
    ) -> Pin<Box<dyn Stream<Item = Result<bollard::models::EventMessage, EngineError>> + Send>>
    {
        use futures::StreamExt;
        let filters = HashMap::from([(
            "type".to_string(),
            vec![
                "container".to_string(),
                "network".to_string(),
                "volume".to_string(),
                "image".to_string(),
            ],
        )]);
        let opts = bollard::query_parameters::EventsOptionsBuilder::default()
            .filters(&filters)
            .build();
        Box::pin(self.docker.events(Some(opts)).map(|r| {
            r.map_err(|source| EngineError::Call {
                call: "events",
                source,
            })
        }))
    }

    /// Names of the containers carrying the supervised label.
    pub async fn supervised_containers(&self) -> Result<Vec<String>, EngineError> {
        let filters = HashMap::from([("label".to_string(), vec![SUPERVISED_LABEL.to_string()])]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|source| EngineError::Call {
                call: "list containers",
                source,
            })?;
        Ok(list
            .into_iter()
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
            .map(|n| n.trim_start_matches('/').to_string())
            .collect())
    }
}

fn call(call: &'static str) -> impl FnOnce(bollard::errors::Error) -> EngineError {
    move |source| EngineError::Call { call, source }
}

/// True for an engine answer with this HTTP status.
pub fn is_status(e: &bollard::errors::Error, status: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == status)
}

/// `Ok` for "not found" (the object is already gone): removals are idempotent.
fn gone_ok(r: Result<(), bollard::errors::Error>, what: &'static str) -> Result<(), EngineError> {
    match r {
        Err(e) if is_status(&e, 404) => Ok(()),
        other => other.map_err(call(what)),
    }
}

/// What the engine holds that helios reads back into its state.
pub struct EngineObjects {
    pub containers: Vec<bollard::models::ContainerInspectResponse>,
    pub networks: Vec<bollard::models::Network>,
    pub volumes: Vec<bollard::models::Volume>,
    pub images: Vec<bollard::models::ImageSummary>,
    /// Image ids used by any container, supervised or not.
    pub images_in_use: std::collections::BTreeSet<String>,
}

impl Engine {
    /// Reads every supervised container (inspected), network and volume, and all images.
    pub async fn read_objects(&self) -> Result<EngineObjects, EngineError> {
        use bollard::query_parameters::{
            ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder,
            ListVolumesOptionsBuilder,
        };
        let all = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default().all(true).build(),
            ))
            .await
            .map_err(call("list containers"))?;
        let images_in_use = all.iter().filter_map(|c| c.image_id.clone()).collect();
        let mut containers = vec![];
        for c in all.iter().filter(|c| {
            c.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(SUPERVISED_LABEL))
        }) {
            let Some(id) = &c.id else { continue };
            match self.docker.inspect_container(id, None).await {
                Ok(i) => containers.push(i),
                // Removed between list and inspect.
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(call("inspect container")(e)),
            }
        }
        let label = HashMap::from([("label".to_string(), vec![SUPERVISED_LABEL.to_string()])]);
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&label)
                    .build(),
            ))
            .await
            .map_err(call("list networks"))?;
        let volumes = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default().filters(&label).build(),
            ))
            .await
            .map_err(call("list volumes"))?
            .volumes
            .unwrap_or_default();
        let images = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::default().build()))
            .await
            .map_err(call("list images"))?;
        Ok(EngineObjects {
            containers,
            networks,
            volumes,
            images,
            images_in_use,
        })
    }

    /// Pulls an image, reporting progress (0–100) as layers arrive; returns the image id.
    pub async fn pull(
        &self,
        image: &str,
        mut progress: impl FnMut(u8),
    ) -> Result<String, EngineError> {
        use futures::StreamExt;
        let opts = bollard::query_parameters::CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut layers: HashMap<String, (i64, i64)> = HashMap::new();
        let mut last = 0u8;
        let mut stream = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(call("pull image"))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::Pull {
                    image: image.to_string(),
                    message: e,
                });
            }
            if let (Some(id), Some(d)) = (info.id, info.progress_detail) {
                if let (Some(cur), Some(total)) = (d.current, d.total) {
                    if total > 0 {
                        layers.insert(id, (cur.min(total), total));
                    }
                }
            }
            let (cur, total) = layers
                .values()
                .fold((0i64, 0i64), |(c, t), (lc, lt)| (c + lc, t + lt));
            if total > 0 {
                let pct = ((cur * 99) / total) as u8;
                if pct > last {
                    last = pct;
                    progress(pct);
                }
            }
        }
        let id = self
            .image_id(image)
            .await?
            .ok_or_else(|| EngineError::Pull {
                image: image.to_string(),
                message: "image missing after the pull finished".into(),
            })?;
        progress(100);
        Ok(id)
    }

    /// The engine id of an image, if present.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(call("inspect image")(e)),
        }
    }

    pub async fn remove_image(&self, image: &str) -> Result<(), EngineError> {
        let r = self
            .docker
            .remove_image(
                image,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
            .map(|_| ());
        gone_ok(r, "remove image")
    }

    /// Creates a container (an existing one of the same name is an error) and connects it to
    /// the extra networks; returns its inspect data.
    pub async fn create_container(
        &self,
        name: &str,
        body: bollard::models::ContainerCreateBody,
        connect: Vec<(String, bollard::models::EndpointSettings)>,
    ) -> Result<bollard::models::ContainerInspectResponse, EngineError> {
        let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(name)
            .build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(call("create container"))?;
        for (net, endpoint) in connect {
            let req = bollard::models::NetworkConnectRequest {
                container: name.to_string(),
                endpoint_config: Some(endpoint),
            };
            self.docker
                .connect_network(&net, req)
                .await
                .map_err(call("connect network"))?;
        }
        self.inspect(name).await
    }

    pub async fn inspect(
        &self,
        name: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, EngineError> {
        self.docker
            .inspect_container(name, None)
            .await
            .map_err(call("inspect container"))
    }

    pub async fn start(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.start_container(name, None).await {
            // 304: already started.
            Err(e) if is_status(&e, 304) => Ok(()),
            other => other.map_err(call("start container")),
        }
    }

    pub async fn stop(&self, name: &str, timeout_s: i32) -> Result<(), EngineError> {
        let opts = bollard::query_parameters::StopContainerOptionsBuilder::default()
            .t(timeout_s)
            .build();
        match self.docker.stop_container(name, Some(opts)).await {
            Err(e) if is_status(&e, 304) => Ok(()),
            other => gone_ok(other, "stop container"),
        }
    }

    pub async fn remove_container(&self, name: &str) -> Result<(), EngineError> {
        let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
            .force(true)
            .build();
        gone_ok(
            self.docker.remove_container(name, Some(opts)).await,
            "remove container",
        )
    }

    pub async fn create_network(
        &self,
        body: bollard::models::NetworkCreateRequest,
    ) -> Result<(), EngineError> {
        match self.docker.create_network(body).await {
            Ok(_) => Ok(()),
            // Already there (a previous attempt got cut off after the engine created it).
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(call("create network")(e)),
        }
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        gone_ok(self.docker.remove_network(name).await, "remove network")
    }

    pub async fn create_volume(
        &self,
        body: bollard::models::VolumeCreateRequest,
    ) -> Result<(), EngineError> {
        self.docker
            .create_volume(body)
            .await
            .map(|_| ())
            .map_err(call("create volume"))
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        gone_ok(
            self.docker
                .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await,
            "remove volume",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_addresses() {
        assert_eq!(
            EngineSettings::parse("unix:///var/run/docker.sock"),
            Ok(EngineSettings::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            EngineSettings::parse("/run/balena-engine.sock"),
            Ok(EngineSettings::Unix("/run/balena-engine.sock".into()))
        );
        assert_eq!(
            EngineSettings::parse("tcp://10.0.0.1:2375"),
            Ok(EngineSettings::Http("http://10.0.0.1:2375".into()))
        );
        assert!(EngineSettings::parse("ftp://x").is_err());
        assert!(EngineSettings::parse("unix://").is_err());
    }
}
