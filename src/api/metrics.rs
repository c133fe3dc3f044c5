//! `GET /metrics`: Prometheus text exposition format 0.0.4 (which neither the legacy supervisor
//! nor upstream helios offers). Counters come from `helios_actors::metrics`; release, status,
//! RSS and store size are read when asked. Like `/v3`, it needs the global key on TCP and none on
//! the unix socket (`auth::require_global`); it names app and release uuids, never a key.
//!
//! Two sources: the counters of the process-wide registry (`helios_actors::metrics`, bumped
//! beside the decision lines that log the same events), and gauges read at request time: the
//! update status (the StateBus status as every other reader sees it, `applying changes` while
//! a newer target waits), the services per app and release and the target's releases (from the
//! StateBus), RSS from `/proc/self/statm`, the store's size from sled. Nothing is sampled in
//! the background. In front of a legacy supervisor helios answers it itself (it is one of its
//! own routes, never proxied).
use std::fmt::Write;

use actix_web::{web, HttpResponse};

use helios_actors::metrics::{Snapshot, METRICS};
use helios_actors::model::CurrentState;

use super::ApiState;

/// `GET /metrics`.
pub async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    let cur = state.state.get();
    let status = cur.status_for(state.targets.latest().map(|t| t.seq));
    let status = serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let gauges = Gauges {
        status,
        rss_bytes: rss_bytes(),
        store_bytes: state.store.size_on_disk(),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(render(&METRICS.snapshot(), &cur, &gauges))
}

/// What is read at request time.
pub struct Gauges {
    pub status: String,
    pub rss_bytes: Option<u64>,
    pub store_bytes: u64,
}

/// Resident set size from `/proc/self/statm` (pages × page size).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The exposition text.
pub fn render(m: &Snapshot, cur: &CurrentState, g: &Gauges) -> String {
    let mut o = String::with_capacity(4096);
    head(
        &mut o,
        "helios_build_info",
        "gauge",
        "Version and git commit of this build.",
    );
    let _ = writeln!(
        o,
        "helios_build_info{{version=\"{}\",git_commit=\"{}\"}} 1",
        esc(crate::version::VERSION),
        esc(crate::version::GIT_COMMIT)
    );

    head(&mut o, "helios_applies_total", "counter",
        "Applies that ran a plan (or found none), by result, interrupted ones included; applies that found the device on target or could not read the engine are not counted.");
    for (result, n) in m.applies {
        let _ = writeln!(o, "helios_applies_total{{result=\"{result}\"}} {n}");
    }
    head(
        &mut o,
        "helios_apply_duration_seconds",
        "histogram",
        "Duration of counted applies, from reading the engine to the end of the workflow.",
    );
    for (le, n) in m.apply_buckets {
        let _ = writeln!(o, "helios_apply_duration_seconds_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "helios_apply_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        m.apply_count
    );
    let _ = writeln!(
        o,
        "helios_apply_duration_seconds_sum {}",
        m.apply_seconds_sum
    );
    let _ = writeln!(o, "helios_apply_duration_seconds_count {}", m.apply_count);

    head(
        &mut o,
        "helios_step_failures_total",
        "counter",
        "Failed plan steps, by step.",
    );
    for (step, n) in &m.step_failures {
        let _ = writeln!(
            o,
            "helios_step_failures_total{{step=\"{}\"}} {n}",
            esc(step)
        );
    }

    head(
        &mut o,
        "helios_polls_total",
        "counter",
        "Target polls of the remote, by result.",
    );
    for (result, n) in m.polls {
        let _ = writeln!(o, "helios_polls_total{{result=\"{result}\"}} {n}");
    }
    head(
        &mut o,
        "helios_poll_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last poll the remote answered (0: never).",
    );
    let _ = writeln!(
        o,
        "helios_poll_last_success_timestamp_seconds {}",
        m.last_poll_ok
    );
    head(
        &mut o,
        "helios_reports_total",
        "counter",
        "Requests to the remote's state and tags endpoints, by result.",
    );
    for (endpoint, result, n) in m.reports {
        let _ = writeln!(
            o,
            "helios_reports_total{{endpoint=\"{endpoint}\",result=\"{result}\"}} {n}"
        );
    }
    head(
        &mut o,
        "helios_report_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last state report the remote accepted (0: never).",
    );
    let _ = writeln!(
        o,
        "helios_report_last_success_timestamp_seconds {}",
        m.last_report_ok
    );

    head(
        &mut o,
        "helios_update_status",
        "gauge",
        "1 for the update status GET /v3/status shows.",
    );
    let _ = writeln!(o, "helios_update_status{{status=\"{}\"}} 1", esc(&g.status));
    head(
        &mut o,
        "helios_release_services",
        "gauge",
        "Service containers on the engine per app and release (two releases while an update runs).",
    );
    for (app_uuid, app) in cur.model.apps.iter() {
        let name = app.name.as_deref().unwrap_or("");
        for (release, rel) in app.releases.iter() {
            let _ = writeln!(
                o,
                "helios_release_services{{app_uuid=\"{}\",app_name=\"{}\",release_uuid=\"{}\"}} {}",
                esc(app_uuid),
                esc(name),
                esc(release),
                rel.services.len()
            );
        }
    }
    head(
        &mut o,
        "helios_target_release_info",
        "gauge",
        "The release the target wants per app.",
    );
    if let Some(t) = &cur.target {
        for (app_uuid, app) in t.apps.iter() {
            for release in app.releases.keys() {
                let _ = writeln!(
                    o,
                    "helios_target_release_info{{app_uuid=\"{}\",release_uuid=\"{}\"}} 1",
                    esc(app_uuid),
                    esc(release)
                );
            }
        }
    }

    if let Some(rss) = g.rss_bytes {
        head(
            &mut o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(o, "process_resident_memory_bytes {rss}");
    }
    head(
        &mut o,
        "helios_store_size_bytes",
        "gauge",
        "Size of the state store on disk.",
    );
    let _ = writeln!(o, "helios_store_size_bytes {}", g.store_bytes);
    o
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value: backslash, double quote and newline escaped.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            applies: [
                ("done", 2),
                ("failed", 1),
                ("no_plan", 0),
                ("interrupted", 0),
            ],
            apply_buckets: std::array::from_fn(|i| {
                (
                    helios_actors::metrics::APPLY_BUCKETS[i],
                    u64::from(i > 1) * 3,
                )
            }),
            apply_seconds_sum: 12.5,
            apply_count: 3,
            step_failures: vec![("pull", 4)],
            polls: [("new", 1), ("unchanged", 5), ("rejected", 0), ("error", 2)],
            reports: [
                ("state", "sent", 3),
                ("state", "failed", 0),
                ("tags", "sent", 0),
                ("tags", "failed", 1),
            ],
            last_poll_ok: 1_800_000_000,
            last_report_ok: 0,
        }
    }

    #[test]
    fn every_family_is_declared_once_and_every_sample_parses() {
        let mut cur = CurrentState::default();
        let mut app = helios_actors::model::device::App {
            name: Some("my \"app\"".into()),
            ..Default::default()
        };
        app.releases.insert("r1".into(), Default::default());
        cur.model.apps.insert("a1".into(), app);
        let g = Gauges {
            status: "applying changes".into(),
            rss_bytes: Some(7_000_000),
            store_bytes: 4096,
        };
        let text = render(&snapshot(), &cur, &g);
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(declared.insert(name.to_string()), "{name} declared twice");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            // name{labels} value: the value is the text after the last space, a number.
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "{line}: no TYPE before it");
        }
        for want in [
            "helios_applies_total{result=\"done\"} 2",
            "helios_apply_duration_seconds_bucket{le=\"+Inf\"} 3",
            "helios_apply_duration_seconds_bucket{le=\"2.5\"} 0",
            "helios_apply_duration_seconds_bucket{le=\"5\"} 3",
            "helios_apply_duration_seconds_sum 12.5",
            "helios_step_failures_total{step=\"pull\"} 4",
            "helios_polls_total{result=\"unchanged\"} 5",
            "helios_reports_total{endpoint=\"tags\",result=\"failed\"} 1",
            "helios_update_status{status=\"applying changes\"} 1",
            "helios_release_services{app_uuid=\"a1\",app_name=\"my \\\"app\\\"\",release_uuid=\"r1\"} 0",
            "process_resident_memory_bytes 7000000",
            "helios_store_size_bytes 4096",
        ] {
            assert!(text.lines().any(|l| l == want), "missing {want} in\n{text}");
        }
    }
}
