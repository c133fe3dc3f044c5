//! plan_bench: how long the planner takes for large changes, with no IO (no engine, no store).
//!
//! Builds current `Device`s and targets the way the agent does (app targets go through
//! `app_from_target`, the API's validation and normalisation, then become a `DeviceTarget`),
//! and times the planner on them, several runs each:
//!
//! * `update-N`: one app with N running services of release r1 (image A) moves to release r2
//!   (image B): pull B, stop and remove the r1 containers, create and start the r2 ones,
//!   remove A;
//! * `install-N`: a fresh app with N services on an empty device;
//! * `update-N+install-N`: both in one target (two apps).
//!
//! For each it prints the number of steps, the number of sequential stages of the workflow
//! (mahler merges steps it may run concurrently into one stage; its search stops with an
//! error after 256 stages), `find_workflow` min/median/max (the agent logs this as `plan_ms`)
//! and the median of the whole preview (what `POST /v3/device/apps/{uuid}/plan` runs: target
//! preparation, initial state, search, step rendering), then the steps by kind. The worker
//! template is built once, as SeekActor does.
//!
//!   cargo run --release -p helios-actors --example plan_bench -- \
//!       [--runs N] [--max-secs S] [--sizes 5,10,20,50] [--only update-50,install-50]
//!
//! `--runs` (default 5) is the most runs per scenario; a scenario stops repeating once its
//! runs took `--max-secs` (default 60, at least one run). `--sizes` are the service counts of
//! the `update-N` sweep; the largest is also used for `install-N` and `update-N+install-N`.
//! `--only` keeps the scenarios of these names.
//!
//! Figures are printed, never asserted.
use std::time::Instant;

use serde_json::{json, Value};

use helios_actors::model::device::{Container, Device, DeviceTarget, Image};
use helios_actors::model::target::{app_from_target, AppTarget};
use helios_actors::seek::current::prepare_target;
use helios_actors::seek::messages::{preview, steps};
use helios_actors::seek::plan;
use mahler::worker::{Uninitialized, Worker};

const IMAGE_A: &str = "registry.local/bench/app:1";
const IMAGE_B: &str = "registry.local/bench/app:2";
const UPDATED_APP: &str = "bench-app-update";
const NEW_APP: &str = "bench-app-install";

/// The `POST /v3/device/apps/{uuid}` body of an app with `n` services of `image`: every
/// service on one network with one shared named volume, a command, environment and labels.
fn app_body(id: u32, release: &str, n: usize, image: &str) -> Value {
    let services: serde_json::Map<String, Value> = (1..=n)
        .map(|i| {
            (
                format!("svc{i:03}"),
                json!({"id": i, "image": image,
                "environment": {"SERVICE_INDEX": i.to_string(), "MODE": "bench"},
                "labels": {"com.example.tier": "bench"},
                "composition": {
                    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
                    "networks": ["backend"],
                    "volumes": ["data:/data"],
                    "restart": "always"
                }}),
            )
        })
        .collect();
    json!({"id": id, "name": format!("bench-{id}"), "releases": {release: {
        "services": services,
        "networks": {"backend": {}},
        "volumes": {"data": {}}
    }}})
}

/// An app through the API's validation, as the model's `App`.
fn model_app(uuid: &str, body: Value) -> helios_actors::model::device::App {
    let wire: AppTarget =
        serde_json::from_value(body).expect("the bench target has the wire shape");
    app_from_target(uuid, wire).expect("the bench target is valid")
}

/// The device with `app` installed and running on the engine: every service has a running
/// container, every image it uses is present.
fn installed(uuid: &str, mut app: helios_actors::model::device::App) -> Device {
    let mut dev = Device::default();
    for (rel, r) in app.releases.iter_mut() {
        for (name, s) in r.services.iter_mut() {
            s.running = true;
            s.container = Some(Container {
                id: format!("{:064x}", s.id),
                name: format!("{name}_{rel}"),
                created: "2025-01-01T00:00:00Z".into(),
                status: "running".into(),
                exit_code: 0,
                health: "none".into(),
                started: true,
            });
            dev.images.insert(
                s.image.clone(),
                Image {
                    oci_id: Some(format!("sha256:{:064x}", s.image.len())),
                    download_progress: 100,
                },
            );
        }
    }
    dev.apps.insert(uuid.to_string(), app);
    dev
}

/// A device holding these apps, as the target the API publishes (a serde round trip, as
/// `src/api/v3.rs` does).
fn target_of(apps: Vec<(&str, helios_actors::model::device::App)>) -> DeviceTarget {
    let mut dev = Device::default();
    for (uuid, app) in apps {
        dev.apps.insert(uuid.to_string(), app);
    }
    serde_json::to_value(&dev)
        .and_then(serde_json::from_value)
        .expect("a Device converts to its target")
}

struct Scenario {
    name: String,
    current: Device,
    target: DeviceTarget,
}

fn update(n: usize) -> Scenario {
    Scenario {
        name: format!("update-{n}"),
        current: installed(
            UPDATED_APP,
            model_app(UPDATED_APP, app_body(1, "r1", n, IMAGE_A)),
        ),
        target: target_of(vec![(
            UPDATED_APP,
            model_app(UPDATED_APP, app_body(1, "r2", n, IMAGE_B)),
        )]),
    }
}

fn install(n: usize) -> Scenario {
    Scenario {
        name: format!("install-{n}"),
        current: Device::default(),
        target: target_of(vec![(
            NEW_APP,
            model_app(NEW_APP, app_body(2, "n1", n, IMAGE_A)),
        )]),
    }
}

fn update_and_install(n: usize) -> Scenario {
    Scenario {
        name: format!("update-{n}+install-{n}"),
        current: installed(
            UPDATED_APP,
            model_app(UPDATED_APP, app_body(1, "r1", n, IMAGE_A)),
        ),
        target: target_of(vec![
            (
                UPDATED_APP,
                model_app(UPDATED_APP, app_body(1, "r2", n, IMAGE_B)),
            ),
            (NEW_APP, model_app(NEW_APP, app_body(2, "n1", n, IMAGE_A))),
        ]),
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Figures {
    steps: usize,
    stages: usize,
    kinds: Vec<(String, usize)>,
    /// `find_workflow` alone, ms per run.
    search: Vec<f64>,
    /// The whole preview, ms per run.
    total: Vec<f64>,
}

/// The kind of a step: its description up to the first quote ("create container", ...).
fn kinds(steps: &[String]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = vec![];
    for s in steps {
        let k = s.split('\'').next().unwrap_or(s).trim().to_string();
        match out.iter_mut().find(|(x, _)| *x == k) {
            Some((_, c)) => *c += 1,
            None => out.push((k, 1)),
        }
    }
    out
}

/// Plans `s` up to `runs` times, fewer once the runs so far took `max_secs` (at least one).
///
/// Each run does what [`preview`] does (prepare the target, build the worker from the
/// template, `find_workflow`, render the steps), with the search timed on its own, so that
/// one planning gives both figures and the workflow's shape. The first run is also checked
/// against `preview` itself when that is cheap.
fn measure(
    template: &Worker<Device, Uninitialized>,
    s: &Scenario,
    runs: usize,
    max_secs: f64,
) -> Result<Figures, String> {
    let mut search = Vec::with_capacity(runs);
    let mut total = Vec::with_capacity(runs);
    let mut shape = None;
    let started = Instant::now();
    let budget_left = |n: usize| n == 0 || started.elapsed().as_secs_f64() < max_secs;
    while search.len() < runs && budget_left(search.len()) {
        let (tpl, cur, tgt) = (template.clone(), s.current.clone(), s.target.clone());
        let t0 = Instant::now();
        let tgt = prepare_target(tgt, &cur);
        let worker = tpl
            .initial_state(cur)
            .map_err(|e| format!("initial state: {e}"))?;
        let t1 = Instant::now();
        let wf = worker
            .find_workflow(&tgt)
            .map_err(|e| format!("planning failed: {e}"))?
            .ok_or("no plan found")?;
        search.push(ms(t1));
        let all = steps(&wf);
        total.push(ms(t0));
        if shape.is_none() {
            let stages = wf
                .to_string()
                .lines()
                .filter(|l| l.starts_with('-') || l.starts_with('+'))
                .count();
            shape = Some((all, stages));
        }
    }
    let (all, stages) = shape.expect("at least one run");
    if total[0] < 1000.0 {
        let again = preview(template.clone(), s.current.clone(), s.target.clone())
            .map_err(|e| format!("preview: {e}"))?;
        if again != all {
            return Err("preview plans differently from the timed runs".into());
        }
    }
    Ok(Figures {
        steps: all.len(),
        stages,
        kinds: kinds(&all),
        search,
        total,
    })
}

fn main() {
    let mut runs = 5usize;
    let mut max_secs = 60.0f64;
    let mut sizes: Vec<usize> = vec![5, 10, 20, 50];
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--runs", Some(v)) => runs = v.parse().expect("--runs takes a number"),
            ("--sizes", Some(v)) => {
                sizes = v
                    .split(',')
                    .map(|x| x.trim().parse().expect("--sizes takes numbers"))
                    .collect()
            }
            ("--max-secs", Some(v)) => max_secs = v.parse().expect("--max-secs takes a number"),
            ("--only", Some(v)) => only = Some(v.split(',').map(str::to_string).collect()),
            _ => {
                eprintln!(
                    "usage: plan_bench [--runs N] [--max-secs S] [--sizes 5,10,20,50] \
                     [--only NAME,...]"
                );
                std::process::exit(2);
            }
        }
    }
    let runs = runs.max(1);
    let big = sizes.iter().copied().max().unwrap_or(50);

    let mut scenarios: Vec<Scenario> = sizes.iter().map(|&n| update(n)).collect();
    scenarios.push(install(big));
    scenarios.push(update_and_install(big));
    if let Some(only) = &only {
        scenarios.retain(|s| only.contains(&s.name));
    }

    let template = plan::worker();
    println!(
        "planner: mahler find_workflow, release build, no IO; up to {runs} runs per scenario \
         (fewer once a scenario took {max_secs} s)"
    );
    println!(
        "{:<22} {:>5} {:>6} {:>4} {:>9} {:>9} {:>9} {:>10}",
        "scenario", "steps", "stages", "runs", "min ms", "median ms", "max ms", "preview ms"
    );
    let mut failed = false;
    for s in &scenarios {
        match measure(&template, s, runs, max_secs) {
            Ok(mut f) => {
                let min = f.search.iter().copied().fold(f64::INFINITY, f64::min);
                let max = f.search.iter().copied().fold(0.0, f64::max);
                let n = f.search.len();
                let med = median(&mut f.search);
                let total = median(&mut f.total);
                println!(
                    "{:<22} {:>5} {:>6} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>10.1}",
                    s.name, f.steps, f.stages, n, min, med, max, total
                );
                let k: Vec<String> = f.kinds.iter().map(|(k, c)| format!("{c} {k}")).collect();
                println!("    {}", k.join(", "));
            }
            Err(e) => {
                println!("{:<22} error: {e}", s.name);
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
