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
            EngineError::Unreachable { .. } => true,
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
