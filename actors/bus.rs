//! The two state buses of the architecture diagram, plus the capability bus.
//!
//! Every bus is a `tokio::sync::watch` channel (the small ones a [`Latest`]): latest value
//! wins, a slow reader skips to the newest value, which is what every reader wants. Bodies
//! never travel on them: they carry parsed, bounded data.
//!
//! The buses, who writes them and who reads them:
//! - **TargetBus** ([`TargetBus`]): the target the device must reach, written by the API
//!   (`POST`/`DELETE /v3/device/apps/..`) and PollActor, read by SeekActor and HostActor.
//!   Persisted (flushed) before it is published; primed from the store at start, so Seek
//!   resumes an acknowledged target after a crash. Publishes are serialised, and
//!   [`TargetBus::publish_edit`] builds a target from the latest one with no publish in
//!   between (two concurrent local edits both land). A remote target carries its host part under
//!   the key `hostapp` (model/host.rs), which the planner ignores and HostActor seeks.
//! - **StateBus** ([`StateBus`]): the current state as the planner's `Device` model and as the
//!   `/v3/device` document, the apply status and its target sequence number, written by
//!   SeekActor; except `host` (host OS releases and the phase of the host part of the target),
//!   written by HostActor only. Read by the API, ReportActor, ProxyActor (the hand-off waits
//!   for `done`) and HostActor (the apps whose update locks it takes). Readers are woken only
//!   when the state really changed. Kept in the store too ([`StateBus::persist`], key
//!   [`CURRENT_KEY`]): written when it changes (at most once a second while an apply runs,
//!   flushed when it settles; an unchanged state writes nothing, so an idle device writes
//!   nothing) and read back at start ([`StateBus::restore`]), so the API and the first report
//!   answer at once with what was last known, marked `unconfirmed` until Seek reads the engine.
//! - **CapsBus** ([`CapsBus`]): capabilities, each part written by the actor that probes it:
//!   the engine (SeekActor, on connect and on loss); the system bus and its host services
//!   (HostActor: probed with backoff while anything is missing, then event-driven:
//!   `NameOwnerChanged` probes again and the connection closing is a loss); host OS kind and
//!   runtime dir (HostActor, at start); remote reachability (PollActor: any HTTP answer is
//!   reachable, transport errors, timeouts, 5xx and 429 are not); the legacy supervisor
//!   answering (the proxy's HTTP side, on every request it streams there). What is configured
//!   (remote mode, legacy supervisor, host OS version) is set once at start. Read by the API
//!   (`/v3/capabilities`, health) and HostActor (a waiting OS install looks again). Each change
//!   is one `capability=` line with `decision=found|lost|missing`.
//! - **RemoteBus** ([`RemoteBus`]): what the last remote target said besides the target, written
//!   by PollActor: the authorized apps (the only ones reported), rejected releases, a rejected
//!   document, and the device key once known. In front of a legacy supervisor also the `apps` it
//!   last reported (written by the proxy's HTTP side, pruned by ProxyActor to the apps of each
//!   new legacy copy). Read by ReportActor.
//! - **RoutingBus** (`proxy::RoutingBus`, proxy mode): the routing snapshot ProxyActor
//!   publishes (legacy and remote endpoints, the legacy supervisor's target copy), read by the
//!   API's proxy handler on every request.
//! - **ForeignApps** (`proxy::ForeignApps`, proxy mode): the apps SeekActor found on the engine
//!   but did not create, written after each engine read, read by PollActor's target split.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use log::{debug, info, warn};
use tokio::sync::watch;

use crate::model::device::Device;
use crate::model::{Capabilities, CurrentState, DeviceState, RemoteInfo, UpdateStatus};
use crate::ports::store::{Durability, Store, StoreError};
use crate::ErrorChain;

/// Store key of the last current state: `{"device": <the /v3/device document>, "model": <the
/// planner's Device>}`.
pub const CURRENT_KEY: &str = crate::ports::store::keys::CURRENT;
/// How long [`StateBus::persist`] lets a burst of changes (the steps of an apply) settle.
const PERSIST_DEBOUNCE: Duration = Duration::from_secs(1);

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
    /// Held from reading the base of an edit (or storing a target) to publishing it.
    writes: Arc<Mutex<()>>,
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
            writes: Arc::new(Mutex::new(())),
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
        let _writing = self.lock_writes();
        self.store_and_send(target, etag, source, force, cancel)
    }

    /// Builds the next target from the latest one (None before any) and publishes it, with no
    /// other publish in between: concurrent edits are applied one after the other, none lost.
    /// An error from `edit` or the store means nothing was published.
    pub fn publish_edit<E: From<StoreError>>(
        &self,
        source: TargetSource,
        force: bool,
        cancel: bool,
        edit: impl FnOnce(Option<&TargetRequest>) -> Result<serde_json::Value, E>,
    ) -> Result<Arc<TargetRequest>, E> {
        let _writing = self.lock_writes();
        let target = edit(self.latest().as_deref())?;
        Ok(self.store_and_send(target, None, source, force, cancel)?)
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic while holding it leaves nothing half-changed.
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store_and_send(
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

/// Current state: written by Seek, except `host` (HostActor).
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

    /// The current state an earlier process stored, as a document marked `unconfirmed` (its
    /// uuid replaced by `uuid`) and the planner's model. None when nothing is stored; a stored
    /// value that cannot be read is logged and ignored (the engine is read anyway).
    pub fn restore(store: &Store, uuid: &str) -> Option<(DeviceState, Device)> {
        let value = match store.get_json(CURRENT_KEY) {
            Ok(v) => v?,
            Err(e) => {
                warn!(error:% = ErrorChain(&e), decision = "ignore",
                    reason = "the engine is read before anything is decided"; "Stored current state not read");
                return None;
            }
        };
        let parsed = serde_json::from_value::<StoredCurrent>(value);
        match parsed {
            Ok(StoredCurrent { mut device, model }) => {
                device.uuid = uuid.to_string();
                device.unconfirmed = true;
                info!(apps = device.apps.len(), decision = "restore",
                    reason = "answer with the last known state until the engine is read"; "Stored current state restored");
                Some((device, model))
            }
            Err(e) => {
                warn!(error:% = e, decision = "ignore",
                    reason = "the engine is read before anything is decided"; "Stored current state not read");
                None
            }
        }
    }

    /// Keeps the store's copy of the current state up to date until the bus is dropped: after
    /// each change (and [`PERSIST_DEBOUNCE`] for the burst to settle) the state confirmed by
    /// the engine is written, lazily while an apply runs, flushed once it settled. The store
    /// writes nothing when the bytes are unchanged.
    pub async fn persist(self, store: Store) {
        let mut rx = self.subscribe();
        drop(self);
        while rx.changed().await.is_ok() {
            tokio::time::sleep(PERSIST_DEBOUNCE).await;
            let cur = rx.borrow_and_update().clone();
            if cur.device.unconfirmed {
                continue;
            }
            let stored = StoredCurrentRef {
                device: &cur.device,
                model: &cur.model,
            };
            let value = match serde_json::to_value(&stored) {
                Ok(v) => v,
                Err(e) => {
                    warn!(error:% = e, decision = "skip", reason = "not serializable";
                        "Current state not stored");
                    continue;
                }
            };
            let durability = match cur.status {
                UpdateStatus::ApplyingChanges => Durability::Lazy,
                _ => Durability::Flush,
            };
            match store.put_json(CURRENT_KEY, &value, durability) {
                Ok(()) => debug!(status:% = cur.status, decision = "store"; "Current state stored"),
                Err(e) => warn!(error:% = ErrorChain(&e), decision = "continue",
                    reason = "the engine is read at the next start anyway"; "Current state not stored"),
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct StoredCurrent {
    device: DeviceState,
    model: Device,
}

#[derive(serde::Serialize)]
struct StoredCurrentRef<'a> {
    device: &'a DeviceState,
    model: &'a Device,
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
