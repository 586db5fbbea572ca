//! mpbond: bond every uplink of a site into one connection with kernel MPTCP.
//!
//! The crate is a library plus one binary (`src/main.rs`). Protocol and queue
//! logic are pure (no sockets, no clock); drivers move bytes between them and
//! the system. All `unsafe` lives in [`sys`].

pub mod auth;
mod chain;
pub mod client;
pub mod clock;
pub mod concentrator;
pub mod config;
pub mod control;
pub mod crypto;
pub mod datagram;
#[cfg(test)]
mod fuzz_seeds;
mod log_budget;
pub mod logging;
pub mod nofile;
pub mod path;
mod relay;
pub mod reload;
pub mod sendbuf;
#[allow(unsafe_code)]
pub mod sys;
pub mod udp;
pub mod wire;
