//! Device tags written through the local API and pushed to the cloud
//! (spec/state-report-v3.md §9): `PATCH {endpoint}/device/v3/tags` with `{uuid: {key: value}}`,
//! only keys whose value differs from the last reported one, at most one PATCH per 10 s,
//! retried with backoff. Both the pending and the reported maps live in the store, so pending
//! tags survive restarts and are sent at start.
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::ports::store::{Durability, Store, StoreError};

/// Tags written locally and not yet sent.
pub const PENDING_KEY: &str = "tags/pending";
/// Tags the cloud acknowledged.
pub const REPORTED_KEY: &str = "tags/reported";

/// Serialises every read-modify-write of the tag maps (the API queues, the report settles).
static TAGS: Mutex<()> = Mutex::new(());

fn read(store: &Store, key: &str) -> Result<Map<String, Value>, StoreError> {
    Ok(match store.get_json(key)? {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    })
}

/// Merges `tags` into the pending ones (the API's `PATCH /v2/device/tags`).
pub fn queue(store: &Store, tags: Map<String, Value>) -> Result<(), StoreError> {
    let _guard = TAGS.lock().unwrap_or_else(|e| e.into_inner());
    let mut pending = read(store, PENDING_KEY)?;
    pending.extend(tags);
    store.put_json(PENDING_KEY, &Value::Object(pending), Durability::Flush)
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
