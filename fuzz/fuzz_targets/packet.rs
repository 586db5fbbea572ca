//! Fuzzes the TUN packet views: classification, the per-protocol views
//! (`wire::{ipv4, ipv6, tcp, icmp}`), the combined TCP view and its
//! accessors, the in-place rewrite (of full and of partial checksums), the
//! RST and ICMP builders, and the virtio-net header of a TUN with offloads
//! with the finishing of a partial checksum.
//!
//! Besides "no panic", it checks that a rewrite keeps correct checksums
//! correct and writes exactly the addresses asked for, that a partial
//! checksum rewritten and then completed equals the full checksum of the
//! rewritten packet, and that every built reply parses back with valid
//! checksums.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use mpbond::wire::{
    build_icmp_unreachable_for, build_rst_for, checksum, classify, icmp, ipv4, ipv6, tcp, vnet,
    Protocol, TcpPacket,
};

/// Addresses to rewrite to, taken from the input's last bytes so the fuzzer
/// steers them too.
fn targets(data: &[u8], ipv6: bool) -> (SocketAddr, SocketAddr) {
    let mut bytes = [0u8; 36];
    for (slot, byte) in bytes.iter_mut().zip(data.iter().rev()) {
        *slot = *byte;
    }
    let port = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    if ipv6 {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&bytes[..16]);
        dst.copy_from_slice(&bytes[16..32]);
        (
            SocketAddr::new(Ipv6Addr::from(src).into(), port(32)),
            SocketAddr::new(Ipv6Addr::from(dst).into(), port(34)),
        )
    } else {
        (
            SocketAddr::new(
                Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(),
                port(32),
            ),
            SocketAddr::new(
                Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]).into(),
                port(34),
            ),
        )
    }
}

/// Every accessor of every per-protocol view that accepts `data`; they
/// must not panic, and the lengths they report must lie in the buffer.
fn views(data: &[u8]) {
    if let Ok(packet) = ipv4::Packet::new_checked(data) {
        assert!(packet.header_len() <= packet.total_len() && packet.total_len() <= data.len());
        assert_eq!(packet.header().len() + packet.payload().len(), packet.total_len());
        let _ = (packet.protocol(), packet.src_addr(), packet.dst_addr());
        let _ = (packet.fragment_offset(), packet.more_fragments());
        let _ = packet.verify_checksum();
    }
    if let Ok(packet) = ipv6::Packet::new_checked(data) {
        assert_eq!(packet.packet().len(), packet.packet_len());
        let _ = (packet.next_header(), packet.src_addr(), packet.dst_addr());
        if let Ok(upper) = packet.upper_layer() {
            assert!(upper.offset <= packet.packet_len());
        }
    }
    if let Ok(segment) = tcp::Packet::new_checked(data) {
        assert_eq!(segment.header_len() + segment.payload().len(), data.len());
        let _ = (segment.src_port(), segment.dst_port(), segment.flags());
        let _ = (segment.seq_number(), segment.ack_number());
    }
    if let Ok(message) = icmp::Packet::new_checked(data) {
        let _ = (message.msg_type(), message.code(), message.checksum());
        assert_eq!(message.data().len() + icmp::HEADER_LEN, data.len());
    }
}

/// The pseudo-header sum of the TCP packet in `buf` (addresses from the
/// IP header, length of the segment), folded: a partial checksum field.
fn partial_field(buf: &[u8], ipv6: bool, tcp_at: usize, len: usize) -> u16 {
    let (src, dst) = if ipv6 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    };
    checksum::fold(checksum::pseudo_header_sum(
        &buf[src],
        &buf[dst],
        6,
        len - tcp_at,
    ))
}

/// What the kernel writes into a partial checksum field: the complement of
/// the sum from the TCP header on, the field's pseudo-header sum included.
fn completed(buf: &[u8], tcp_at: usize, len: usize) -> u16 {
    checksum::complement(checksum::sum_words(&buf[tcp_at..len]))
}

fuzz_target!(|data: &[u8]| {
    views(data);
    if let Ok(header) = vnet::Header::parse(data) {
        assert_eq!(header.to_bytes()[..], data[..vnet::LEN]);
        let mut rest = data[vnet::LEN..].to_vec();
        let _ = vnet::finish_checksum(&header, &mut rest);
    }
    let protocol = classify(data);

    for from in [
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
    ] {
        if let Some(icmp) = build_icmp_unreachable_for(data, from) {
            assert_eq!(classify(&icmp), Protocol::Icmp);
            assert!(icmp.len() <= 1280);
        }
    }

    let Ok(packet) = TcpPacket::new_checked(data) else {
        return;
    };
    assert_eq!(protocol, Protocol::Tcp);
    assert_eq!(
        packet.ip_header_len() + packet.tcp_header_len() + packet.payload_len(),
        packet.packet_len()
    );
    assert_eq!(packet.payload().len(), packet.payload_len());
    assert_eq!(packet.packet().len(), packet.packet_len());
    let _ = (packet.flags(), packet.seq(), packet.ack_number());
    let (src, dst) = (packet.src(), packet.dst());
    let valid = packet.verify_checksums();

    if let Some(rst) = build_rst_for(&packet) {
        let rst = TcpPacket::new_checked(&rst[..]).expect("a built RST parses");
        assert!(rst.verify_checksums());
        assert_eq!((rst.src(), rst.dst()), (dst, src));
    }

    let mut copy = data.to_vec();
    let mut packet = TcpPacket::new_checked(&mut copy[..]).expect("same bytes, same verdict");
    let (new_src, new_dst) = targets(data, packet.is_ipv6());
    let (wrong_src, _) = targets(data, !packet.is_ipv6());
    assert!(packet.rewrite(wrong_src, new_dst).is_err());
    packet.rewrite(new_src, new_dst).expect("same family");
    assert_eq!((packet.src(), packet.dst()), (new_src, new_dst));
    assert_eq!(packet.verify_checksums(), valid);
    packet.rewrite(src, dst).expect("same family");
    assert_eq!(packet.verify_checksums(), valid);

    // Rewriting back restores every byte; a checksum may only trade one
    // ones-complement zero (0xffff) for the other (0x0000).
    let mut checksums = vec![packet.ip_header_len() + 16];
    if !packet.is_ipv6() {
        checksums.push(10);
    }
    for at in checksums {
        let old = u16::from_be_bytes([data[at], data[at + 1]]);
        let new = u16::from_be_bytes([copy[at], copy[at + 1]]);
        assert!(
            old == new || (old, new) == (0xffff, 0),
            "checksum at {at}: {old:#06x} -> {new:#06x}"
        );
        copy[at..at + 2].copy_from_slice(&data[at..at + 2]);
    }
    assert_eq!(copy, data);

    // The same rewrite on the packet as a TUN with offloads gives it (a
    // partial checksum), completed afterwards as the kernel would, gives
    // the full checksum of the rewritten packet.
    let view = TcpPacket::new_checked(data).expect("same bytes, same verdict");
    let (v6, tcp_at, len) = (view.is_ipv6(), view.ip_header_len(), view.packet_len());
    let field = tcp_at + 16;
    let mut partial = data.to_vec();
    let sum = partial_field(&partial, v6, tcp_at, len);
    partial[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    TcpPacket::new_checked(&mut partial[..])
        .expect("same header, same verdict")
        .rewrite_partial(new_src, new_dst)
        .expect("same family");
    let done = completed(&partial, tcp_at, len);
    let mut full = partial.clone();
    let sum = partial_field(&full, v6, tcp_at, len);
    full[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(
        done,
        completed(&full, tcp_at, len),
        "partial checksum after the rewrite"
    );
});
