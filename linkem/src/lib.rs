//! The lab's link emulator: joins two Ethernet interfaces in userspace and
//! applies rate, delay, jitter, loss (random or in bursts) or a delivery
//! trace to each direction.
//!
//! [`model`] is the pure queueing model (fake-clock tested), [`gen`] makes
//! bursty cellular delivery traces from a seeded model, [`profile`] parses
//! and validates link profiles and traces, [`driver`] moves frames between
//! AF_PACKET sockets and the model and serves live commands. All `unsafe`
//! lives in [`sys`].

pub mod driver;
pub mod gen;
pub mod model;
pub mod profile;
#[allow(unsafe_code)]
pub mod sys;
