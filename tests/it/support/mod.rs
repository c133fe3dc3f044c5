//! Test support: real infrastructure, fakes and helpers.
pub mod agent;
pub mod fake_cloud;
pub mod fake_host;
pub mod fake_legacy;
pub mod infra;
pub mod relay;
pub mod serve;
pub mod tcp_relay;
