//! The multipath datagram tunnel's pure parts.
//!
//! Everything the client's TUN reads that is not TCP rides the datagram
//! tunnel: AEAD-sealed IP packets over UDP on each uplink (see
//! `../shared/DESIGN.md`, "The datagram tunnel"). This module holds what
//! decides, for each packet, which uplinks carry it: [`schedule`], a
//! sans-IO scheduler fed by the path core's estimates (`crate::path`) with
//! `now` passed in. Packets are sorted into flows by
//! [`crate::wire::flow_of`]; the driver that reads the TUN, seals packets
//! and sends them is built on top and is not here.

pub mod schedule;

pub use schedule::{
    Decision, Mode, PathId, PathSettings, Paths, PortSet, QuicPolicy, ScheduleError, Scheduler,
    SchedulerConfig, Stats, MAX_PATHS, MAX_REDUNDANT_PORTS,
};
