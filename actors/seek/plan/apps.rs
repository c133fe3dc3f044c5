//! App jobs (their records in the store) and release jobs (in the model only).
use mahler::extract::{Args, Res, Target, View};
use mahler::task::{enforce, with_io, IO};

use crate::model::device::{App, Release};
use crate::ports::store::Durability;

use super::effects::{Effects, StepError};
use super::APPS_KEY;

fn save_app_record(
    fx: &Effects,
    uuid: &str,
    app: Option<(u32, Option<String>)>,
) -> Result<(), StepError> {
    let mut records = fx
        .store
        .get_json(APPS_KEY)?
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    match app {
        Some((id, name)) => {
            records.insert(
                uuid.to_string(),
                serde_json::json!({"id": id, "name": name}),
            );
        }
        None => {
            records.remove(uuid);
        }
    }
    fx.store.put_json(
        APPS_KEY,
        &serde_json::Value::Object(records),
        Durability::Flush,
    )?;
    Ok(())
}

pub(super) fn create_app(
    app: View<Option<App>>,
    Args(uuid): Args<String>,
    Target(tgt): Target<App>,
    fx: Res<Effects>,
) -> IO<App, StepError> {
    enforce!(app.is_none(), "app {uuid} exists");
    let app = app.create(App {
        id: tgt.id,
        name: tgt.name.clone(),
        ..Default::default()
    });
    with_io(app, move |app| async move {
        if let Some(fx) = fx.as_ref() {
            save_app_record(fx, &uuid, Some((app.id, app.name.clone())))?;
        }
        Ok(app)
    })
}

pub(super) fn update_app(
    mut app: View<App>,
    Args(uuid): Args<String>,
    Target(tgt): Target<App>,
    fx: Res<Effects>,
) -> IO<App, StepError> {
    enforce!(
        app.id != tgt.id || app.name != tgt.name,
        "app {uuid} metadata unchanged"
    );
    app.id = tgt.id;
    app.name = tgt.name.clone();
    with_io(app, move |app| async move {
        if let Some(fx) = fx.as_ref() {
            save_app_record(fx, &uuid, Some((app.id, app.name.clone())))?;
        }
        Ok(app)
    })
}

pub(super) fn remove_app(
    mut app: View<Option<App>>,
    Args(uuid): Args<String>,
    fx: Res<Effects>,
) -> IO<Option<App>, StepError> {
    let Some(a) = app.as_ref() else {
        return IO::abort("app is gone");
    };
    enforce!(
        a.releases.is_empty() && a.networks.is_empty() && a.volumes.is_empty(),
        "app {uuid} still has objects"
    );
    app.take();
    with_io(app, move |app| async move {
        if let Some(fx) = fx.as_ref() {
            save_app_record(fx, &uuid, None)?;
            fx.locks.release(&uuid);
        }
        Ok(app)
    })
}

pub(super) fn create_release(rel: View<Option<Release>>) -> IO<Release, StepError> {
    enforce!(rel.is_none(), "release exists");
    let rel = rel.create(Release::default());
    with_io(rel, |rel| async move { Ok(rel) })
}

pub(super) fn remove_release(mut rel: View<Option<Release>>) -> IO<Option<Release>, StepError> {
    enforce!(
        rel.as_ref().is_some_and(|r| r.services.is_empty()),
        "release still has services"
    );
    rel.take();
    with_io(rel, |rel| async move { Ok(rel) })
}
