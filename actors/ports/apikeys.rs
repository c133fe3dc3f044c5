//! Device API keys (spec/device-api.md §2): the global key and the keys scoped to one app that
//! containers with the `io.balena.features.supervisor-api` label receive.
use std::sync::{Arc, Mutex};

/// What a key may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every app, and the device-wide endpoints.
    Global,
    /// Only this app (legacy numeric app id), and the device-wide endpoints.
    App(u32),
}

#[derive(Default)]
struct Inner {
    global: Option<crate::Secret>,
}

/// The keys the device API accepts. Cheap to clone.
#[derive(Clone, Default)]
pub struct ApiKeys {
    inner: Arc<Mutex<Inner>>,
    required: bool,
}

impl ApiKeys {
    /// Keys are required: the device is managed, or a key was configured.
    pub fn new(global: &str, required: bool) -> ApiKeys {
        ApiKeys {
            inner: Arc::new(Mutex::new(Inner {
                global: Some(crate::Secret::new(global)),
            })),
            required,
        }
    }

    /// Whether requests must present a key (spec §2.1: not when unmanaged or in local mode).
    pub fn required(&self) -> bool {
        self.required
    }

    /// The scope of a presented key, if it is one of ours.
    pub fn lookup(&self, key: &str) -> Option<Scope> {
        let inner = self.inner.lock().expect("key table is not poisoned");
        inner
            .global
            .as_ref()
            .filter(|g| constant_time_eq(g.expose().as_bytes(), key.as_bytes()))
            .map(|_| Scope::Global)
    }
}

/// Compares without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
