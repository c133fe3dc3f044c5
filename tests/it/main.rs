//! Integration tests of helios: the real binary, the real engine, registry and bus (started by
//! `scripts/test`), and fakes only of the cloud and the legacy supervisor. Tests that drive an
//! agent against the engine live in `engine::` and run one at a time (nextest group `engine`).
mod architecture;
mod capabilities;
mod cli;
mod deploy;
mod device_api_auth;
mod engine;
mod fake_cloud_selftest;
mod hostile_api;
mod infra_smoke;
mod lifecycle;
mod proxy;
mod remote_limits;
mod support;
mod tags;
