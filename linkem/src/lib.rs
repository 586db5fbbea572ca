//! The lab's link emulator: joins two Ethernet interfaces in userspace and
//! applies rate, delay, jitter, loss or a delivery trace to each direction.
//!
//! [`model`] is the pure queueing model (fake-clock tested), [`profile`]
//! parses and validates link profiles and traces, [`driver`] moves frames
//! between AF_PACKET sockets and the model and serves live commands. All
//! `unsafe` lives in [`sys`].

pub mod driver;
pub mod model;
pub mod profile;
#[allow(unsafe_code)]
pub mod sys;
