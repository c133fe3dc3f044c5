//! helios actors: the five supervised actors, their messages, the model, and the narrow ports to
//! the outside world (engine, cloud, system bus, store). Only `src/` knows sockets, flags and env.
pub mod bus;
pub mod host;
pub mod metrics;
pub mod model;
pub mod poll;
pub mod ports;
pub mod proxy;
pub mod report;
pub mod seek;
pub mod supervise;

use std::path::PathBuf;

/// Where and how the store is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    pub dir: PathBuf,
    pub cache_capacity: u64,
}

/// 32 random lowercase hex characters (a uuid v4 without dashes, as upstream generates).
pub fn random_hex32() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prints an error with its whole source chain on one line, for log fields.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

/// A key that must never reach a log: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A uniformly random duration in `0..=max`.
pub fn jitter(max: std::time::Duration) -> std::time::Duration {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source is available");
    let ms = max.as_millis() as u64;
    if ms == 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::from_millis(u64::from_le_bytes(b) % (ms + 1))
}
