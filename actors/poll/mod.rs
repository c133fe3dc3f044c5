//! PollActor talks to the remote: registration, then polling the target state.
//! Owns: the remote client, the device key, the ETag and the poll schedule (interval + jitter,
//! error backoff from the minimum interval doubling to the interval, `Retry-After` capped at
//! the interval, a device config's interval capped at a day: limits.rs).
//! Handles: TriggerPoll (`POST /v1/update`).
//! Sends: targets on the TargetBus (persisted with their ETag), RemoteInfo on the RemoteBus,
//! Reapply (304 after a trigger) and MarkRejected (unusable document) to Seek.
//! Restart: rebuilds the client, reloads the ETag from the store and polls at once; idle when
//! the device is unmanaged. Registers first when only a provisioning key is known.
//!
//! Polling (spec/helios-api-v3.md §5.1): `GET /device/v3/<uuid>/state` with `If-None-Match`.
//! The ETag is stored with the target it belongs to (the store's target envelope), so a
//! restart still sends it. A 200 is converted by model/cloud.rs: a document it rejects whole
//! changes nothing (status `rejected` through `MarkRejected`, reason on the RemoteBus); an
//! app whose release fails validation keeps its previous target (or its current state) and is
//! reported with that release `rejected`. A converted target is published on the TargetBus
//! with `cancel` (a newer remote target interrupts an apply in progress) unless a
//! `/v1/update` asked otherwise; an identical target under a new ETag is only re-stored, not
//! re-applied. A 304 after a `/v1/update` re-applies the current target (`Reapply`) and, in
//! proxy mode, asks the legacy supervisor to apply again. `BALENA_SUPERVISOR_POLL_INTERVAL`
//! in the device config sets the interval (never below the minimum).
//!
//! Failures: 401 and 404 (the remote does not know this device or key) wait for the next
//! scheduled poll; other failures, and a 304 without a cached ETag, back off from
//! `poll_min_interval` doubling to the poll interval, or by `Retry-After`. Requests are at
//! least `poll_min_interval` apart; a trigger that comes too soon or while a poll is in flight
//! runs as soon as allowed. Every outcome is one `/metrics` count and sets the `remote`
//! capability's reachability.
//!
//! In proxy mode each 200 is first split between helios and the legacy supervisor
//! (proxy/split.rs, waiting in 1 s steps until Seek has read the engine once), helios's part
//! is converted without its host part (the host OS is the legacy supervisor's: no `hostapp`
//! key at all, so HostActor leaves the OS alone as for a local target, where `null` would end
//! every apply `aborted`), and the legacy part goes to ProxyActor as a `HandOff`.
//!
//! Converting a document (untrusted input) runs under an unfinished-work marker
//! (`<runtime dir>/helios-converting`, keyed by the document's digest): a document whose
//! conversion killed [`REPEATED`] processes is given up and rejected, not converted again.
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle, WrapFuture,
};
use log::{debug, error, info, warn};

use crate::bus::{RemoteBus, StateBus, TargetBus, TargetSource};
use crate::metrics::{PollResult, METRICS};
use crate::model::cloud as cloud_model;
use crate::model::device::DeviceTarget;
use crate::model::host::HOSTAPP_KEY;
use crate::ports::cloud::{Cloud, CloudError, CloudSettings, Fetched};
use crate::ports::store::Store;
use crate::ports::unfinished::{self, Unfinished, REPEATED};
use crate::seek::{MarkRejected, Reapply};
use crate::supervise::{Restarts, Resumable};
use crate::{ErrorChain, Secret};

mod limits;
pub mod register;

/// How to reach the remote (spec/helios-api-v3.md §2.1, §5).
#[derive(Clone, PartialEq)]
pub struct RemoteSettings {
    pub endpoint: String,
    /// None until registered.
    pub api_key: Option<String>,
    pub uuid: String,
    pub request_timeout: Duration,
    pub poll_interval: Duration,
    pub poll_min_interval: Duration,
    pub poll_max_jitter: Duration,
}

impl RemoteSettings {
    /// The cloud client for this remote (built on the actor's thread: awc is `!Send`).
    pub fn client(&self, extra_ca: Option<std::path::PathBuf>) -> Result<Cloud, CloudError> {
        Cloud::new(&CloudSettings {
            endpoint: self.endpoint.clone(),
            request_timeout: self.request_timeout,
            extra_ca,
            // Never `Supervisor/`: the legacy proxy routes on that prefix.
            user_agent: format!("helios/{}", env!("CARGO_PKG_VERSION")),
        })
    }
}

impl std::fmt::Debug for RemoteSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSettings")
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("uuid", &self.uuid)
            .field("request_timeout", &self.request_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("poll_min_interval", &self.poll_min_interval)
            .field("poll_max_jitter", &self.poll_max_jitter)
            .finish()
    }
}

/// Registration settings, while the device is not registered yet.
#[derive(Clone, PartialEq)]
pub struct Provisioning {
    pub key: crate::Secret,
    pub fleet: u64,
    pub device_type: String,
    pub os_version: Option<String>,
    pub supervisor_version: Option<String>,
}

impl std::fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioning")
            .field("fleet", &self.fleet)
            .field("device_type", &self.device_type)
            .finish()
    }
}

/// Persists a new identity (src/ writes the config file); an error is logged and retried.
pub type IdentitySink = Arc<dyn Fn(&register::Identity) -> Result<(), String> + Send + Sync>;

/// Everything PollActor needs.
#[derive(Clone)]
pub struct PollDeps {
    pub remote: Option<RemoteSettings>,
    pub provisioning: Option<Provisioning>,
    pub extra_ca: Option<std::path::PathBuf>,
    /// Largest target document accepted.
    pub max_target_bytes: usize,
    pub targets: TargetBus,
    pub state: StateBus,
    pub remote_bus: RemoteBus,
    pub caps: crate::bus::CapsBus,
    pub store: Store,
    pub reapply: Recipient<Reapply>,
    pub rejected: Recipient<MarkRejected>,
    pub identity: IdentitySink,
    /// In front of a legacy supervisor: each target is split between helios and it.
    pub proxy: Option<crate::proxy::ProxyHandle>,
    /// Where the conversion marker lives (tmpfs: an idle device writes nothing).
    pub runtime_dir: std::path::PathBuf,
}

/// The unfinished-work marker of converting a fetched document, in the runtime dir.
pub const CONVERTING_MARKER: &str = "helios-converting";

/// Sent by the API (`POST /v1/update`): poll now, and re-apply if nothing changed.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct TriggerPoll {
    pub force: bool,
    pub cancel: bool,
}

pub struct PollActor {
    deps: PollDeps,
    restarts: Restarts,
    cloud: Option<Cloud>,
    api_key: Option<Secret>,
    etag: Option<String>,
    interval: Duration,
    next: Option<SpawnHandle>,
    in_flight: bool,
    last_request: Option<Instant>,
    failures: u32,
    /// A trigger that arrived while a poll was in flight or too soon.
    pending: Option<TriggerPoll>,
}

impl PollActor {
    pub fn new(deps: PollDeps, restarts: Restarts) -> Self {
        let api_key = deps
            .remote
            .as_ref()
            .and_then(|r| r.api_key.clone())
            .map(Secret::new);
        let interval = deps
            .remote
            .as_ref()
            .map(|r| r.poll_interval)
            .unwrap_or_default();
        PollActor {
            deps,
            restarts,
            cloud: None,
            api_key,
            etag: None,
            interval,
            next: None,
            in_flight: false,
            last_request: None,
            failures: 0,
            pending: None,
        }
    }

    fn remote(&self) -> &RemoteSettings {
        self.deps.remote.as_ref().expect("only called when managed")
    }

    fn schedule(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(h) = self.next.take() {
            ctx.cancel_future(h);
        }
        self.next = Some(ctx.run_later(delay, |a, ctx| {
            a.next = None;
            a.poll(None, ctx);
        }));
    }

    /// Error backoff: from the minimum interval, doubling, capped at the poll interval
    /// (spec/helios-api-v3.md §5.1).
    fn backoff(&mut self) -> Duration {
        let r = self.remote();
        let exp = self.failures.min(20);
        let d = r
            .poll_min_interval
            .saturating_mul(1u32 << exp)
            .min(self.interval.max(r.poll_min_interval));
        self.failures += 1;
        d
    }

    /// The longest a remote's `Retry-After` makes the device wait: the poll interval.
    fn retry_cap(&self) -> Duration {
        self.interval.max(self.remote().poll_min_interval)
    }

    fn register(&mut self, ctx: &mut Context<Self>) {
        let (Some(cloud), Some(p)) = (self.cloud.clone(), self.deps.provisioning.clone()) else {
            return;
        };
        let params = register::RegisterParams {
            provisioning_key: p.key.expose().to_string(),
            fleet: p.fleet,
            device_type: p.device_type.clone(),
            uuid: self.remote().uuid.clone(),
            api_key: None,
            supervisor_version: p.supervisor_version.clone(),
            os_version: p.os_version.clone(),
            os_variant: None,
            mac_address: None,
        };
        info!(actor = "poll", uuid:% = params.uuid, fleet = p.fleet, device_type:% = p.device_type,
            decision = "register", reason = "not registered yet"; "Registering the device");
        ctx.spawn(
            async move { register::register(&cloud, &params).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(identity) => {
                        if let Err(e) = (act.deps.identity)(&identity) {
                            warn!(error:% = e, decision = "continue",
                                reason = "identity not saved; registration repeats after a restart"; "Identity not persisted");
                        }
                        info!(actor = "poll", uuid:% = identity.uuid, outcome:? = identity.outcome,
                            decision = "registered"; "Device registered");
                        act.api_key = Some(Secret::new(identity.api_key.clone()));
                        act.deps.provisioning = None;
                        act.failures = 0;
                        let key = act.api_key.clone();
                        act.deps.remote_bus.update(|r| r.api_key = key);
                        act.poll(None, ctx);
                    }
                    Err(e) => {
                        let delay = limits::retry_after(e.retry_after(), act.retry_cap(), "registration")
                            .unwrap_or_else(|| act.backoff());
                        warn!(actor = "poll", error:% = ErrorChain(&e), delay_ms = delay.as_millis() as u64,
                            transient = e.is_transient(), decision = "retry"; "Registration failed");
                        ctx.run_later(delay, |a, ctx| a.register(ctx));
                    }
                }),
        );
    }

    /// Fetches the target now (or as soon as the minimum interval allows).
    fn poll(&mut self, trigger: Option<TriggerPoll>, ctx: &mut Context<Self>) {
        let Some(key) = self.api_key.clone() else {
            return;
        };
        let Some(cloud) = self.cloud.clone() else {
            return;
        };
        if self.in_flight {
            if trigger.is_some() {
                self.pending = trigger;
            }
            return;
        }
        let min = self.remote().poll_min_interval;
        if let Some(wait) = self
            .last_request
            .map(|t| min.saturating_sub(t.elapsed()))
            .filter(|w| !w.is_zero())
        {
            debug!(actor = "poll", delay_ms = wait.as_millis() as u64, decision = "wait",
                reason = "minimum interval between requests"; "Poll deferred");
            if trigger.is_some() {
                self.pending = trigger;
            }
            self.schedule(wait, ctx);
            return;
        }
        let trigger = trigger.or(self.pending.take());
        if let Some(h) = self.next.take() {
            ctx.cancel_future(h);
        }
        self.in_flight = true;
        self.last_request = Some(Instant::now());
        let uuid = self.remote().uuid.clone();
        let etag = self.etag.clone();
        let max = self.deps.max_target_bytes;
        ctx.spawn(
            async move {
                cloud
                    .fetch_target(&uuid, key.expose(), etag.as_deref(), max)
                    .await
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.in_flight = false;
                act.fetched(res, trigger, ctx);
                if let Some(t) = act.pending.take() {
                    act.poll(Some(t), ctx);
                }
            }),
        );
    }

    fn fetched(
        &mut self,
        res: Result<Fetched, CloudError>,
        trigger: Option<TriggerPoll>,
        ctx: &mut Context<Self>,
    ) {
        let next = self.interval + crate::jitter(self.remote().poll_max_jitter);
        // Any HTTP answer means the remote is reachable; only transport errors, timeouts and
        // 5xx/429 mean it is not.
        let reachable = match &res {
            Ok(_) => true,
            Err(e) => e.status().is_some_and(|s| s < 500 && s != 429),
        };
        if self
            .deps
            .caps
            .update(|c| c.remote_reachable = Some(reachable))
        {
            let endpoint = self.remote().endpoint.to_string();
            match (reachable, &res) {
                (true, _) => info!(capability = "remote", endpoint:% = endpoint, reachable = true,
                    decision = "found"; "Capability found"),
                (false, Err(e)) => {
                    warn!(capability = "remote", endpoint:% = endpoint, reachable = false,
                    error:% = ErrorChain(e), decision = "lost"; "Capability lost")
                }
                (false, Ok(_)) => {}
            }
        }
        match res {
            Ok(Fetched::New { body, etag }) => {
                if self.failures > 0 {
                    info!(actor = "poll", attempts = self.failures, decision = "recovered"; "Remote reachable again");
                }
                self.failures = 0;
                self.new_target(body, etag, trigger, ctx);
                let next = self.interval + crate::jitter(self.remote().poll_max_jitter);
                self.schedule(next, ctx);
            }
            Ok(Fetched::NotModified) if self.etag.is_none() => {
                let delay = self.backoff();
                warn!(actor = "poll", delay_ms = delay.as_millis() as u64, decision = "retry",
                    reason = "304 without a cached ETag"; "Target fetch failed");
                METRICS.poll(PollResult::Error);
                self.schedule(delay, ctx);
            }
            Ok(Fetched::NotModified) => {
                if self.failures > 0 {
                    info!(actor = "poll", attempts = self.failures, decision = "recovered"; "Remote reachable again");
                }
                self.failures = 0;
                debug!(actor = "poll", decision = "unchanged"; "Target not modified");
                METRICS.poll(PollResult::Unchanged);
                if let Some(t) = trigger {
                    self.deps.reapply.do_send(Reapply {
                        force: t.force,
                        cancel: t.cancel,
                        reason: "POST /v1/update: target unchanged",
                    });
                    // In front of a legacy supervisor, it is asked to apply again too.
                    if let Some(p) = &self.deps.proxy {
                        p.hand_off.do_send(crate::proxy::HandOff {
                            seq: None,
                            legacy: None,
                            force: t.force,
                            cancel: t.cancel,
                        });
                    }
                }
                self.schedule(next, ctx);
            }
            Err(e) if matches!(e.status(), Some(401) | Some(404)) => {
                METRICS.poll(PollResult::Error);
                error!(actor = "poll", status = e.status().unwrap_or(0), error:% = ErrorChain(&e),
                    delay_ms = next.as_millis() as u64, decision = "wait",
                    reason = "the remote does not know this device or key; next scheduled poll"; "Target fetch refused");
                self.schedule(next, ctx);
            }
            Err(e) => {
                METRICS.poll(PollResult::Error);
                let delay = limits::retry_after(e.retry_after(), self.retry_cap(), "poll")
                    .unwrap_or_else(|| self.backoff());
                let (attempt, delay_ms) = (self.failures, delay.as_millis() as u64);
                if attempt <= 1 {
                    warn!(actor = "poll", attempt, delay_ms, error:% = ErrorChain(&e), decision = "retry"; "Target fetch failed");
                } else {
                    debug!(actor = "poll", attempt, delay_ms, error:% = ErrorChain(&e), decision = "retry"; "Target fetch failed");
                }
                self.schedule(delay, ctx);
            }
        }
    }

    /// The whole document is unusable: reported rejected, nothing changes; its ETag is kept
    /// so the same document is not fetched again.
    fn reject_document(&mut self, reason: String, etag: Option<String>) {
        METRICS.poll(PollResult::Rejected);
        self.etag = etag;
        self.deps
            .remote_bus
            .update(|r| r.document_rejected = Some(reason.clone()));
        self.deps.rejected.do_send(MarkRejected { reason });
    }

    /// Starts the conversion of `body` under its marker; None when earlier processes died
    /// converting it [`REPEATED`] times (it is rejected instead). The marker is Some unless
    /// it could not be written.
    fn begin_conversion(
        &mut self,
        body: &serde_json::Value,
        etag: &Option<String>,
    ) -> Option<Option<Unfinished>> {
        let path = self.deps.runtime_dir.join(CONVERTING_MARKER);
        let key = format!("{:016x}", unfinished::digest(body));
        let died = unfinished::earlier(&path, &key);
        if died >= REPEATED {
            let error = format!("{died} earlier processes died while converting this document");
            error!(actor = "poll", digest:% = key, error:% = error, decision = "give_up",
                reason = "converting it crashed helios repeatedly; what runs stays, a new document is converted";
                "Remote target given up");
            self.reject_document(error, etag.clone());
            return None;
        }
        match Unfinished::begin(&path, &key) {
            Ok((m, _)) => Some(Some(m)),
            Err(e) => {
                warn!(actor = "poll", path:% = path.display(), error:% = e, decision = "continue",
                    reason = "cannot write the conversion marker: a document whose conversion crashes helios is not detected";
                    "Conversion unguarded");
                Some(None)
            }
        }
    }

    /// A 200: validate and convert (under the conversion marker), then publish (or reject).
    fn new_target(
        &mut self,
        body: serde_json::Value,
        etag: Option<String>,
        trigger: Option<TriggerPoll>,
        ctx: &mut Context<Self>,
    ) {
        let Some(marker) = self.begin_conversion(&body, &etag) else {
            return;
        };
        let (body, legacy) = match &self.deps.proxy {
            None => (body, None),
            Some(p) => match p.split(&body) {
                Some(s) => (s.helios, Some((p.clone(), s.legacy))),
                None => {
                    debug!(actor = "poll", delay_ms = 1000u64, decision = "wait",
                        reason = "the engine was not read yet: apps of the legacy supervisor unknown"; "Target split deferred");
                    ctx.run_later(Duration::from_secs(1), move |a, ctx| {
                        a.new_target(body, etag, trigger, ctx)
                    });
                    return;
                }
            },
        };
        let uuid = self.remote().uuid.clone();
        let latest = self.deps.targets.latest();
        let previous: Option<DeviceTarget> = latest
            .as_ref()
            .and_then(|t| serde_json::from_value((*t.target).clone()).ok());
        let previous_host = latest.and_then(|t| t.target.get(HOSTAPP_KEY).cloned());
        let current = self.deps.state.get().model.clone();
        let keep = |app: &str| -> Option<crate::model::device::AppTarget> {
            previous
                .as_ref()
                .and_then(|p| p.apps.get(app).cloned())
                .or_else(|| {
                    current
                        .apps
                        .get(app)
                        .and_then(|a| serde_json::to_value(a).ok())
                        .and_then(|v| serde_json::from_value(v).ok())
                })
        };
        let converted = cloud_model::convert(&body, &uuid, keep);
        drop(marker);
        match converted {
            Err(e) => {
                warn!(actor = "poll", reason:% = e, decision = "reject"; "Remote target rejected");
                self.reject_document(e.to_string(), etag);
            }
            Ok(conv) => {
                for (app, (release, reason)) in &conv.rejected {
                    warn!(actor = "poll", app:% = app, release:% = release, reason:% = reason,
                        decision = "reject"; "Target release rejected");
                }
                if let Some(i) = conv.poll_interval {
                    let i = limits::interval(i, self.remote().poll_min_interval);
                    if i != self.interval {
                        info!(actor = "poll", interval_ms = i.as_millis() as u64, decision = "configure",
                            reason = "poll interval from the device config"; "Poll interval changed");
                        self.interval = i;
                    }
                }
                self.deps.remote_bus.update(|r| {
                    r.authorized = conv.authorized.clone();
                    r.rejected = conv.rejected.clone();
                    r.document_rejected = None;
                });
                let mut value = match conv.target_value() {
                    Ok(v) => v,
                    Err(e) => {
                        error!(error:% = e, decision = "reject"; "Target not serialisable");
                        METRICS.poll(PollResult::Rejected);
                        return;
                    }
                };
                // In front of a legacy supervisor the host OS app is its (proxy/split.rs): no
                // host part at all, so HostActor leaves the OS alone instead of reading "the
                // remote target has no hostapp" (which would end every apply `aborted`).
                if self.deps.proxy.is_some() {
                    if let Some(o) = value.as_object_mut() {
                        o.remove(HOSTAPP_KEY);
                    }
                }
                let (force, cancel) = trigger
                    .map(|t| (t.force, t.cancel))
                    .unwrap_or((false, true));
                let unchanged = previous.as_ref() == Some(&conv.target)
                    && previous_host.as_ref() == value.get(HOSTAPP_KEY)
                    && trigger.is_none();
                let res = if unchanged {
                    debug!(actor = "poll", decision = "unchanged", reason = "same target, new ETag"; "Target fetched");
                    self.deps
                        .store
                        .put_target(&value, etag.as_deref())
                        .map(|()| None)
                } else {
                    self.deps
                        .targets
                        .publish(value, etag.as_deref(), TargetSource::Remote, force, cancel)
                        .map(|t| Some(t.seq))
                };
                match res {
                    Ok(seq) => {
                        METRICS.poll(match seq {
                            Some(_) => PollResult::New,
                            None => PollResult::Unchanged,
                        });
                        self.etag = etag;
                        if let Some((p, legacy)) = legacy {
                            p.hand_off.do_send(crate::proxy::HandOff {
                                seq,
                                legacy: Some(Arc::new(legacy)),
                                force,
                                cancel,
                            });
                        }
                    }
                    Err(e) => {
                        warn!(actor = "poll", error:% = ErrorChain(&e), decision = "retry",
                            reason = "target could not be stored; the next poll fetches it again"; "Target not stored");
                        METRICS.poll(PollResult::Error);
                    }
                }
            }
        }
    }
}

impl Resumable for PollActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, ctx: &mut Context<Self>) {
        let Some(r) = self.deps.remote.clone() else {
            info!(actor = "poll", decision = "idle", reason = "unmanaged: no remote configured"; "Poll idle");
            return;
        };
        match r.client(self.deps.extra_ca.clone()) {
            Ok(c) => self.cloud = Some(c),
            Err(e) => {
                error!(actor = "poll", endpoint:% = r.endpoint, error:% = ErrorChain(&e), decision = "idle",
                    reason = "the remote client cannot be set up; fix the configuration"; "Poll idle");
                return;
            }
        }
        // The ETag is only worth sending with the remote target it belongs to.
        self.etag = self
            .deps
            .store
            .get_target()
            .ok()
            .flatten()
            .and_then(|t| t.etag);
        let key = self.api_key.clone();
        self.deps.remote_bus.update(|b| b.api_key = key);
        if self.api_key.is_none() {
            self.register(ctx);
        } else {
            info!(actor = "poll", endpoint:% = r.endpoint, interval_ms = self.interval.as_millis() as u64,
                decision = "poll", reason = "start"; "Polling the remote");
            self.poll(None, ctx);
        }
    }
}

crate::supervised_actor!(PollActor);

impl Handler<TriggerPoll> for PollActor {
    type Result = ();

    fn handle(&mut self, msg: TriggerPoll, ctx: &mut Context<Self>) {
        info!(actor = "poll", force = msg.force, cancel = msg.cancel, decision = "poll",
            reason = "POST /v1/update"; "Poll triggered");
        self.poll(Some(msg), ctx);
    }
}
