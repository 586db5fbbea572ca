//! Fuzzes the datagram tunnel's packet classification: `wire::flow_of`,
//! the UDP view (`wire::udp`) and the port unreachable that refuses QUIC.
//!
//! Besides "no panic", it checks what the scheduler relies on: a key's
//! addresses are of the packet's IP family, DNS and QUIC are only ever
//! UDP with ports, the same bytes always give the same key, and a built
//! port unreachable is an ICMP packet of at most 1280 bytes that is never
//! answered in turn.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mpbond::wire::{build_icmp_port_unreachable_for, classify, flow_of, udp, Demux, Protocol};

fuzz_target!(|data: &[u8]| {
    if let Ok(datagram) = udp::Packet::new_checked(data) {
        let _ = (datagram.src_port(), datagram.dst_port());
        let _ = (datagram.len_field(), datagram.checksum());
        assert_eq!(datagram.payload().len() + udp::HEADER_LEN, data.len());
    }

    if let Some(icmp) = build_icmp_port_unreachable_for(data) {
        assert_eq!(classify(&icmp), Protocol::Icmp);
        assert!(icmp.len() <= 1280);
        assert!(flow_of(&icmp).is_ok());
        assert_eq!(build_icmp_port_unreachable_for(&icmp), None);
    }

    let Ok(flow) = flow_of(data) else {
        return;
    };
    let version = data[0] >> 4;
    assert_eq!(flow.key.src.is_ipv6(), version == 6);
    assert_eq!(flow.key.dst.is_ipv6(), version == 6);
    if flow.dns || flow.quic {
        assert_eq!(flow.key.protocol, 17);
        assert!(matches!(flow.key.demux, Demux::Ports { .. }));
    }
    assert_eq!(flow_of(data), Ok(flow));
});
