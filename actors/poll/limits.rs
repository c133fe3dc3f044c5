//! Bounds on how long the remote can make the device wait: its `Retry-After` (target polls and
//! registration) and the poll interval its device config sets (`SUPERVISOR_POLL_INTERVAL`).
//! Unbounded, one answer (or whoever answers in the remote's name) silences a device for years.
use std::time::Duration;

use log::warn;

/// Longest poll interval a device config may set: a day, the period at which the last target
/// is re-emitted anyway (spec/helios-api-v3.md §5.1); the remote sees the device at least daily.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The poll interval a device config asks for, at least `min` (the minimum interval) and at
/// most [`MAX_POLL_INTERVAL`] (logged `decision=cap`).
pub fn interval(requested: Duration, min: Duration) -> Duration {
    let max = MAX_POLL_INTERVAL.max(min);
    if requested > max {
        warn!(actor = "poll", requested_ms = millis(requested), interval_ms = millis(max), decision = "cap",
            reason = "a device config may not set a poll interval above a day"; "Poll interval capped");
        return max;
    }
    requested.max(min)
}

/// The remote's `Retry-After` for a failed `what` ("poll", "registration"), at most `cap`: the
/// poll interval, so a busy remote never makes the device wait longer than a healthy one does
/// (the report actor caps it the same way). Logged `decision=cap` when capped.
pub fn retry_after(retry_after: Option<Duration>, cap: Duration, what: &str) -> Option<Duration> {
    let d = retry_after?;
    if d > cap {
        warn!(actor = "poll", request = what, requested_ms = millis(d), delay_ms = millis(cap),
            decision = "cap", reason = "Retry-After beyond the poll interval"; "Retry-After capped");
        return Some(cap);
    }
    Some(d)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(10);
    const YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

    #[test]
    fn a_remote_interval_is_kept_between_the_minimum_and_a_day() {
        assert_eq!(
            interval(Duration::from_secs(600), MIN),
            Duration::from_secs(600)
        );
        assert_eq!(interval(Duration::from_secs(1), MIN), MIN);
        assert_eq!(interval(YEARS, MIN), MAX_POLL_INTERVAL);
        // A local minimum above a day wins (the operator chose it).
        assert_eq!(interval(YEARS, YEARS), YEARS);
    }

    #[test]
    fn retry_after_is_capped_at_the_poll_interval() {
        let cap = Duration::from_secs(900);
        assert_eq!(retry_after(None, cap, "poll"), None);
        assert_eq!(
            retry_after(Some(Duration::from_secs(7)), cap, "poll"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after(Some(YEARS), cap, "registration"), Some(cap));
    }
}
