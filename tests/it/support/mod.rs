//! Test support: real infrastructure, fakes and helpers.
pub mod agent;
pub mod infra;
pub mod relay;
