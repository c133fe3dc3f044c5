//! Tests that drive the test engine (run one at a time: nextest test group `engine`).
mod actions;
mod apply;
mod crash;
mod device_api;
mod faults;
mod host_config;
mod hup;
mod image;
pub mod infra_smoke;
mod power;
mod proxy;
mod remote;
mod strategies;
mod supervision;
mod supervisor_api;
mod takeover;
