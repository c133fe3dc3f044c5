//! Tests that drive the test engine (run one at a time: nextest test group `engine`).
mod actions;
mod apply;
pub mod infra_smoke;
mod remote;
mod strategies;
mod supervision;
