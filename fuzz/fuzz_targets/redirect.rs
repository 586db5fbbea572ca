//! Fuzzes the client's TCP redirect (`client::redirect::FlowTable`): the
//! NAT inside the TUN reader that rewrites every captured TCP packet in
//! place, on a sequence of packets and table events from the input.
//!
//! Input: a mode byte (bit 0: strict connect mode), then records of a
//! control byte, a length byte and that many bytes of packet. Control
//! bits 0–2 pick an event: 0–3 hand the packet to `handle`, 4 claims the
//! last flow's fake port (as the listener's accept does), 5 confirms and 6
//! refuses the last held flow, 7 closes it; bits 3–7 advance the clock by
//! that many seconds, and flows expire.
//!
//! Besides "no panic", it checks what the kernel and the LAN host rely
//! on: a rewrite keeps valid checksums valid (and broken ones broken), a
//! packet toward the listener comes from the fake address, the listener's
//! answer to it is rewritten back to exactly the original flow reversed, a
//! held SYN is left untouched, every reset parses with valid checksums
//! and goes back to the sender, and the table never holds more flows than
//! SYNs were seen.
//!
//! Seeds: `fuzz/corpus/redirect/`, written by the unit test
//! `client::redirect::tests::write_fuzz_corpus`.

#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mpbond::client::redirect::{ConnectMode, Decision, FlowKey, FlowTable, RedirectAddrs};
use mpbond::wire::TcpPacket;

fn addrs() -> RedirectAddrs {
    RedirectAddrs {
        tun_v4: [172, 29, 77, 1].into(),
        fake_v4: [172, 29, 77, 2].into(),
        tun_v6: [0xfd00, 0x6d70, 0x62, 0, 0, 0, 0, 1].into(),
        fake_v6: [0xfd00, 0x6d70, 0x62, 0, 0, 0, 0, 2].into(),
        listen_port: 7301,
    }
}

fn endpoints(packet: &[u8]) -> Option<(SocketAddr, SocketAddr, bool)> {
    let packet = TcpPacket::new_checked(packet).ok()?;
    Some((packet.src(), packet.dst(), packet.verify_checksums()))
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, mut rest)) = input.split_first() else {
        return;
    };
    let strict = mode & 1 != 0;
    let connect_mode = if strict {
        ConnectMode::Strict
    } else {
        ConnectMode::Fast
    };
    let addrs = addrs();
    // Bits 1-3 of the mode byte: a small open-flow limit (1-7) so that
    // full tables are fuzzed too; 0: the whole table.
    let mut table = match (mode >> 1) & 7 {
        0 => FlowTable::new(addrs, connect_mode),
        limit => FlowTable::with_limit(addrs, connect_mode, usize::from(limit)),
    };
    let mut now = Duration::ZERO;
    let mut syns = 0;
    let mut last: Option<FlowKey> = None;

    while let [control, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_secs(u64::from(control >> 3));
        table.expire(now);

        match control & 7 {
            0..=3 => {}
            4 => {
                if let Some(key) = last {
                    let fake = if key.v6 {
                        IpAddr::from(addrs.fake_v6)
                    } else {
                        IpAddr::from(addrs.fake_v4)
                    };
                    if let Some((claimed, _)) = table.claim(SocketAddr::new(fake, key.port)) {
                        assert_eq!(claimed, key);
                    }
                }
                continue;
            }
            5 => {
                if let Some(key) = last {
                    table.confirm(key);
                }
                continue;
            }
            6 => {
                if let Some(key) = last {
                    table.refuse(key);
                }
                continue;
            }
            _ => {
                if let Some(key) = last {
                    table.closed(now, key);
                }
                continue;
            }
        }

        let before = endpoints(bytes);
        if TcpPacket::new_checked(bytes).is_ok_and(|p| p.flags().syn) {
            syns += 1;
        }
        let mut packet = bytes.to_vec();
        let decision = table.handle(now, &mut packet);
        assert!(table.len() <= syns);
        match decision {
            Decision::Forward => {
                let (src, dst, valid) = before.expect("only TCP is forwarded");
                let (new_src, new_dst, new_valid) = endpoints(&packet).expect("still TCP");
                assert_eq!(new_valid, valid, "the rewrite changed checksum validity");
                assert_eq!(packet.len(), bytes.len());
                let v6 = src.is_ipv6();
                let listener = SocketAddr::new(
                    if v6 {
                        addrs.tun_v6.into()
                    } else {
                        addrs.tun_v4.into()
                    },
                    addrs.listen_port,
                );
                let fake = if v6 {
                    IpAddr::from(addrs.fake_v6)
                } else {
                    IpAddr::from(addrs.fake_v4)
                };
                // Only a LAN packet turned toward the listener, not the
                // listener's own packet turned back to the LAN.
                if new_dst != listener || (src == listener && dst.ip() == fake) {
                    continue;
                }
                assert_eq!(new_src.ip(), fake);
                last = Some(FlowKey {
                    v6,
                    port: new_src.port(),
                });
                // The listener answers: the reverse rewrite restores the flow.
                let mut answer = packet.clone();
                TcpPacket::new_checked(&mut answer[..])
                    .expect("still TCP")
                    .rewrite(listener, new_src)
                    .expect("same family");
                assert_eq!(table.handle(now, &mut answer), Decision::Forward);
                let (back_src, back_dst, back_valid) = endpoints(&answer).expect("still TCP");
                assert_eq!((back_src, back_dst), (dst, src));
                assert_eq!(back_valid, valid);
            }
            Decision::Hold(key, flow) => {
                assert!(strict);
                assert_eq!(packet, bytes, "a held SYN was changed");
                let (src, dst, _) = before.expect("only TCP is held");
                assert_eq!((flow.client, flow.server), (src, dst));
                last = Some(key);
            }
            Decision::Full(rst) => {
                assert!(table.is_full(), "a new flow reset as if the table were full");
                let (src, dst, _) = before.expect("only TCP is answered");
                let (rst_src, rst_dst, rst_valid) = endpoints(&rst).expect("a reset parses");
                assert!(rst_valid);
                assert_eq!((rst_src, rst_dst), (dst, src));
            }
            Decision::Reply(rst) => {
                let (src, dst, _) = before.expect("only TCP is answered");
                let (rst_src, rst_dst, rst_valid) = endpoints(&rst).expect("a reset parses");
                assert!(rst_valid);
                assert_eq!((rst_src, rst_dst), (dst, src));
                let flags = TcpPacket::new_checked(&rst[..]).expect("parses").flags();
                assert!(flags.rst);
            }
            Decision::Drop(_) => {}
        }
    }
});
