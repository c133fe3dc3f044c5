//! ReportActor reads the current-state bus and reports the device state to the remote
//! (spec/state-report-v3.md): `PATCH /device/v3/state` with a two-level diff against the last
//! successful report, `apps` always whole, metrics smoothed and metric-only changes at most
//! every 5 minutes, at most one attempt per `min_interval`, backoff with `Retry-After`.
//! Device tags written locally go to `PATCH /device/v3/tags` (tags.rs, spec §9).
//! Owns: the last successful report (also in the store, so a restart does not resend it), the
//! tag push schedule.
//! Handles: current-state and remote-info changes (watch streams), a metrics timer, TagsQueued,
//! GetTags (reads the device's tags from the cloud for `GET /v2/device/tags`).
//! Sends: nothing to other actors.
//! Restart: reloads the last report from the store; idle when the device is unmanaged.
//!
//! Reporting: the full report (device fields, metrics, `apps`) is rebuilt on every state or
//! remote-info change and diffed against the last successful one (two levels; `apps` whole,
//! body.rs); nothing is sent when nothing differs, and a metric-only diff waits until 5
//! minutes after the last report. At most one attempt per `min_interval`: changes that come
//! meanwhile go out after it. Failures back off from 15 s doubling to the poll interval, or
//! by `Retry-After` (capped the same). The last successful report is kept in the store (a
//! lazy write: a crash may lose it, and the next report is then a full one). Nothing is sent
//! before the device has its key (registered).
//!
//! What is reported: only the apps of the last remote target (RemoteBus `authorized`), with
//! the rejected releases marked `rejected`, the host app and its releases (model/host.rs),
//! and the global device API key as `api_secret`. In front of a legacy supervisor `apps` is
//! still sent whole and only by helios (spec/state-report-v3.md §3.5: an app left out is
//! marked deleted): the apps the legacy supervisor last reported (RemoteBus `legacy_apps`,
//! taken out of its own PATCH by the proxy) are added to helios's own; `supervisor_version`
//! and `api_secret` are left to the legacy supervisor's report.
pub mod body;
pub mod tags;

use std::time::{Duration, Instant};

use actix::{ActorFutureExt, AsyncContext, Context, SpawnHandle, StreamHandler, WrapFuture};
use log::{debug, info, warn};
use serde_json::{Map, Value};
use tokio_stream::wrappers::WatchStream;

use crate::bus::{RemoteBus, StateBus};
use crate::metrics::{ReportKind, ReportResult, METRICS};
use crate::ports::cloud::Cloud;
use crate::ports::store::{Durability, Store};
use crate::ports::sysinfo::{SysInfo, METRIC_KEYS};
use crate::supervise::{Restarts, Resumable};
use crate::ErrorChain;

/// Store key of the last successful report.
pub const LAST_REPORT_KEY: &str = crate::ports::store::keys::LAST_REPORT;
/// Metric-only changes wait this long after the last report (spec §5.3).
const METRICS_EVERY: Duration = Duration::from_secs(300);
/// First failure backoff (spec §6).
const BACKOFF_MIN: Duration = Duration::from_secs(15);
/// At most one tags PATCH this often (spec §9).
const TAGS_EVERY: Duration = Duration::from_secs(10);

/// Sent by the API after `PATCH /v2/device/tags` stored new pending tags.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct TagsQueued;

/// When and how the pending tags are pushed.
#[derive(Default)]
struct TagPush {
    timer: Option<SpawnHandle>,
    in_flight: bool,
    last_attempt: Option<Instant>,
    failures: u32,
}

/// Everything ReportActor needs.
#[derive(Clone)]
pub struct ReportDeps {
    pub remote: Option<crate::poll::RemoteSettings>,
    pub extra_ca: Option<std::path::PathBuf>,
    /// At most one report attempt per this interval (spec: 10 s).
    pub min_interval: Duration,
    pub fields: body::DeviceFields,
    pub data_path: std::path::PathBuf,
    pub state: StateBus,
    pub remote_bus: RemoteBus,
    pub store: Store,
    /// The device API keys: the global key is reported as `api_secret` (spec §2.1). None in
    /// front of a legacy supervisor: the cloud keeps calling it with its own key.
    pub keys: Option<crate::ports::apikeys::ApiKeys>,
}

pub struct ReportActor {
    deps: ReportDeps,
    restarts: Restarts,
    cloud: Option<Cloud>,
    sys: Option<SysInfo>,
    last: Option<Map<String, Value>>,
    last_sent: Option<Instant>,
    last_attempt: Option<Instant>,
    in_flight: bool,
    timer: Option<SpawnHandle>,
    failures: u32,
    tags: TagPush,
    /// The numeric device id, once looked up (reading tags needs it).
    device_id: Option<u64>,
}

impl ReportActor {
    pub fn new(deps: ReportDeps, restarts: Restarts) -> Self {
        ReportActor {
            deps,
            restarts,
            cloud: None,
            sys: None,
            last: None,
            last_sent: None,
            last_attempt: None,
            in_flight: false,
            timer: None,
            failures: 0,
            tags: TagPush::default(),
            device_id: None,
        }
    }

    /// Pushes the pending tags now, or when the 10-s window or a backoff allows.
    fn push_tags(&mut self, delay: Option<Duration>, ctx: &mut Context<Self>) {
        let (Some(cloud), Some(remote)) = (self.cloud.clone(), self.deps.remote.clone()) else {
            return;
        };
        if self.tags.in_flight {
            return;
        }
        let window = self
            .tags
            .last_attempt
            .map(|t| TAGS_EVERY.saturating_sub(t.elapsed()))
            .unwrap_or_default();
        let wait = delay.unwrap_or_default().max(window);
        if !wait.is_zero() {
            if self.tags.timer.is_none() {
                self.tags.timer = Some(ctx.run_later(wait, |a, ctx| {
                    a.tags.timer = None;
                    a.push_tags(None, ctx);
                }));
            }
            return;
        }
        let Some(key) = self.deps.remote_bus.get().api_key else {
            return;
        };
        let send = match tags::to_send(&self.deps.store) {
            Ok(t) if t.is_empty() => return,
            Ok(t) => t,
            Err(e) => {
                warn!(actor = "report", error:% = ErrorChain(&e), decision = "skip"; "Pending tags unreadable");
                return;
            }
        };
        let body = Value::Object(Map::from_iter([(
            remote.uuid.clone(),
            Value::Object(send.clone()),
        )]));
        self.tags.in_flight = true;
        self.tags.last_attempt = Some(Instant::now());
        ctx.spawn(
            async move { cloud.patch_tags(key.expose(), &body).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.tags.in_flight = false;
                    match res {
                        Ok(()) => {
                            act.tags.failures = 0;
                            info!(actor = "report", tags = send.len(), decision = "sent"; "Device tags reported");
                            METRICS.report(ReportKind::Tags, ReportResult::Sent);
                            if let Err(e) = tags::settle(&act.deps.store, &send) {
                                warn!(actor = "report", error:% = ErrorChain(&e), decision = "continue"; "Reported tags not stored");
                            }
                            // Tags queued meanwhile go out after the window.
                            act.push_tags(None, ctx);
                        }
                        Err(e) => {
                            let cap = remote.poll_interval.max(BACKOFF_MIN);
                            let delay = e.retry_after().map(|d| d.min(cap)).unwrap_or_else(|| {
                                BACKOFF_MIN.saturating_mul(1u32 << act.tags.failures.min(16)).min(cap)
                            });
                            act.tags.failures += 1;
                            warn!(actor = "report", attempt = act.tags.failures, delay_ms = delay.as_millis() as u64,
                                error:% = ErrorChain(&e), decision = "retry"; "Device tags report failed");
                            METRICS.report(ReportKind::Tags, ReportResult::Failed);
                            act.push_tags(Some(delay), ctx);
                        }
                    }
                }),
        );
    }

    fn later(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        self.timer = Some(ctx.run_later(delay, |a, ctx| {
            a.timer = None;
            a.report(ctx);
        }));
    }

    /// The full report object as of now.
    fn current(&mut self) -> Map<String, Value> {
        let state = self.deps.state.get();
        let remote = self.deps.remote_bus.get();
        let (facts, metrics) = match self.sys.as_mut() {
            Some(s) => (s.host_facts(), s.metrics()),
            None => Default::default(),
        };
        let mut m = body::device_fields(&self.deps.fields, &facts);
        if let Some(keys) = &self.deps.keys {
            m.insert("api_secret".into(), body::api_secret(keys.global()));
        }
        let last = self.last.as_ref();
        for (k, v) in metrics.to_json() {
            let smoothed = crate::ports::sysinfo::smooth(&k, last.and_then(|l| l.get(&k)), &v);
            m.insert(k, smoothed);
        }
        m.insert(
            "apps".into(),
            body::apps(
                &state.model,
                state.target.as_ref(),
                &remote,
                state.loop_status(),
                state.host.as_ref(),
            ),
        );
        m
    }

    fn report(&mut self, ctx: &mut Context<Self>) {
        let (Some(cloud), Some(remote)) = (self.cloud.clone(), self.deps.remote.clone()) else {
            return;
        };
        let Some(key) = self.deps.remote_bus.get().api_key else {
            debug!(actor = "report", decision = "wait", reason = "not registered yet"; "Report deferred");
            return;
        };
        if self.in_flight {
            return;
        }
        if let Some(wait) = self
            .last_attempt
            .map(|t| self.deps.min_interval.saturating_sub(t.elapsed()))
            .filter(|w| !w.is_zero())
        {
            if self.timer.is_none() {
                self.later(wait, ctx);
            }
            return;
        }
        let full = self.current();
        let diff = body::diff(&full, self.last.as_ref());
        if diff.is_empty() {
            return;
        }
        let metrics_only = diff.keys().all(|k| METRIC_KEYS.contains(&k.as_str()));
        // A little slack: the 5-minute tick must not just miss the 5 minutes since the last
        // report (and wait 5 more).
        let slack = Duration::from_secs(2);
        if metrics_only
            && self
                .last_sent
                .is_some_and(|t| t.elapsed() + slack < METRICS_EVERY)
        {
            debug!(actor = "report", decision = "skip", reason = "metric-only change within 5 minutes"; "Report skipped");
            return;
        }
        let keys: Vec<String> = diff.keys().cloned().collect();
        let body = Value::Object(Map::from_iter([(remote.uuid.clone(), Value::Object(diff))]));
        self.in_flight = true;
        self.last_attempt = Some(Instant::now());
        ctx.spawn(
            async move { cloud.patch_state(key.expose(), &body).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.in_flight = false;
                    match res {
                        Ok(()) => {
                            if act.failures > 0 {
                                info!(actor = "report", attempts = act.failures, decision = "recovered"; "Reports accepted again");
                            }
                            act.failures = 0;
                            info!(actor = "report", fields:? = keys, decision = "sent"; "State reported");
                            METRICS.report(ReportKind::State, ReportResult::Sent);
                            let v = Value::Object(full.clone());
                            if let Err(e) = act.deps.store.put_json(LAST_REPORT_KEY, &v, Durability::Lazy) {
                                warn!(actor = "report", error:% = ErrorChain(&e), decision = "continue"; "Last report not stored");
                            }
                            act.last = Some(full);
                            act.last_sent = Some(Instant::now());
                            // Changes that arrived meanwhile go out after the throttle.
                            act.later(act.deps.min_interval, ctx);
                        }
                        Err(e) => {
                            let cap = remote.poll_interval.max(BACKOFF_MIN);
                            let delay = e.retry_after().map(|d| d.min(cap)).unwrap_or_else(|| {
                                BACKOFF_MIN.saturating_mul(1u32 << act.failures.min(16)).min(cap)
                            });
                            act.failures += 1;
                            warn!(actor = "report", attempt = act.failures, delay_ms = delay.as_millis() as u64,
                                error:% = ErrorChain(&e), decision = "retry"; "State report failed");
                            METRICS.report(ReportKind::State, ReportResult::Failed);
                            act.later(delay, ctx);
                        }
                    }
                }),
        );
    }
}

impl Resumable for ReportActor {
    fn restarts(&mut self) -> &mut Restarts {
        &mut self.restarts
    }

    fn begin(&mut self, ctx: &mut Context<Self>) {
        let Some(r) = self.deps.remote.clone() else {
            info!(actor = "report", decision = "idle", reason = "unmanaged: no remote to report to"; "Report idle");
            return;
        };
        match r.client(self.deps.extra_ca.clone()) {
            Ok(c) => self.cloud = Some(c),
            Err(e) => {
                warn!(actor = "report", error:% = ErrorChain(&e), decision = "idle",
                    reason = "the remote client cannot be set up"; "Report idle");
                return;
            }
        }
        self.sys = Some(SysInfo::new(&self.deps.data_path));
        self.last = self
            .deps
            .store
            .get_json(LAST_REPORT_KEY)
            .ok()
            .flatten()
            .and_then(|v| v.as_object().cloned());
        self.in_flight = false;
        self.timer = None;
        self.tags = TagPush::default();
        // Tags queued before a restart go out now.
        self.push_tags(None, ctx);
        ctx.add_stream(WatchStream::new(self.deps.state.subscribe()));
        ctx.add_stream(WatchStream::new(self.deps.remote_bus.subscribe()));
        if let Some(keys) = &self.deps.keys {
            ctx.add_stream(WatchStream::new(keys.subscribe_global()));
        }
        ctx.run_interval(METRICS_EVERY, |a, ctx| a.report(ctx));
        info!(actor = "report", endpoint:% = r.endpoint, resumed = self.last.is_some(),
            decision = "report", reason = "start"; "Reporting to the remote");
    }
}

crate::supervised_actor!(ReportActor);

impl StreamHandler<std::sync::Arc<crate::model::CurrentState>> for ReportActor {
    fn handle(&mut self, _: std::sync::Arc<crate::model::CurrentState>, ctx: &mut Context<Self>) {
        self.report(ctx);
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl StreamHandler<crate::model::RemoteInfo> for ReportActor {
    fn handle(&mut self, _: crate::model::RemoteInfo, ctx: &mut Context<Self>) {
        self.report(ctx);
        // The device key may have just become known.
        self.push_tags(None, ctx);
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

/// A regenerated global key is reported right away (spec §2.1 `api_secret`).
impl StreamHandler<Option<crate::Secret>> for ReportActor {
    fn handle(&mut self, _: Option<crate::Secret>, ctx: &mut Context<Self>) {
        self.report(ctx);
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

/// Sent by the API for `GET /v2/device/tags`: the device's tags as the cloud lists them.
#[derive(Debug, actix::Message)]
#[rtype(result = "Result<Vec<crate::ports::cloud::DeviceTag>, GetTagsError>")]
pub struct GetTags;

/// Why the device's tags could not be read from the cloud.
#[derive(Debug, thiserror::Error)]
pub enum GetTagsError {
    #[error("no cloud connection")]
    NoCloud,
    #[error("the device is not registered yet")]
    NotRegistered,
    #[error("the cloud does not list device {0}")]
    UnknownDevice(String),
    #[error("the cloud could not be read")]
    Cloud(#[source] crate::ports::cloud::CloudError),
}

impl actix::Handler<GetTags> for ReportActor {
    type Result =
        actix::ResponseActFuture<Self, Result<Vec<crate::ports::cloud::DeviceTag>, GetTagsError>>;

    /// Looks the numeric device id up once (`GET /v7/device`), then lists the tags.
    fn handle(&mut self, _: GetTags, _ctx: &mut Context<Self>) -> Self::Result {
        let (Some(cloud), Some(remote)) = (self.cloud.clone(), self.deps.remote.clone()) else {
            return Box::pin(actix::fut::ready(Err(GetTagsError::NoCloud)));
        };
        let Some(key) = self.deps.remote_bus.get().api_key else {
            return Box::pin(actix::fut::ready(Err(GetTagsError::NotRegistered)));
        };
        let known = self.device_id;
        let fut = async move {
            let id = match known {
                Some(id) => id,
                None => match cloud.find_device(&remote.uuid, key.expose()).await {
                    Ok(ids) if ids.len() == 1 => ids[0],
                    Ok(_) => return Err(GetTagsError::UnknownDevice(remote.uuid.clone())),
                    Err(e) => return Err(GetTagsError::Cloud(e)),
                },
            };
            let tags = cloud
                .get_tags(id, key.expose())
                .await
                .map_err(GetTagsError::Cloud)?;
            Ok((id, tags))
        };
        Box::pin(fut.into_actor(self).map(|res, act, _| match res {
            Ok((id, tags)) => {
                act.device_id = Some(id);
                Ok(tags)
            }
            Err(e) => {
                warn!(actor = "report", error:% = ErrorChain(&e), decision = "fail",
                    reason = "GET /v2/device/tags"; "Device tags not read from the cloud");
                Err(e)
            }
        }))
    }
}

impl actix::Handler<TagsQueued> for ReportActor {
    type Result = ();

    fn handle(&mut self, _: TagsQueued, ctx: &mut Context<Self>) {
        self.push_tags(None, ctx);
    }
}
