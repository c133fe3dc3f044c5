//! Cloud port: the balena API over HTTPS (awc + rustls with the ring provider): target poll,
//! state report, registration and the key exchange (spec/target-state-v3.md §1,
//! spec/state-report-v3.md §1, spec/registration.md §4-§5).
//!
//! Keys are passed per call, sent as sensitive headers, and never appear in logs, in `Display`
//! or in `Debug`; a body snippet kept in an error has the call's key replaced by `<redacted>`.
//! `Cloud` holds one `awc::Client` (connection pool, keep-alive): its futures are `!Send`, so
//! use it only on the actix System thread (actors, `actix::spawn`), never in `tokio::spawn`.
//!
//! Submodules: client (settings, TLS, one exchange), requests (one per endpoint), errors.
mod client;
mod errors;
mod requests;
#[cfg(test)]
mod tests;

pub use client::{tls_config, Cloud, CloudSettings};
pub use errors::{parse_retry_after, CloudError};
pub use requests::{DeviceTag, Fetched, RegisterRequest, RegisterResponse};
