//! Device tags written through the local API and pushed to the cloud
//! (spec/state-report-v3.md §9): `PATCH {endpoint}/device/v3/tags` with `{uuid: {key: value}}`,
//! only keys whose value differs from the last reported one, at most one PATCH per 10 s,
//! retried with backoff. Both the pending and the reported maps live in the store, so pending
//! tags survive restarts and are sent at start.
//!
//! Both maps are bounded ([`MAX_TAGS`], [`MAX_BYTES`]): a write that would take the pending
//! tags beyond the bound is refused whole (the caller sees an error, and nothing it was told
//! is stored gets dropped); the reported map, only a cache of what needs no resending, is
//! reset to the latest batch when it outgrows the bound.
use std::sync::Mutex;

use log::{info, warn};
use serde_json::{Map, Value};

use crate::ports::store::{Durability, Store, StoreError};

/// Most tags pending (or remembered as reported) at once.
pub const MAX_TAGS: usize = 1000;
/// Most bytes of pending (or reported) tags, as stored JSON.
pub const MAX_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TagsError {
    #[error("too many device tags waiting to be sent: {tags} tags, {bytes} bytes with this request (at most {MAX_TAGS} tags, {MAX_BYTES} bytes); retry once the cloud took the pending ones")]
    Full { tags: usize, bytes: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// (tag count, JSON bytes) of a tag map when over the bounds.
fn over_bounds(tags: &Map<String, Value>) -> Option<(usize, usize)> {
    let bytes = serde_json::to_vec(tags).map_or(usize::MAX, |b| b.len());
    (tags.len() > MAX_TAGS || bytes > MAX_BYTES).then_some((tags.len(), bytes))
}

/// Tags written locally and not yet sent.
pub const PENDING_KEY: &str = crate::ports::store::keys::TAGS_PENDING;
/// Tags the cloud acknowledged.
pub const REPORTED_KEY: &str = crate::ports::store::keys::TAGS_REPORTED;

/// Serialises every read-modify-write of the tag maps (the API queues, the report settles).
static TAGS: Mutex<()> = Mutex::new(());

fn read(store: &Store, key: &str) -> Result<Map<String, Value>, StoreError> {
    Ok(match store.get_json(key)? {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    })
}

/// Merges `tags` into the pending ones (the API's `PATCH /v2/device/tags`); refused whole with
/// [`TagsError::Full`] when the pending tags would exceed the bounds.
pub fn queue(store: &Store, tags: Map<String, Value>) -> Result<(), TagsError> {
    let _guard = TAGS.lock().unwrap_or_else(|e| e.into_inner());
    let mut pending = read(store, PENDING_KEY)?;
    let added = tags.len();
    pending.extend(tags);
    if let Some((tags, bytes)) = over_bounds(&pending) {
        warn!(actor = "report", tags, bytes, added, max_tags = MAX_TAGS, max_bytes = MAX_BYTES,
            decision = "refuse", reason = "pending tags beyond the bound"; "Device tags not queued");
        return Err(TagsError::Full { tags, bytes });
    }
    Ok(store.put_json(PENDING_KEY, &Value::Object(pending), Durability::Flush)?)
}

/// What to send now: pending tags whose value differs from the reported one. Tags already
/// reported with that value are dropped from the queue.
pub fn to_send(store: &Store) -> Result<Map<String, Value>, StoreError> {
    let _guard = TAGS.lock().unwrap_or_else(|e| e.into_inner());
    let pending = read(store, PENDING_KEY)?;
    let reported = read(store, REPORTED_KEY)?;
    let (send, _) = split(&pending, &reported);
    if send.len() != pending.len() {
        store.put_json(PENDING_KEY, &Value::Object(send.clone()), Durability::Flush)?;
    }
    Ok(send)
}

/// The cloud took `sent`: they are reported now, and leave the queue unless they changed again
/// meanwhile.
pub fn settle(store: &Store, sent: &Map<String, Value>) -> Result<(), StoreError> {
    let _guard = TAGS.lock().unwrap_or_else(|e| e.into_inner());
    let mut reported = read(store, REPORTED_KEY)?;
    reported.extend(sent.clone());
    if let Some((tags, bytes)) = over_bounds(&reported) {
        info!(actor = "report", tags, bytes, kept = sent.len(), decision = "reset",
            reason = "reported tags beyond the bound: older ones are sent again if set again"; "Reported tags trimmed");
        reported = sent.clone();
    }
    store.put_json(
        REPORTED_KEY,
        &Value::Object(reported.clone()),
        Durability::Flush,
    )?;
    let (pending, _) = split(&read(store, PENDING_KEY)?, &reported);
    store.put_json(PENDING_KEY, &Value::Object(pending), Durability::Flush)
}

/// (still to send, already reported) of `pending`.
fn split(
    pending: &Map<String, Value>,
    reported: &Map<String, Value>,
) -> (Map<String, Value>, Map<String, Value>) {
    pending
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, v)| reported.get(k) != Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_pending_tags_are_bounded_and_a_refused_write_keeps_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let many = |from: usize, n: usize| -> Map<String, Value> {
            (from..from + n)
                .map(|i| (format!("k{i}"), json!("v")))
                .collect()
        };
        queue(&store, many(0, MAX_TAGS)).unwrap();
        let e = queue(&store, many(MAX_TAGS, 1)).unwrap_err();
        assert!(
            matches!(e, TagsError::Full { tags, .. } if tags == MAX_TAGS + 1),
            "{e}"
        );
        // Changing a pending tag does not grow the queue.
        queue(&store, map(json!({"k0": "w"}))).unwrap();
        let pending = to_send(&store).unwrap();
        assert_eq!(pending.len(), MAX_TAGS);
        assert_eq!(pending["k0"], json!("w"));

        // Bytes too: one huge value.
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let e = queue(&store, map(json!({"big": "x".repeat(MAX_BYTES)}))).unwrap_err();
        assert!(matches!(e, TagsError::Full { tags: 1, .. }), "{e}");
        assert!(to_send(&store).unwrap().is_empty());

        // The reported map does not grow past the bound either.
        queue(&store, many(0, MAX_TAGS)).unwrap();
        settle(&store, &to_send(&store).unwrap()).unwrap();
        queue(&store, many(MAX_TAGS, 10)).unwrap();
        let sent = to_send(&store).unwrap();
        settle(&store, &sent).unwrap();
        assert_eq!(read(&store, REPORTED_KEY).unwrap(), sent);
    }

    #[test]
    fn only_changed_tags_are_sent_and_settled_ones_leave_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        queue(&store, map(json!({"a": "1", "b": "2"}))).unwrap();
        let sent = to_send(&store).unwrap();
        assert_eq!(Value::Object(sent.clone()), json!({"a": "1", "b": "2"}));
        // Changed again while in flight: stays pending with the new value.
        queue(&store, map(json!({"b": "3"}))).unwrap();
        settle(&store, &sent).unwrap();
        assert_eq!(Value::Object(to_send(&store).unwrap()), json!({"b": "3"}));
        // A tag set to its reported value is dropped.
        queue(&store, map(json!({"a": "1"}))).unwrap();
        assert_eq!(Value::Object(to_send(&store).unwrap()), json!({"b": "3"}));
        assert_eq!(
            store.get_json(PENDING_KEY).unwrap(),
            Some(json!({"b": "3"}))
        );
    }
}
