//! ProxyActor decides how requests between the legacy supervisor, the remote and user
//! containers are routed, and hands the legacy supervisor its part of each remote target
//! (spec/helios-proxy.md §5, spec/helios-api-v3.md §8). The HTTP layer streams the bodies;
//! they never enter a mailbox.
//! Owns: the routing snapshot (RoutingBus: endpoints and the legacy target copy), the hand-off
//! in flight (newest wins), the legacy supervisor's API client.
//! Handles: HandOff (from PollActor, after the split of a remote target).
//! Sends: `POST <legacy>/v1/update`, then polls `GET <legacy>/v2/state/status`.
//! Restart: republishes the routing with the stored legacy copy; a hand-off in flight is
//! dropped (the next poll hands off again). Idle when no legacy supervisor is configured.
//!
//! On with `--legacy-api-endpoint`/`--legacy-api-key` (or `BALENA_SUPERVISOR_*` in a
//! container). Specs: spec/helios-proxy.md, spec/helios-api-v3.md §2.3 and §8,
//! spec/state-report-v3.md.
//!
//! **Routing.** `route.rs` decides from method, path and `User-Agent` against the snapshot
//! published here; `src/api/proxy.rs` asks, then streams. helios answers `/ping`, `/metrics`,
//! `/v1/update` (poll now) and `/v3/*` itself; in proxy mode its own `/v1`/`/v2` routes are
//! not mounted, so every other request reaches the proxy:
//! - from the legacy supervisor (`User-Agent: Supervisor/…`, its API endpoint override points
//!   at helios): `GET /device/v3/<uuid>/state` is answered from the legacy copy (200 with a
//!   strong ETag, 304 on `If-None-Match`; 503 + `Retry-After: 15` while there is none or
//!   helios applies); `PATCH /device/v3/state` is read whole (bounded by
//!   `api.max_body_bytes`) to take its `apps` out, the rest forwarded; anything else streams to
//!   the balena API; with no remote (unmanaged) those get 503 + `Retry-After: 600`;
//! - from anyone else: streamed to the legacy supervisor's device API (auth is its business).
//!
//! **Hand-off order** (`HandOff`, after PollActor's split): withhold the copy (the legacy
//! supervisor's polls get 503), let helios apply its part, serve the copy once the StateBus says
//! `done` for that target (or a newer one), then `POST <legacy>/v1/update` with the legacy key
//! (retried every 5 s until a 2xx), then poll `/v2/state/status` every second until
//! `appState: applied` (10 minutes at most, then logged and left). When helios's part did not
//! change the copy is served at once, and not at all when it did not change either; a 304 after
//! `/v1/update` only repeats the `POST`. A newer target replaces a hand-off in flight. The copy is
//! stored (`proxy/legacy_target`) and served again after a restart; the apps the legacy supervisor
//! reported are pruned to those of each new copy.
//!
//! **The safety rule** (split.rs): an app is run by exactly one side and never moves from the
//! legacy supervisor to helios while it stays in the target. Seek helps: in proxy mode it
//! drops from its view, and so never stops or removes, every engine object of an app it
//! neither recorded nor has in its target (published as ForeignApps for the split). Moving the
//! other way is safe because of the order above: helios removes its containers in its own
//! apply before the legacy supervisor is given the app. Each side names its objects
//! differently, so a moved app starts with fresh volumes. The liveness cost: while helios's
//! apply does not reach `done` (a failing pull), the legacy supervisor keeps its previous
//! copy. Risk left open (to verify on a device): the legacy supervisor discovers supervised
//! containers by label, so it may see helios's containers as those of apps absent from its
//! copy and remove them; the copy hides them as the spec suggests, but only a device can tell
//! how v19 treats containers whose names it cannot parse.
//!
//! **Who reports which app.** `apps` is sent whole (spec/state-report-v3.md §3.5: every image
//! install not mentioned is marked deleted), so only helios sends it: the proxy takes `apps`
//! out of the legacy supervisor's PATCH (keeping only the apps of its copy, into RemoteBus
//! `legacy_apps`), forwards the rest (device fields, metrics, its version) unchanged, and
//! ReportActor adds those apps to its own. helios reports neither `supervisor_version` nor
//! `api_secret` there.
pub mod route;
pub mod split;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::{
    ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle, WrapFuture,
};
use log::{debug, info, warn};
use serde_json::Value;

use crate::bus::{Latest, StateBus};
use crate::model::UpdateStatus;
use crate::ports::store::{Durability, Store};
use crate::supervise::{Restarts, Resumable};
use crate::{ErrorChain, Secret};

pub use route::{
    authenticate, presented_key, LegacyAuth, LegacyTarget, Route, Routing, LEGACY_UA_PREFIX,
};
pub use split::{Owner, Split};

/// Store key of the app owners of the last split (`{"<app uuid>": "helios" | "legacy"}`).
pub const OWNERS_KEY: &str = crate::ports::store::keys::PROXY_OWNERS;
/// Store key of the legacy supervisor's target copy (served again after a restart).
pub const LEGACY_TARGET_KEY: &str = crate::ports::store::keys::PROXY_LEGACY_TARGET;

/// The routing snapshot, written by ProxyActor (and its `legacy_apps` read by the proxy).
pub type RoutingBus = Latest<Option<Arc<Routing>>>;
/// Apps SeekActor found on the engine but did not create (the legacy supervisor's), written by
/// Seek in proxy mode after each engine read; None until the engine was read once.
pub type ForeignApps = Latest<Option<BTreeSet<String>>>;

/// How to reach the legacy supervisor and what the proxy needs to route.
#[derive(Clone, PartialEq)]
pub struct ProxySettings {
    pub legacy_endpoint: String,
    pub legacy_key: Secret,
    pub uuid: String,
    pub remote_endpoint: Option<String>,
    /// Timeout of each call to the legacy supervisor.
    pub request_timeout: Duration,
    /// Pause between `/v1/update` attempts (spec: 5 s; the supervisor may be restarting).
    pub retry_interval: Duration,
    /// Pause between `/v2/state/status` polls (spec: 1 s).
    pub status_interval: Duration,
    /// Give up waiting for `appState: applied` after this long (logged, nothing undone).
    pub status_timeout: Duration,
}

impl std::fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySettings")
            .field("legacy_endpoint", &self.legacy_endpoint)
            .field("legacy_key", &self.legacy_key)
            .field("uuid", &self.uuid)
            .field("remote_endpoint", &self.remote_endpoint)
            .finish()
    }
}

/// Sent by PollActor after splitting a remote target: the legacy supervisor's copy, to be
/// served (and applied by it) once helios's own apply of target `seq` is done.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct HandOff {
    /// The helios target published for this remote target; None when helios's part did not
    /// change (nothing to wait for).
    pub seq: Option<u64>,
    /// The legacy supervisor's copy; None to only tell it to apply the copy it has (`POST
    /// /v1/update` while the remote target did not change).
    pub legacy: Option<Arc<Value>>,
    pub force: bool,
    pub cancel: bool,
}

/// What PollActor uses in proxy mode: the split (with the owners kept in the store) and the
/// way to ProxyActor.
#[derive(Clone)]
pub struct ProxyHandle {
    pub uuid: String,
    pub store: Store,
    pub foreign: ForeignApps,
    pub hand_off: Recipient<HandOff>,
}

impl ProxyHandle {
    /// Splits a remote document between helios and the legacy supervisor, logs one decision
    /// per app and stores the owners. None while the engine has not been read yet (helios
    /// must know which apps the legacy supervisor runs before it takes any).
    pub fn split(&self, doc: &Value) -> Option<Split> {
        let foreign = self.foreign.get()?;
        let previous: BTreeMap<String, Owner> = self
            .store
            .get_json(OWNERS_KEY)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let s = split::split(doc, &self.uuid, &previous, &foreign);
        for d in &s.decisions {
            let moved = previous.get(&d.app).is_some_and(|p| *p != d.owner);
            info!(actor = "proxy", app:% = d.app, owner:% = d.owner, moved, reason:% = d.reason,
                decision = if d.owner == Owner::Helios { "run" } else { "delegate" }; "App owner decided");
        }
        if s.owners != previous {
            let v = serde_json::to_value(&s.owners).expect("owners serialise");
            if let Err(e) = self.store.put_json(OWNERS_KEY, &v, Durability::Flush) {
                warn!(actor = "proxy", error:% = ErrorChain(&e), decision = "continue",
                    reason = "owners not stored; the next split repeats the decisions"; "Owners not stored");
            }
        }
        Some(s)
    }
}

/// Everything ProxyActor needs.
#[derive(Clone)]
pub struct ProxyDeps {
    pub settings: Option<ProxySettings>,
    pub routing: RoutingBus,
    pub state: StateBus,
    pub store: Store,
    /// Its `legacy_apps` (what the legacy supervisor reported) are pruned to the new copy's.
    pub remote_bus: crate::bus::RemoteBus,
}

pub struct ProxyActor {
    deps: ProxyDeps,
    restarts: Restarts,
    client: Option<awc::Client>,
    in_flight: Option<SpawnHandle>,
}

impl ProxyActor {
    pub fn new(deps: ProxyDeps, restarts: Restarts) -> Self {
        ProxyActor {
            deps,
            restarts,
            client: None,
            in_flight: None,
        }
    }

    fn settings(&self) -> &ProxySettings {
        self.deps
            .settings
            .as_ref()
            .expect("only called in proxy mode")
    }

    /// Serves `legacy` to the legacy supervisor from now on (and after a restart).
    fn serve(&mut self, legacy: &Value) -> bool {
        let uuid = self.settings().uuid.clone();
        let apps: BTreeSet<String> = legacy
            .get(&uuid)
            .and_then(|d| d.get("apps"))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        // Apps no longer the legacy supervisor's are not reported on its behalf any more.
        self.deps
            .remote_bus
            .update(|r| r.legacy_apps.retain(|k, _| apps.contains(k)));
        let target = Arc::new(LegacyTarget::new(legacy));
        if let Err(e) = self
            .deps
            .store
            .put_json(LEGACY_TARGET_KEY, legacy, Durability::Flush)
        {
            warn!(actor = "proxy", error:% = ErrorChain(&e), decision = "continue",
                reason = "the copy is served but lost at a restart"; "Legacy target not stored");
        }
        self.deps.routing.update(|r| {
            if let Some(r) = r {
                let mut next = (**r).clone();
                next.target = Some(target);
                next.legacy_apps = apps;
                *r = Arc::new(next);
            }
        })
    }

    fn withhold(&mut self) {
        self.deps.routing.update(|r| {
            if let Some(r) = r.as_mut().filter(|r| r.target.is_some()) {
                let mut next = (**r).clone();
                next.target = None;
                *r = Arc::new(next);
            }
        });
    }
}

/// Waits until SeekActor has finished target `seq` (or a newer one) with `done`.
async fn applied(state: StateBus, seq: u64) {
    let mut rx = state.subscribe();
    loop {
        {
            let s = rx.borrow_and_update();
            if s.seq >= seq && s.status == UpdateStatus::Done {
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Tells the legacy supervisor to apply (retried until it answers 2xx), then waits for
/// `appState: applied` (spec/helios-proxy.md §5.1).
async fn notify_legacy(client: awc::Client, s: ProxySettings, force: bool, cancel: bool) {
    let base = s.legacy_endpoint.trim_end_matches('/').to_string();
    let auth = format!("Bearer {}", s.legacy_key.expose());
    let body = serde_json::json!({"force": force, "cancel": cancel});
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let res = client
            .post(format!("{base}/v1/update"))
            .insert_header(("Authorization", auth.as_str()))
            .timeout(s.request_timeout)
            .send_json(&body)
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                info!(actor = "proxy", status = r.status().as_u16(), attempt, force, cancel,
                    decision = "notified"; "Legacy supervisor told to apply");
                break;
            }
            Ok(r) => {
                let lvl = if attempt == 1 {
                    log::Level::Warn
                } else {
                    log::Level::Debug
                };
                log::log!(lvl, actor = "proxy", status = r.status().as_u16(), attempt,
                    delay_ms = s.retry_interval.as_millis() as u64, decision = "retry"; "Legacy supervisor refused /v1/update");
            }
            Err(e) => {
                let lvl = if attempt == 1 {
                    log::Level::Warn
                } else {
                    log::Level::Debug
                };
                log::log!(lvl, actor = "proxy", error:% = e, attempt,
                    delay_ms = s.retry_interval.as_millis() as u64, decision = "retry"; "Legacy supervisor unreachable");
            }
        }
        tokio::time::sleep(s.retry_interval).await;
    }
    let deadline = tokio::time::Instant::now() + s.status_timeout;
    loop {
        let state = async {
            let mut r = client
                .get(format!("{base}/v2/state/status"))
                .insert_header(("Authorization", auth.as_str()))
                .timeout(s.request_timeout)
                .send()
                .await
                .ok()?;
            let v: Value = r.json().limit(1 << 20).await.ok()?;
            v.get("appState")
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        .await;
        if state.as_deref() == Some("applied") {
            info!(actor = "proxy", decision = "done", reason = "appState applied"; "Legacy supervisor applied its target");
            return;
        }
        debug!(actor = "proxy", status:? = state, decision = "wait"; "Legacy supervisor still applying");
        if tokio::time::Instant::now() >= deadline {
            warn!(actor = "proxy", duration_ms = s.status_timeout.as_millis() as u64, decision = "continue",
                reason = "appState not applied in time; the next target hands off again"; "Legacy supervisor apply not confirmed");
            return;
        }
        tokio::time::sleep(s.status_interval).await;
    }
}

impl Resumable for ProxyActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, _ctx: &mut Context<Self>) {
        let Some(s) = self.deps.settings.clone() else {
            info!(actor = "proxy", decision = "idle", reason = "no legacy supervisor configured"; "Proxy idle");
            return;
        };
        self.in_flight = None;
        self.client = Some(
            awc::Client::builder()
                .disable_redirects()
                .add_default_header((
                    "User-Agent",
                    format!("helios/{}", env!("CARGO_PKG_VERSION")),
                ))
                .finish(),
        );
        let stored = self.deps.store.get_json(LEGACY_TARGET_KEY).ok().flatten();
        let apps = stored
            .as_ref()
            .and_then(|v| v.get(&s.uuid))
            .and_then(|d| d.get("apps"))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let routing = Routing {
            uuid: s.uuid.clone(),
            legacy: s.legacy_endpoint.trim_end_matches('/').to_string(),
            remote: s
                .remote_endpoint
                .as_ref()
                .map(|r| r.trim_end_matches('/').to_string()),
            target: stored.as_ref().map(|v| Arc::new(LegacyTarget::new(v))),
            legacy_apps: apps,
        };
        info!(actor = "proxy", endpoint:% = routing.legacy, resumed = stored.is_some(),
            decision = "proxy", reason = "legacy supervisor configured"; "Proxying for the legacy supervisor");
        self.deps.routing.update(|r| *r = Some(Arc::new(routing)));
    }
}

crate::supervised_actor!(ProxyActor);

impl Handler<HandOff> for ProxyActor {
    type Result = ();

    fn handle(&mut self, msg: HandOff, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if let Some(h) = self.in_flight.take() {
            ctx.cancel_future(h);
            info!(actor = "proxy", decision = "supersede", reason = "a newer remote target"; "Hand-off replaced");
        }
        let s = self.settings().clone();
        let Some(legacy) = msg.legacy else {
            if self.deps.routing.get().is_some_and(|r| r.target.is_some()) {
                info!(actor = "proxy", force = msg.force, cancel = msg.cancel, decision = "notify",
                    reason = "POST /v1/update with the target unchanged"; "Legacy supervisor asked to apply again");
                let fut = notify_legacy(client, s, msg.force, msg.cancel);
                self.in_flight = Some(ctx.spawn(fut.into_actor(self)));
            }
            return;
        };
        let unchanged = self
            .deps
            .routing
            .get()
            .and_then(|r| r.target.clone())
            .is_some_and(|t| *t == LegacyTarget::new(&legacy));
        if unchanged && msg.seq.is_none() {
            debug!(actor = "proxy", decision = "unchanged"; "Legacy target unchanged");
            return;
        }
        let state = self.deps.state.clone();
        if let Some(seq) = msg.seq {
            // The legacy supervisor must not apply a copy while helios applies its own part:
            // an app helios gives up is removed by helios before the legacy supervisor starts it.
            self.withhold();
            info!(actor = "proxy", seq, decision = "withhold",
                reason = "helios applies its part first"; "Legacy target withheld");
        }
        let seq = msg.seq;
        let fut = async move {
            if let Some(seq) = seq {
                applied(state, seq).await;
            }
        }
        .into_actor(self)
        .then(move |(), act, ctx| {
            act.serve(&legacy);
            info!(actor = "proxy", seq = seq.unwrap_or(0), force = msg.force, cancel = msg.cancel,
                decision = "hand-off", reason = "helios's apply is done"; "Legacy target served");
            let h = ctx.spawn(notify_legacy(client, s, msg.force, msg.cancel).into_actor(act));
            act.in_flight = Some(h);
            actix::fut::ready(())
        });
        self.in_flight = Some(ctx.spawn(fut));
    }
}
