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
//! big" error is as well-behaved as the port unreachable. For the TUN's
//! UDP super-packets (`wire::coalesce`): a datagram that may join others,
//! made the first of a super-packet of itself alone, gets back its own
//! headers (but the UDP checksum, partial, and the lengths of its
//! payload), and nothing with another size of payload joins it; a
//! super-packet cut up (`coalesce::split`) gives whole datagrams with
//! valid checksums that carry its payload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mpbond::wire::coalesce::{self, Datagram};
use mpbond::wire::fragment::{fit, Fit, Fragments};
use mpbond::wire::vnet;
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

    if let Some(datagram) = Datagram::of(data) {
        let valid = datagram.checksum_ok(data);
        let hdr = datagram.header_len();
        assert_eq!(hdr + datagram.payload(), data.len());
        let mut out = [0; coalesce::MAX_HEADER];
        let len = datagram
            .super_header(data, datagram.payload(), &mut out)
            .expect("a header for the datagram's own bytes");
        assert_eq!(len, vnet::LEN + hdr);
        let header = vnet::Header::parse(&out).expect("vnet header");
        assert_eq!(usize::from(header.hdr_len), hdr);
        assert_eq!(usize::from(header.gso_size), datagram.payload());
        let ip = &out[vnet::LEN..len];
        // All but the UDP checksum field as it was (lengths agree already;
        // a valid IPv4 header checksum is computed back to itself).
        let field = hdr - 2;
        for (at, (made, was)) in ip[..field].iter().zip(&data[..field]).enumerate() {
            let header_checksum = hdr == 28 && (10..12).contains(&at);
            assert!(made == was || (header_checksum && !valid), "byte {at}");
        }
        assert!(!datagram.joins(coalesce::MAX_SEGMENTS, 0, 0, &datagram));
    }

    // Cut as a UDP super-packet read from a TUN, with a segment size from
    // the first byte: what comes out is whole datagrams with valid
    // checksums, carrying the payload in order, each no larger than the
    // segment size.
    if let Some(&first) = data.first() {
        let gso_size = usize::from(first) * 8 + 1;
        let mut out = vec![0; coalesce::MAX_SPLIT_LEN];
        let mut ranges = Vec::new();
        if let Ok(used) = coalesce::split(data, gso_size, &mut out, |r| ranges.push(r)) {
            assert_eq!(ranges.last().map(|r| r.end), Some(used));
            let mut carried = 0;
            for r in &ranges {
                let piece = &out[r.clone()];
                let d = Datagram::of(piece);
                let d = d.expect("a whole UDP datagram");
                assert!(d.payload() <= gso_size);
                assert!(d.checksum_ok(piece), "valid checksums");
                carried += d.payload();
            }
            let hdr = Datagram::of(&out[ranges[0].clone()]).map(|d| d.header_len());
            assert_eq!(Some(carried), hdr.map(|h| data.len() - h));
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
