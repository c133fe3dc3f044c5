//! Image jobs: pull what the target wants (as its update strategies allow), remove what is unused.
use mahler::extract::{Args, Res, System, SystemTarget, View};
use mahler::task::{enforce, with_io, IO};

use crate::model::compose::UpdateStrategy;
use crate::model::device::{Device, Image};
use crate::ports::store::Durability;

use super::effects::{step, Effects, StepError};
use super::query::{image_in_use, other_release_has, target_images, target_service};
use super::IMAGES_KEY;

pub(super) fn pull_image(
    img: View<Option<Image>>,
    Args(image): Args<String>,
    System(dev): System<Device>,
    SystemTarget(tgt): SystemTarget<Device>,
    fx: Res<Effects>,
) -> IO<Image, StepError> {
    enforce!(img.is_none(), "image {image} is already present");
    let wanted = target_images(&tgt);
    for (app, svc) in wanted.get(&image).into_iter().flatten() {
        if let Some((rel, s)) = target_service(&tgt, app, svc) {
            let strategy = s.config.update_strategy();
            if matches!(
                strategy,
                UpdateStrategy::KillThenDownload | UpdateStrategy::DeleteThenDownload
            ) {
                enforce!(
                    !other_release_has(&dev, app, rel, svc),
                    "{strategy:?}: the old container of {svc} goes first"
                );
            }
            if strategy == UpdateStrategy::DeleteThenDownload {
                let removable = dev
                    .images
                    .keys()
                    .any(|i| !wanted.contains_key(i) && !image_in_use(&dev, i));
                enforce!(!removable, "delete-then-download: unused images go first");
            }
        }
    }
    // What the planner sees: the image is there afterwards.
    let img = img.create(Image {
        oci_id: Some(String::new()),
        download_progress: 100,
    });
    with_io(img, move |mut img| async move {
        let Some(fx) = fx.as_ref() else {
            return Ok(img);
        };
        img.oci_id = None;
        img.download_progress = 0;
        img.flush().await.ok();
        let id = step("pull", "", "", &image, async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let pull = fx.engine.pull(&image, move |p| {
                let _ = tx.send(p);
            });
            tokio::pin!(pull);
            loop {
                tokio::select! {
                    r = &mut pull => break r.map_err(StepError::from),
                    Some(p) = rx.recv() => {
                        img.download_progress = p.min(99);
                        img.flush().await.ok();
                    }
                }
            }
        })
        .await?;
        img.oci_id = Some(id);
        img.download_progress = 100;
        let mut pulled: Vec<String> = fx
            .store
            .get_json(IMAGES_KEY)?
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        if !pulled.contains(&image) {
            pulled.push(image.clone());
            fx.store
                .put_json(IMAGES_KEY, &serde_json::json!(pulled), Durability::Flush)?;
        }
        Ok(img)
    })
}

pub(super) fn remove_image(
    mut img: View<Option<Image>>,
    Args(image): Args<String>,
    System(dev): System<Device>,
    fx: Res<Effects>,
) -> IO<Option<Image>, StepError> {
    enforce!(img.is_some(), "image {image} is not there");
    enforce!(!image_in_use(&dev, &image), "image {image} is still used");
    img.take();
    with_io(img, move |img| async move {
        if let Some(fx) = fx.as_ref() {
            step("remove image", "", "", &image, async {
                fx.engine.remove_image(&image).await?;
                let pulled: Vec<String> = fx
                    .store
                    .get_json(IMAGES_KEY)?
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default();
                let left: Vec<String> = pulled.into_iter().filter(|i| *i != image).collect();
                fx.store
                    .put_json(IMAGES_KEY, &serde_json::json!(left), Durability::Flush)?;
                Ok(())
            })
            .await?;
        }
        Ok(img)
    })
}
