//! Wire formats: pure, panic-free views over bytes from the network or the
//! TUN device, each with a fuzz target in `fuzz/`.
//!
//! [`convert`] is the connect header (RFC 8803 layout plus mpbond's
//! authentication TLV); [`probe`] is the authenticated UDP echo that tells
//! the client whether an uplink still reaches the concentrator.
//! [`tunnel`] is the datagram tunnel's messages on the concentrator's one
//! UDP port (handshake, cookie reply, data) and the payloads inside data
//! messages (IP packets and the path probe control message).
//!
//! The packets the client reads from its TUN device, one module per
//! protocol as smoltcp's `wire` has them: [`ipv4`], [`ipv6`] and [`tcp`]
//! are checked views of one header each, [`icmp`] the ICMP messages, and
//! [`checksum`] the Internet checksum with RFC 1624 incremental updates.
//! [`ip`] joins them for the redirect: [`classify`] sorts packets by
//! protocol, [`TcpPacket`] is an IPv4 or IPv6 packet carrying one TCP
//! segment, rewritten in place; [`build_rst_for`] and
//! [`build_icmp_unreachable_for`] answer a LAN host when the tunnel
//! refuses a connection.
//!
//! For the datagram tunnel: [`udp`] is the checked UDP header view, and
//! [`flow`] sorts every packet that is not TCP into flows ([`flow_of`]),
//! telling DNS and QUIC apart, and [`build_icmp_port_unreachable_for`]
//! refuses QUIC when the config blocks it; [`fragment`] decides what
//! becomes of a packet larger than the tunnel's MTU (cut into IPv4
//! fragments, or refused with [`build_icmp_too_big_for`]).
//!
//! [`vnet`] is the virtio-net header in front of every packet of a TUN with
//! offloads (super-packets, partial checksums); [`coalesce`] joins a flow's
//! consecutive UDP datagrams into super-packets written to such a TUN.

pub mod checksum;
pub mod coalesce;
pub mod convert;
pub mod flow;
pub mod fragment;
pub mod icmp;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod probe;
pub mod tcp;
pub mod tunnel;
pub mod udp;
pub mod vnet;

#[cfg(test)]
pub(crate) mod test_packets;

pub use flow::{flow_of, Demux, Flow, FlowError, FlowKey};
pub use icmp::{
    build_icmp_port_unreachable_for, build_icmp_too_big_for, build_icmp_unreachable_for,
};
pub use ip::{classify, PacketError, Protocol, TcpPacket};
pub use tcp::{build_rst_for, TcpFlags};

/// The `N` bytes at `at`, if the buffer has them.
fn bytes<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The byte at `at`, or 0 past the end. Views read only what `new_checked`
/// made sure is there; the 0 keeps even a misuse from panicking.
fn byte(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}

/// The big-endian 16-bit word at `at`, or 0 past the end.
fn be16(buf: &[u8], at: usize) -> u16 {
    bytes(buf, at).map_or(0, u16::from_be_bytes)
}

/// The big-endian 32-bit word at `at`, or 0 past the end.
fn be32(buf: &[u8], at: usize) -> u32 {
    bytes(buf, at).map_or(0, u32::from_be_bytes)
}
