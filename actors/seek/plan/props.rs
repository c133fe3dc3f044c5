//! Planner properties over generated current/target pairs (≤ 2 apps, ≤ 2 services each):
//! the planned steps, run in order on an in-memory model of the engine, reach the target; no
//! step removes a volume the target keeps, or anything a running container still uses; and
//! with an app's update lock held, the apply stops at the first step that needs the lock, with
//! that app's containers still running. Planning is about N³, so sizes and cases stay small.
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::model::device::{Device, DeviceTarget};
use crate::seek::messages::preview;

const CASES: u32 = 48;

#[derive(Debug, Clone)]
struct Svc {
    name: &'static str,
    image: &'static str,
    running: bool,
    data: bool,
    strategy: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct AppCase {
    release: &'static str,
    services: Vec<Svc>,
    /// Whether the `data` volume carries a label (a different volume config).
    data_labelled: bool,
    cache: bool,
}

#[derive(Debug, Clone)]
struct Case {
    current: BTreeMap<&'static str, AppCase>,
    target: BTreeMap<&'static str, AppCase>,
    locked: BTreeSet<&'static str>,
}

fn svc(name: &'static str) -> impl Strategy<Value = Svc> {
    (
        prop::sample::select(&["img:1", "img:2"][..]),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(
            &["kill-then-download", "delete-then-download", "hand-over"][..],
        )),
    )
        .prop_map(move |(image, running, data, strategy)| Svc {
            name,
            image,
            running,
            data,
            strategy,
        })
}

fn app_case() -> impl Strategy<Value = AppCase> {
    (
        prop::sample::select(&["r1", "r2"][..]),
        prop::option::of(svc("web")),
        prop::option::of(svc("db")),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(release, web, db, data_labelled, cache)| AppCase {
            release,
            services: web.into_iter().chain(db).collect(),
            data_labelled,
            cache,
        })
}

fn apps() -> impl Strategy<Value = BTreeMap<&'static str, AppCase>> {
    // Release uuids are unique across apps (container names are `<service>_<release>`).
    let own = |app: &'static str, mut a: AppCase| {
        a.release = match (app, a.release) {
            ("a", "r1") => "ra1",
            ("a", _) => "ra2",
            (_, "r1") => "rb1",
            _ => "rb2",
        };
        (app, a)
    };
    (prop::option::of(app_case()), prop::option::of(app_case())).prop_map(move |(a, b)| {
        let mut m = BTreeMap::new();
        m.extend(a.map(|a| own("a", a)));
        m.extend(b.map(|b| own("b", b)));
        m
    })
}

fn case() -> impl Strategy<Value = Case> {
    (apps(), apps(), any::<bool>(), any::<bool>()).prop_map(|(current, target, la, lb)| Case {
        current,
        target,
        locked: [("a", la), ("b", lb)]
            .into_iter()
            .filter_map(|(a, l)| l.then_some(a))
            .collect(),
    })
}

fn volume_config(labelled: bool) -> Value {
    if labelled {
        json!({"config": {"labels": {"x": "1"}}})
    } else {
        json!({"config": {}})
    }
}

fn service_json(s: &Svc, current: bool) -> Value {
    let labels = match s.strategy {
        Some(st) => json!({"io.balena.update.strategy": st}),
        None => json!({}),
    };
    let volumes = if s.data {
        json!([{"type": "volume", "source": "data", "target": "/data"}])
    } else {
        json!([])
    };
    let mut v = json!({"id": 1, "image": s.image, "running": s.running || current,
        "config": {"networks": {"default": {}}, "volumes": volumes, "labels": labels}});
    if current {
        v["container"] = json!({"id": "c", "name": "n", "created": "", "status": "running",
            "exit_code": 0, "health": "none", "started": true});
    }
    v
}

fn app_json(a: &AppCase, current: bool) -> Value {
    let services: serde_json::Map<String, Value> = a
        .services
        .iter()
        .map(|s| (s.name.to_string(), service_json(s, current)))
        .collect();
    let mut volumes = json!({"data": volume_config(a.data_labelled)});
    if a.cache {
        volumes["cache"] = volume_config(false);
    }
    json!({"id": 1, "name": "demo", "releases": {a.release: {"services": services}},
        "networks": {"default": {"config": {}}}, "volumes": volumes})
}

fn device(c: &BTreeMap<&'static str, AppCase>) -> Device {
    let images: serde_json::Map<String, Value> = c
        .values()
        .flat_map(|a| &a.services)
        .map(|s| {
            let id = format!("sha256:{}", s.image);
            (
                s.image.to_string(),
                json!({"oci_id": id, "download_progress": 100}),
            )
        })
        .collect();
    let apps: serde_json::Map<String, Value> = c
        .iter()
        .map(|(k, a)| (k.to_string(), app_json(a, true)))
        .collect();
    serde_json::from_value(json!({"images": images, "apps": apps})).expect("device JSON")
}

fn target(c: &BTreeMap<&'static str, AppCase>) -> DeviceTarget {
    let apps: serde_json::Map<String, Value> = c
        .iter()
        .map(|(k, a)| (k.to_string(), app_json(a, false)))
        .collect();
    serde_json::from_value(json!({"images": {}, "apps": apps})).expect("target JSON")
}

/// A container in the engine model.
#[derive(Debug, Clone, PartialEq)]
struct Container {
    app: &'static str,
    image: &'static str,
    running: bool,
    /// Engine names of the volumes and networks it uses.
    uses: BTreeSet<String>,
}

/// The engine as the steps see it: what exists, what runs, and which update locks are held.
#[derive(Debug, Default)]
struct Engine {
    images: BTreeSet<String>,
    containers: BTreeMap<String, Container>,
    volumes: BTreeMap<String, bool>,
    networks: BTreeSet<String>,
    locked: BTreeSet<&'static str>,
}

/// How a step run on the model ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Done,
    /// A step needed the update lock of this app (the real effect fails with `Locked`).
    Locked(String),
}

fn container_of(app: &'static str, a: &AppCase, s: &Svc, running: bool) -> (String, Container) {
    let mut uses = BTreeSet::from([format!("default_{app}")]);
    if s.data {
        uses.insert(format!("data_{app}"));
    }
    let c = Container {
        app,
        image: s.image,
        running,
        uses,
    };
    (format!("{}_{}", s.name, a.release), c)
}

fn quoted(step: &str) -> String {
    step.split('\'')
        .nth(1)
        .expect("a quoted object")
        .to_string()
}

impl Engine {
    fn new(c: &Case) -> Engine {
        let mut e = Engine {
            locked: c.locked.clone(),
            ..Default::default()
        };
        for (&app, a) in &c.current {
            for s in &a.services {
                e.images.insert(s.image.to_string());
                let (name, c) = container_of(app, a, s, true);
                e.containers.insert(name, c);
            }
            e.volumes.insert(format!("data_{app}"), a.data_labelled);
            if a.cache {
                e.volumes.insert(format!("cache_{app}"), false);
            }
            e.networks.insert(format!("default_{app}"));
        }
        e
    }

    fn in_use(&self, object: &str) -> Option<&String> {
        self.containers
            .iter()
            .find(|(_, c)| c.uses.contains(object))
            .map(|(n, _)| n)
    }

    /// Runs the steps in order; panics on a step the engine would refuse or that breaks a
    /// property, stops at the first step that needs a held lock.
    fn run(&mut self, c: &Case, steps: &[String]) -> Outcome {
        for step in steps {
            let app_of_container = |name: &str| self.containers.get(name).map(|c| c.app);
            if step.starts_with("pull image") {
                self.images.insert(quoted(step));
            } else if step.starts_with("remove image") {
                let image = quoted(step);
                let user = self.containers.iter().find(|(_, c)| c.image == image);
                assert!(user.is_none(), "{step}: used by {user:?}");
                self.images.remove(&image);
            } else if step.starts_with("create network") {
                assert!(self.networks.insert(quoted(step)), "{step}: exists");
            } else if step.starts_with("remove network") {
                let n = quoted(step);
                assert!(
                    self.in_use(&n).is_none(),
                    "{step}: in use by {:?}",
                    self.in_use(&n)
                );
                assert!(self.networks.remove(&n), "{step}: missing");
            } else if step.starts_with("create volume") {
                let v = quoted(step);
                let (name, app) = v.split_once('_').unwrap();
                let labelled = c.target[app].data_labelled && name == "data";
                assert!(self.volumes.insert(v, labelled).is_none(), "{step}: exists");
            } else if step.starts_with("remove volume") {
                let v = quoted(step);
                assert!(
                    self.in_use(&v).is_none(),
                    "{step}: in use by {:?}",
                    self.in_use(&v)
                );
                let (name, app) = v.split_once('_').unwrap();
                // Kept: the app stays and its target has the volume with the same config
                // (a volume only the current state has is kept too, see prepare_target).
                if let (Some(cur), Some(tgt)) = (c.current.get(app), c.target.get(app)) {
                    let changed = name == "data" && cur.data_labelled != tgt.data_labelled;
                    assert!(changed, "{step}: the target keeps it");
                }
                assert!(self.volumes.remove(&v).is_some(), "{step}: missing");
            } else if step.starts_with("create container") {
                let name = quoted(step);
                let (svc, rel) = name.split_once('_').unwrap();
                let (&app, a) = c
                    .target
                    .iter()
                    .find(|(_, a)| a.release == rel && a.services.iter().any(|s| s.name == svc))
                    .expect("a created container is a target service");
                let s = a.services.iter().find(|s| s.name == svc).unwrap();
                assert!(
                    self.images.contains(s.image),
                    "{step}: image {} missing",
                    s.image
                );
                let (name, ctr) = container_of(app, a, s, false);
                for o in &ctr.uses {
                    assert!(
                        self.volumes.contains_key(o) || self.networks.contains(o),
                        "{step}: {o} missing"
                    );
                }
                assert!(
                    self.containers.insert(name, ctr).is_none(),
                    "{step}: exists"
                );
            } else if step.starts_with("start container") {
                let ctr = self
                    .containers
                    .get_mut(&quoted(step))
                    .expect("started exists");
                ctr.running = true;
            } else if step.starts_with("stop container") || step.starts_with("remove container") {
                let name = quoted(step);
                let app = app_of_container(&name).expect("stopped/removed exists");
                if self.locked.contains(app) {
                    return Outcome::Locked(app.to_string());
                }
                if step.starts_with("stop") {
                    self.containers.get_mut(&name).unwrap().running = false;
                } else {
                    let ctr = self.containers.remove(&name).unwrap();
                    assert!(!ctr.running, "{step}: still running");
                }
            } else if !(step.starts_with("record app")
                || step.starts_with("update app")
                || step.starts_with("forget app")
                || step.starts_with("begin release")
                || step.starts_with("end release")
                || step.starts_with("wait for the hand-over"))
            {
                panic!("unknown step {step:?}");
            }
        }
        Outcome::Done
    }

    /// The engine objects the target asks for.
    fn assert_reached(&self, c: &Case) {
        let mut want = BTreeMap::new();
        for (&app, a) in &c.target {
            for s in &a.services {
                let (name, ctr) = container_of(app, a, s, s.running);
                want.insert(name, ctr);
            }
        }
        assert_eq!(self.containers, want, "containers");
        for (&app, a) in &c.target {
            assert_eq!(
                self.volumes.get(&format!("data_{app}")),
                Some(&a.data_labelled)
            );
            if a.cache {
                assert!(self.volumes.contains_key(&format!("cache_{app}")));
            }
            assert!(self.networks.contains(&format!("default_{app}")));
            for s in &a.services {
                assert!(self.images.contains(s.image), "image {}", s.image);
            }
        }
    }
}

fn plan(c: &Case) -> Vec<String> {
    preview(super::worker(), device(&c.current), target(&c.target))
        .unwrap_or_else(|e| panic!("no plan: {e:?}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn the_plan_reaches_the_target_and_respects_locks(c in case()) {
        let steps = plan(&c);
        // Without locks: every step is one the engine accepts, and the end is the target.
        let mut free = Engine::new(&c);
        free.locked.clear();
        assert_eq!(free.run(&c, &steps), Outcome::Done, "{steps:#?}");
        free.assert_reached(&c);

        // With locks: the apply stops at the first step that needs a held lock, before any
        // container of a locked app was stopped or removed.
        let mut held = Engine::new(&c);
        let outcome = held.run(&c, &steps);
        for (name, ctr) in Engine::new(&c).containers {
            if c.locked.contains(ctr.app) {
                prop_assert_eq!(held.containers.get(&name).map(|c| c.running), Some(true),
                    "{} of a locked app: {:?}\n{:#?}", name, outcome, steps);
            }
        }
        if outcome == Outcome::Done {
            held.assert_reached(&c);
        }
    }
}
