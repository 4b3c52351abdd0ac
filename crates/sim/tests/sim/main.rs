//! Integration tests of the WeChat simulator, through real HTTP (reqwest) against
//! `Simulator::start(.., "127.0.0.1:0")`. One test binary (modules under `tests/sim/`) so
//! that everything links once. `Harness::start` pauses the simulator clock, so simulator time
//! moves only by `Harness::advance` (`Admin::advance`), however loaded the machine: no test sleeps for
//! simulator time to pass, and window edges are checked exactly (1 ns before and at the edge).
//! Only `faults::without_advances_the_clock_is_real_time` waits (250 ms) on purpose, to show
//! that an unscripted clock is real time. Other waits are for real I/O (until a request has
//! reached the server, or 100 ms to see that a held request is still held); upper bounds on
//! real time are generous (10 s) and only catch hangs.

mod common;

mod admin_http;
mod authorizer;
mod business;
mod classic;
mod component;
mod config;
mod evidence;
mod faults;
mod generated;
mod lifecycle;
mod stable;
mod ticket;
mod wecom;
