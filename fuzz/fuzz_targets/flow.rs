//! Fuzzes the datagram tunnel's packet classification: `wire::flow_of`,
//! the UDP view (`wire::udp`) and the port unreachable that refuses QUIC.
//!
//! Besides "no panic", it checks what the scheduler relies on: a key's
//! addresses are of the packet's IP family, DNS and QUIC are only ever
//! UDP with ports, the same bytes always give the same key, and a built
//! port unreachable is an ICMP packet of at most 1280 bytes that is never
//! answered in turn. For packets over the tunnel's MTU (`wire::fragment`,
//! the MTU taken from the input's last two bytes): every fragment fits
//! and parses, together they carry the datagram's payload, and the "too
//! big" error is as well-behaved as the port unreachable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mpbond::wire::fragment::{fit, Fit, Fragments};
use mpbond::wire::{
    build_icmp_port_unreachable_for, build_icmp_too_big_for, classify, flow_of, udp, Demux,
    Protocol,
};

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

    if let [.., hi, lo] = data {
        let mtu = 28 + usize::from(u16::from_be_bytes([*hi, *lo]) % 2000);
        match fit(data, mtu) {
            Fit::Send => {}
            Fit::Refuse => {
                if let Some(icmp) = build_icmp_too_big_for(data, mtu as u16) {
                    assert_eq!(classify(&icmp), Protocol::Icmp);
                    assert!(icmp.len() <= 1280);
                    assert_eq!(build_icmp_too_big_for(&icmp, 68), None);
                }
            }
            Fit::Fragment => {
                let mut fragments = Fragments::new(data, mtu).expect("fit said so");
                let count = fragments.count();
                let mut out = vec![0; mtu];
                let (mut pieces, mut carried) = (0, 0);
                while let Some(len) = fragments.next_into(&mut out) {
                    assert!(len <= mtu && len > 20);
                    assert_ne!(classify(&out[..len]), Protocol::Invalid);
                    pieces += 1;
                    carried += len - 20;
                }
                assert_eq!(pieces, count);
                let total = usize::from(u16::from_be_bytes([data[2], data[3]]));
                assert_eq!(carried, total - 20);
            }
        }
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
