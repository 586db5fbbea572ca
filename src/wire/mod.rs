//! Wire formats: pure, panic-free views over bytes from the network or the
//! TUN device, each with a fuzz target in `fuzz/`.
//!
//! [`convert`] is the connect header (RFC 8803 layout plus mpbond's
//! authentication TLV); [`packet`] is the IP/TCP view and in-place rewrite
//! the client's redirect uses; [`probe`] is the authenticated UDP echo that
//! tells the client whether an uplink still reaches the concentrator.

pub mod convert;
pub mod packet;
pub mod probe;
