//! Process-wide counters for `GET /metrics`: applies and their durations, step failures, poll
//! and report results. Each is bumped next to the decision line that logs the same event, so
//! the counters and the log never disagree. Atomics only: no IO, no lock on a hot path.
//!
//! Each counter is bumped on the line after the decision line of its event: a step's
//! `decision=fail` (step failures, keyed by step name in a small mutex-guarded list), the end
//! of an apply, every poll outcome, every report request (state and tags). The faults test
//! checks the pull-failure counter against the `Step failed` lines.
//!
//! A static registry rather than a handle passed to every actor: the step runner in
//! `seek/plan/` is a free function inside mahler effects, and one registry per process is
//! what Prometheus scrapes anyway.
//!
//! What an apply counts: only applies that planned (or failed to), so `helios_applies_total`
//! counts real work. One that finds the device on target (a drift check, every few minutes) or
//! cannot read the engine is not counted; one interrupted by a newer target with `cancel` or
//! by a device API action counts as `interrupted`, with the time it ran. Gauges (status,
//! releases, RSS, store size) are not here: `src/api/metrics.rs` reads them per request.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds (seconds) of the apply-duration histogram's buckets; `+Inf` is implied.
pub const APPLY_BUCKETS: [f64; 9] = [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// How an apply that planned (or failed to) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    /// The workflow reached the target.
    Done,
    /// A step failed, or the workflow or the planning task itself failed.
    Failed,
    /// No sequence of steps reaches the target.
    NoPlan,
    /// Cancelled by a newer target or a device API action.
    Interrupted,
}

/// What a poll of the remote gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollResult {
    /// A changed target, published.
    New,
    /// 304, or the same target under a new ETag.
    Unchanged,
    /// The document or a release in it was invalid.
    Rejected,
    /// The remote could not be reached or answered an error.
    Error,
}

/// What a request to the remote's state or tags endpoint gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportResult {
    Sent,
    Failed,
}

/// Which report endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    State,
    Tags,
}

// Labels, indexed by each enum's discriminant (the counters' index too).
const APPLY_LABELS: [&str; 4] = ["done", "failed", "no_plan", "interrupted"];
const POLL_LABELS: [&str; 4] = ["new", "unchanged", "rejected", "error"];
const REPORT_KINDS: [&str; 2] = ["state", "tags"];
const REPORT_RESULTS: [&str; 2] = ["sent", "failed"];

pub struct Metrics {
    applies: [AtomicU64; 4],
    apply_buckets: [AtomicU64; APPLY_BUCKETS.len()],
    apply_ms_sum: AtomicU64,
    apply_ms_count: AtomicU64,
    step_failures: Mutex<Vec<(&'static str, u64)>>,
    polls: [AtomicU64; 4],
    reports: [AtomicU64; 4],
    last_poll_ok: AtomicU64,
    last_report_ok: AtomicU64,
}

/// The one registry of this process.
pub static METRICS: Metrics = Metrics::new();

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            applies: [ZERO; 4],
            apply_buckets: [ZERO; APPLY_BUCKETS.len()],
            apply_ms_sum: ZERO,
            apply_ms_count: ZERO,
            step_failures: Mutex::new(Vec::new()),
            polls: [ZERO; 4],
            reports: [ZERO; 4],
            last_poll_ok: ZERO,
            last_report_ok: ZERO,
        }
    }

    /// An apply ended after `took`.
    pub fn apply(&self, result: ApplyResult, took: Duration) {
        self.applies[result as usize].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, le) in APPLY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.apply_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.apply_ms_sum
            .fetch_add(took.as_millis() as u64, Ordering::Relaxed);
        self.apply_ms_count.fetch_add(1, Ordering::Relaxed);
    }

    /// A step of kind `step` (e.g. `pull`, `start`) failed.
    pub fn step_failed(&self, step: &'static str) {
        let mut v = self.step_failures.lock().unwrap_or_else(|p| p.into_inner());
        match v.iter_mut().find(|(s, _)| *s == step) {
            Some((_, n)) => *n += 1,
            None => v.push((step, 1)),
        }
    }

    pub fn poll(&self, result: PollResult) {
        self.polls[result as usize].fetch_add(1, Ordering::Relaxed);
        if result != PollResult::Error {
            self.last_poll_ok.store(unix_now(), Ordering::Relaxed);
        }
    }

    pub fn report(&self, kind: ReportKind, result: ReportResult) {
        self.reports[kind as usize * REPORT_RESULTS.len() + result as usize]
            .fetch_add(1, Ordering::Relaxed);
        if kind == ReportKind::State && result == ReportResult::Sent {
            self.last_report_ok.store(unix_now(), Ordering::Relaxed);
        }
    }

    /// A consistent-enough copy to render (each counter is read once).
    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut step_failures = self
            .step_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        step_failures.sort();
        Snapshot {
            applies: std::array::from_fn(|i| (APPLY_LABELS[i], load(&self.applies[i]))),
            apply_buckets: std::array::from_fn(|i| {
                (APPLY_BUCKETS[i], load(&self.apply_buckets[i]))
            }),
            apply_seconds_sum: load(&self.apply_ms_sum) as f64 / 1000.0,
            apply_count: load(&self.apply_ms_count),
            step_failures,
            polls: std::array::from_fn(|i| (POLL_LABELS[i], load(&self.polls[i]))),
            reports: std::array::from_fn(|i| {
                let (kind, result) = (i / REPORT_RESULTS.len(), i % REPORT_RESULTS.len());
                (
                    REPORT_KINDS[kind],
                    REPORT_RESULTS[result],
                    load(&self.reports[i]),
                )
            }),
            last_poll_ok: load(&self.last_poll_ok),
            last_report_ok: load(&self.last_report_ok),
        }
    }
}

/// The counters at one moment, labelled for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub applies: [(&'static str, u64); 4],
    /// Cumulative counts per upper bound (seconds).
    pub apply_buckets: [(f64, u64); APPLY_BUCKETS.len()],
    pub apply_seconds_sum: f64,
    pub apply_count: u64,
    pub step_failures: Vec<(&'static str, u64)>,
    pub polls: [(&'static str, u64); 4],
    /// (endpoint, result, count).
    pub reports: [(&'static str, &'static str, u64); 4],
    /// Unix seconds of the last poll the remote answered (0: never).
    pub last_poll_ok: u64,
    /// Unix seconds of the last state report the remote accepted (0: never).
    pub last_report_ok: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_labels_and_buckets() {
        let m = Metrics::new();
        m.apply(ApplyResult::Done, Duration::from_millis(1_500));
        m.apply(ApplyResult::Failed, Duration::from_secs(40));
        m.step_failed("pull");
        m.step_failed("pull");
        m.step_failed("start");
        m.poll(PollResult::New);
        m.poll(PollResult::Error);
        m.report(ReportKind::Tags, ReportResult::Failed);
        let s = m.snapshot();
        assert_eq!(
            s.applies,
            [
                ("done", 1),
                ("failed", 1),
                ("no_plan", 0),
                ("interrupted", 0)
            ]
        );
        assert_eq!(s.apply_buckets[0], (1.0, 0));
        assert_eq!(s.apply_buckets[1], (2.5, 1));
        assert_eq!(s.apply_buckets[4], (30.0, 1));
        assert_eq!(s.apply_buckets[5], (60.0, 2));
        assert_eq!(s.apply_count, 2);
        assert!((s.apply_seconds_sum - 41.5).abs() < 1e-9);
        assert_eq!(s.step_failures, vec![("pull", 2), ("start", 1)]);
        assert_eq!(s.polls[0], ("new", 1));
        assert_eq!(s.polls[3], ("error", 1));
        assert!(s.last_poll_ok > 0);
        assert_eq!(s.reports[3], ("tags", "failed", 1));
        assert_eq!(s.last_report_ok, 0);
    }
}
