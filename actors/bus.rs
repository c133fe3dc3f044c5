//! The two state buses of the architecture diagram, plus the capability bus.
//!
//! The target-state bus is written by PollActor and the API and read by SeekActor; publishing
//! persists the target in the store (flushed) before anyone sees it, so an acknowledged target
//! survives a crash. The current-state bus is written by SeekActor and read by the API and
//! ReportActor. Both are latest-value-wins (`tokio::sync::watch`): a slow reader skips to the
//! newest value, which is what every reader wants.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::info;
use tokio::sync::watch;

use crate::model::{Capabilities, CurrentState, RemoteInfo};
use crate::ports::store::{Store, StoreError};

/// Where a target came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    /// Read back from the store at start.
    Stored,
    /// Polled from the remote.
    Remote,
    /// Posted to the local API.
    Local,
}

impl std::fmt::Display for TargetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetSource::Stored => "stored",
            TargetSource::Remote => "remote",
            TargetSource::Local => "local",
        })
    }
}

/// One target on the bus, with what the requester asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRequest {
    /// Increases with every publish in this process.
    pub seq: u64,
    pub target: Arc<serde_json::Value>,
    pub source: TargetSource,
    /// Take user update locks by force.
    pub force: bool,
    /// Interrupt an apply in progress instead of queueing behind it.
    pub cancel: bool,
}

#[derive(Clone)]
pub struct TargetBus {
    tx: Arc<watch::Sender<Option<Arc<TargetRequest>>>>,
    store: Store,
    seq: Arc<AtomicU64>,
}

impl TargetBus {
    /// A bus primed with the target the store holds, if any (so Seek resumes it after a crash).
    pub fn new(store: Store) -> Result<TargetBus, StoreError> {
        let stored = store.get_target()?.map(|t| {
            info!(decision = "resume", reason = "target found in the store"; "Stored target loaded");
            Arc::new(TargetRequest {
                seq: 1,
                target: Arc::new(t.target),
                source: TargetSource::Stored,
                force: false,
                cancel: false,
            })
        });
        let seq = Arc::new(AtomicU64::new(if stored.is_some() { 1 } else { 0 }));
        let (tx, _) = watch::channel(stored);
        Ok(TargetBus {
            tx: Arc::new(tx),
            store,
            seq,
        })
    }

    /// Persists the target (flushed) and then publishes it. An error means nothing was published.
    pub fn publish(
        &self,
        target: serde_json::Value,
        etag: Option<&str>,
        source: TargetSource,
        force: bool,
        cancel: bool,
    ) -> Result<Arc<TargetRequest>, StoreError> {
        self.store.put_target(&target, etag)?;
        let req = Arc::new(TargetRequest {
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            target: Arc::new(target),
            source,
            force,
            cancel,
        });
        info!(seq = req.seq, source:% = source, force, cancel, decision = "publish"; "Target accepted");
        self.tx.send_replace(Some(req.clone()));
        Ok(req)
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<TargetRequest>>> {
        self.tx.subscribe()
    }

    pub fn latest(&self) -> Option<Arc<TargetRequest>> {
        self.tx.borrow().clone()
    }
}

/// Current state: written by Seek only.
#[derive(Clone)]
pub struct StateBus {
    tx: Arc<watch::Sender<Arc<CurrentState>>>,
}

impl StateBus {
    pub fn new(initial: CurrentState) -> StateBus {
        let (tx, _) = watch::channel(Arc::new(initial));
        StateBus { tx: Arc::new(tx) }
    }

    /// Publishes a change; readers are woken only when the state really changed.
    pub fn update(&self, f: impl FnOnce(&mut CurrentState)) {
        self.tx.send_if_modified(|cur| {
            let mut next = (**cur).clone();
            f(&mut next);
            if next == **cur {
                return false;
            }
            *cur = Arc::new(next);
            true
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<CurrentState>> {
        self.tx.subscribe()
    }

    pub fn get(&self) -> Arc<CurrentState> {
        self.tx.borrow().clone()
    }
}

/// A latest-value-wins bus of small shared facts; each part is written by the actor that owns it.
#[derive(Clone)]
pub struct Latest<T> {
    tx: Arc<watch::Sender<T>>,
}

impl<T: Clone + PartialEq> Latest<T> {
    pub fn new(initial: T) -> Latest<T> {
        let (tx, _) = watch::channel(initial);
        Latest { tx: Arc::new(tx) }
    }

    /// Applies `f`; returns whether anything changed (readers are woken only then).
    pub fn update(&self, f: impl FnOnce(&mut T)) -> bool {
        self.tx.send_if_modified(|c| {
            let before = c.clone();
            f(c);
            *c != before
        })
    }

    pub fn get(&self) -> T {
        self.tx.borrow().clone()
    }

    /// Reads a part without cloning the whole value (keep `f` short: writers wait).
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.tx.borrow())
    }

    pub fn subscribe(&self) -> watch::Receiver<T> {
        self.tx.subscribe()
    }
}

/// Capabilities, written by the actor that probes each (Seek: engine, Host: bus).
pub type CapsBus = Latest<Capabilities>;
/// What the last remote target said beyond the target (written by Poll).
pub type RemoteBus = Latest<RemoteInfo>;
