//! What effects need and how they run: the `Effects` resource, `StepError`, the step runner.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};

use crate::model::host::OsVersion;
use crate::ports::engine::{Engine, EngineError};
use crate::ports::locks::{LockError, Locks};
use crate::ports::store::{Store, StoreError};

/// What effects need: the engine, the store, the lock files, and the facts injected into
/// containers. Registered per apply (it carries that apply's `force`).
pub struct Effects {
    pub engine: Engine,
    pub store: Store,
    pub locks: Arc<Locks>,
    pub device_uuid: String,
    pub device_name: Option<String>,
    pub host_os: Option<OsVersion>,
    pub host_runtime_dir: PathBuf,
    /// Keys and address for containers with the supervisor-api feature.
    pub supervisor_api: crate::ports::apikeys::SupervisorApi,
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Timeout(String),
}

impl StepError {
    /// A fault of the environment rather than of the release (the engine or registry
    /// unreachable, a user update lock, a full disk): retried without counting toward
    /// `seek.max_attempts`.
    pub fn is_transient(&self) -> bool {
        match self {
            StepError::Engine(e) => e.is_transient(),
            StepError::Locked(_) => true,
            StepError::Store(e) => e.is_transient(),
            StepError::Timeout(_) => false,
        }
    }
}

/// Runs one step's effect with a start line, and an end or failure line with its duration.
pub(super) async fn step<T, F>(
    what: &'static str,
    app: &str,
    release: &str,
    object: &str,
    f: F,
) -> Result<T, StepError>
where
    F: std::future::Future<Output = Result<T, StepError>>,
{
    let start = Instant::now();
    info!(step = what, app:% = app, release:% = release, object:% = object, decision = "run"; "Step started");
    let r = f.await;
    let ms = start.elapsed().as_millis() as u64;
    match &r {
        Ok(_) => info!(step = what, app:% = app, release:% = release, object:% = object,
            duration_ms = ms, decision = "done"; "Step finished"),
        Err(e) => {
            warn!(step = what, app:% = app, release:% = release, object:% = object,
                duration_ms = ms, error:% = crate::ErrorChain(e), decision = "fail"; "Step failed");
            crate::metrics::METRICS.step_failed(what);
        }
    }
    r
}
