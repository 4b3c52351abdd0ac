//! Integration tests of the WeChat simulator, through real HTTP (reqwest) against
//! `Simulator::start(.., "127.0.0.1:0")`. One test binary (modules under `tests/sim/`) so
//! that everything links once. Durations are shortened so the whole suite runs in seconds;
//! timing assertions keep generous margins (never "at most X ms").

mod common;

mod admin_http;
mod business;
mod classic;
mod config;
mod evidence;
mod faults;
mod generated;
mod lifecycle;
mod stable;
mod ticket;
