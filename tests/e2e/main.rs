//! End-to-end tests: a real `redis-server`, the simulator over HTTP, and
//! refresher replicas as real `wxtoken run` processes. One test binary with a
//! module per area (linking one binary instead of one per file keeps CI
//! short); `cargo test --test e2e scheduler::` runs one area.

mod common;

mod acl;
mod authorizers;
mod cli_authorizers;
mod cli_config;
mod cli_ops;
mod client_e2e;
mod cluster;
mod component;
mod deploy;
mod exactly_once;
mod failover;
mod http_limits;
mod http_surface;
mod passive;
mod platform;
mod platform_hostile;
mod process;
mod readers;
mod redis_outage;
mod scheduler;
mod sentinel;
mod startup_checks;
mod status_component;
mod status_scale;
mod suite;
mod tls;
mod wechat_faults;
mod wecom;
