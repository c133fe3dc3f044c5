//! Test support: real infrastructure, fakes and helpers.
pub mod agent;
pub mod fake_cloud;
pub mod fake_legacy;
pub mod fake_login1;
pub mod infra;
pub mod relay;
