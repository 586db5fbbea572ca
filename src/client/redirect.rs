//! The client's TCP redirect: a NAT inside the TUN reader that makes the
//! kernel's own TCP stack terminate every captured TCP flow on a local
//! listener, so mpbond never needs a userspace TCP stack.
//!
//! A packet `A:pa → S:ps` read from the TUN (from a LAN host, or from a
//! local program whose route points into the TUN) is rewritten to
//! `FAKE:n → TUN:listen` and written back; the kernel delivers it to the
//! listener, which accepts a connection from `FAKE:n`. The listener's
//! packets `TUN:listen → FAKE:n` route into the TUN (FAKE sits on the TUN's
//! subnet), and are rewritten back to `S:ps → A:pa`. The table maps `n` (the
//! fake peer port, one space per IP family) to the original flow; the
//! relay recovers the destination from the accepted socket's peer port.
//!
//! Pure: no I/O, no clock (`now` comes in), unit-tested below.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::wire::{build_rst_for, tcp, PacketError, TcpPacket};

/// Lowest fake peer port handed out.
const FIRST_PORT: u16 = 1024;

/// The most flows the table can hold: a fake port each, per IP family.
pub const MAX_FLOWS: usize = 2 * (u16::MAX - FIRST_PORT + 1) as usize;
/// A flow whose SYN went to the listener (or is held) but that nobody
/// picked up is forgotten after this long without packets.
pub const UNCLAIMED_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closed flow keeps translating its last packets (FIN, ACK,
/// retransmissions) before its port can be reused.
pub const CLOSED_LINGER: Duration = Duration::from_secs(60);

/// The addresses the redirect works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectAddrs {
    /// The TUN device's own IPv4 address (the listener binds to it).
    pub tun_v4: Ipv4Addr,
    /// An unused address on the TUN's IPv4 subnet: the fake peer.
    pub fake_v4: Ipv4Addr,
    /// The TUN device's own IPv6 address.
    pub tun_v6: Ipv6Addr,
    /// An unused address on the TUN's IPv6 subnet.
    pub fake_v6: Ipv6Addr,
    /// The listener's port (same for both families).
    pub listen_port: u16,
}

impl RedirectAddrs {
    fn tun(&self, v6: bool) -> IpAddr {
        if v6 {
            self.tun_v6.into()
        } else {
            self.tun_v4.into()
        }
    }

    fn fake(&self, v6: bool) -> IpAddr {
        if v6 {
            self.fake_v6.into()
        } else {
            self.fake_v4.into()
        }
    }
}

/// A captured TCP flow as the LAN host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The host that opened the connection.
    pub client: SocketAddr,
    /// Where it wanted to go.
    pub server: SocketAddr,
}

/// A flow's slot in the table: the fake peer port and its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IPv6 flow (else IPv4).
    pub v6: bool,
    /// The fake peer port the listener sees.
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Strict mode: the SYN is held until the tunnel has reached the server.
    Held,
    /// The SYN went to the listener; no relay has claimed the flow yet.
    Unclaimed,
    /// A relay carries the flow.
    Relaying,
    /// The relay ended at this time; late packets are still translated.
    Closed(Duration),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    flow: Flow,
    state: State,
    last_seen: Duration,
}

/// What to do with a packet read from the TUN.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The packet was rewritten in place: write it back to the TUN.
    Forward,
    /// Strict mode, new flow: keep the packet (unchanged) and ask the tunnel
    /// to connect; then [`FlowTable::confirm`] or [`FlowTable::refuse`].
    Hold(FlowKey, Flow),
    /// Answer the sender with this packet (a reset): the flow is unknown
    /// (e.g. from before a restart) or the table is full.
    Reply(Vec<u8>),
    /// A new flow while as many flows are open as the table allows: answer
    /// the SYN with this reset.
    Full(Vec<u8>),
    /// Not something the redirect handles; drop it.
    Drop(DropReason),
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not a well-formed TCP packet.
    Malformed,
    /// A retransmitted SYN of a flow whose SYN is held.
    HeldSyn,
    /// Addressed to the TUN's own or fake address from outside the redirect.
    NotForUs,
    /// A reply for a fake port no flow owns, or a reset for an unknown flow.
    Unknown,
}

/// How the TCP checksum of a packet read from the TUN stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Complete (a TUN without offloads, or a packet that arrived whole).
    Full,
    /// Partial (a TUN with offloads, `NEEDS_CSUM`): the field holds the
    /// pseudo-header sum and the kernel completes it from `start`, the
    /// field being at `start + offset`. A super-packet's always is.
    Partial {
        /// Where the kernel starts summing: the TCP header.
        start: usize,
        /// Where the field is from there: the TCP checksum's offset.
        offset: usize,
    },
}

/// How new flows start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectMode {
    /// Answer the SYN at once; the tunnel connects when the first bytes come.
    Fast,
    /// Hold the SYN until the tunnel has reached the server.
    Strict,
}

/// The redirect's flow table (one per client).
#[derive(Debug)]
pub struct FlowTable {
    addrs: RedirectAddrs,
    mode: ConnectMode,
    by_key: HashMap<FlowKey, Entry>,
    by_flow: HashMap<Flow, FlowKey>,
    next_port: [u16; 2],
    /// Flows not yet closed: each holds descriptors (its LAN socket and
    /// its tunnel) once a relay carries it.
    open: usize,
    /// The most open flows allowed: past it new flows are reset, so the
    /// process never runs out of descriptors mid-relay.
    max_open: usize,
}

impl FlowTable {
    /// An empty table.
    pub fn new(addrs: RedirectAddrs, mode: ConnectMode) -> Self {
        Self::with_limit(addrs, mode, MAX_FLOWS)
    }

    /// An empty table that resets new flows while `max_open` flows are
    /// open (not yet closed), e.g. what the open-file limit carries.
    pub fn with_limit(addrs: RedirectAddrs, mode: ConnectMode, max_open: usize) -> Self {
        Self {
            addrs,
            mode,
            by_key: HashMap::new(),
            by_flow: HashMap::new(),
            next_port: [FIRST_PORT; 2],
            open: 0,
            max_open,
        }
    }

    /// Number of flows in the table (closed ones still lingering too).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Number of flows not yet closed.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Whether a new flow would be refused because `max_open` are open.
    pub fn is_full(&self) -> bool {
        self.open >= self.max_open
    }

    /// `true` when no flow is in the table.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Decides what to do with one packet read from the TUN, rewriting it
    /// in place when it is to be forwarded.
    pub fn handle(&mut self, now: Duration, buf: &mut [u8]) -> Decision {
        self.handle_with(now, buf, Checksum::Full)
    }

    /// As [`handle`](Self::handle), for a packet (maybe a super-packet of
    /// many segments) whose TCP checksum stands as `checksum` says; a
    /// partial one is rewritten as the pseudo-header sum it is. A partial
    /// checksum that is not the TCP header's is malformed.
    pub fn handle_with(&mut self, now: Duration, buf: &mut [u8], checksum: Checksum) -> Decision {
        let Ok(mut packet) = TcpPacket::new_checked(&mut *buf) else {
            return Decision::Drop(DropReason::Malformed);
        };
        let partial = match checksum {
            Checksum::Full => false,
            Checksum::Partial { start, offset } => {
                if start != packet.ip_header_len() || offset != tcp::field::CHECKSUM {
                    return Decision::Drop(DropReason::Malformed);
                }
                true
            }
        };
        let rewrite = |packet: &mut TcpPacket<&mut [u8]>, src: SocketAddr, dst: SocketAddr| {
            rewritten(if partial {
                packet.rewrite_partial(src, dst)
            } else {
                packet.rewrite(src, dst)
            })
        };
        let (src, dst, v6) = (packet.src(), packet.dst(), packet.is_ipv6());
        let flags = packet.flags();
        let listener = SocketAddr::new(self.addrs.tun(v6), self.addrs.listen_port);

        if src == listener && dst.ip() == self.addrs.fake(v6) {
            let key = FlowKey {
                v6,
                port: dst.port(),
            };
            let Some(entry) = self.by_key.get_mut(&key) else {
                return Decision::Drop(DropReason::Unknown);
            };
            entry.last_seen = now;
            let flow = entry.flow;
            return rewrite(&mut packet, flow.server, flow.client);
        }
        if dst.ip() == self.addrs.tun(v6) || dst.ip() == self.addrs.fake(v6) {
            return Decision::Drop(DropReason::NotForUs);
        }

        let flow = Flow {
            client: src,
            server: dst,
        };
        let mut known = self.by_flow.get(&flow).copied();
        if let Some(key) = known {
            let reopened = flags.syn && !flags.ack && !flags.rst;
            if reopened
                && matches!(self.by_key.get(&key), Some(e) if matches!(e.state, State::Closed(_)))
            {
                // The LAN host opens a new connection with the 4-tuple of
                // one that closed moments ago (its port was free again on
                // its side): a new flow on a new fake port. On the old
                // port the listener's side of the old connection may
                // still be in TIME_WAIT, and the relay is gone.
                self.remove(key);
                known = None;
            }
        }
        if let Some(key) = known {
            let Some(entry) = self.by_key.get_mut(&key) else {
                return Decision::Drop(DropReason::Unknown);
            };
            entry.last_seen = now;
            if entry.state == State::Held {
                return Decision::Drop(DropReason::HeldSyn);
            }
            let fake = SocketAddr::new(self.addrs.fake(v6), key.port);
            return rewrite(&mut packet, fake, listener);
        }

        if !flags.syn || flags.ack || flags.rst {
            if flags.rst {
                return Decision::Drop(DropReason::Unknown);
            }
            return match build_rst_for(&packet) {
                Some(rst) => Decision::Reply(rst),
                None => Decision::Drop(DropReason::Unknown),
            };
        }
        if self.is_full() {
            return match build_rst_for(&packet) {
                Some(rst) => Decision::Full(rst),
                None => Decision::Drop(DropReason::Unknown),
            };
        }
        let Some(port) = self.free_port(v6) else {
            return match build_rst_for(&packet) {
                Some(rst) => Decision::Reply(rst),
                None => Decision::Drop(DropReason::Unknown),
            };
        };
        let key = FlowKey { v6, port };
        let state = match self.mode {
            ConnectMode::Fast => State::Unclaimed,
            ConnectMode::Strict => State::Held,
        };
        self.by_key.insert(
            key,
            Entry {
                flow,
                state,
                last_seen: now,
            },
        );
        self.by_flow.insert(flow, key);
        self.open += 1;
        if state == State::Held {
            return Decision::Hold(key, flow);
        }
        let fake = SocketAddr::new(self.addrs.fake(v6), port);
        rewrite(&mut packet, fake, listener)
    }

    /// The flow behind a connection the listener accepted from `peer`
    /// (`FAKE:n`); marks it as carried by a relay. `None` for a peer the
    /// table does not know (a stray connection to the listener).
    pub fn claim(&mut self, peer: SocketAddr) -> Option<(FlowKey, Flow)> {
        let v6 = match peer.ip() {
            IpAddr::V4(ip) => {
                if ip != self.addrs.fake_v4 {
                    return None;
                }
                false
            }
            IpAddr::V6(ip) => {
                if ip != self.addrs.fake_v6 {
                    return None;
                }
                true
            }
        };
        let key = FlowKey {
            v6,
            port: peer.port(),
        };
        let entry = self.by_key.get_mut(&key)?;
        match entry.state {
            State::Unclaimed | State::Held => entry.state = State::Relaying,
            State::Relaying | State::Closed(_) => return None,
        }
        Some((key, entry.flow))
    }

    /// Strict mode: the tunnel reached the server; the held SYN may go to
    /// the listener now (hand it to [`handle`](Self::handle) again).
    pub fn confirm(&mut self, key: FlowKey) {
        if let Some(entry) = self.by_key.get_mut(&key) {
            if entry.state == State::Held {
                entry.state = State::Unclaimed;
            }
        }
    }

    /// Strict mode: the tunnel could not reach the server; forget the flow.
    pub fn refuse(&mut self, key: FlowKey) {
        self.remove(key);
    }

    /// The relay of `key` ended; late packets are translated for
    /// [`CLOSED_LINGER`], then the port is free again.
    pub fn closed(&mut self, now: Duration, key: FlowKey) {
        if let Some(entry) = self.by_key.get_mut(&key) {
            if !matches!(entry.state, State::Closed(_)) {
                self.open -= 1;
            }
            entry.state = State::Closed(now);
        }
    }

    /// Forgets flows nobody claimed and closed flows past their linger.
    pub fn expire(&mut self, now: Duration) {
        let stale: Vec<FlowKey> = self
            .by_key
            .iter()
            .filter(|(_, e)| match e.state {
                State::Held | State::Unclaimed => {
                    now.saturating_sub(e.last_seen) >= UNCLAIMED_TIMEOUT
                }
                State::Closed(at) => now.saturating_sub(at) >= CLOSED_LINGER,
                State::Relaying => false,
            })
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.remove(key);
        }
    }

    fn remove(&mut self, key: FlowKey) {
        if let Some(entry) = self.by_key.remove(&key) {
            self.by_flow.remove(&entry.flow);
            if !matches!(entry.state, State::Closed(_)) {
                self.open -= 1;
            }
        }
    }

    fn free_port(&mut self, v6: bool) -> Option<u16> {
        let next = &mut self.next_port[usize::from(v6)];
        for _ in FIRST_PORT..=u16::MAX {
            let port = *next;
            *next = if port == u16::MAX {
                FIRST_PORT
            } else {
                port + 1
            };
            if !self.by_key.contains_key(&FlowKey { v6, port }) {
                return Some(port);
            }
        }
        None
    }
}

fn rewritten(result: Result<(), PacketError>) -> Decision {
    match result {
        Ok(()) => Decision::Forward,
        Err(_) => Decision::Drop(DropReason::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const LAN: &str = "192.168.77.2:40000";
    const SRV: &str = "198.51.100.10:80";

    fn addrs() -> RedirectAddrs {
        RedirectAddrs {
            tun_v4: Ipv4Addr::new(172, 29, 77, 1),
            fake_v4: Ipv4Addr::new(172, 29, 77, 2),
            tun_v6: "fd00:6d70:62::1".parse().expect("v6"),
            fake_v6: "fd00:6d70:62::2".parse().expect("v6"),
            listen_port: 7301,
        }
    }

    #[derive(Clone, Copy)]
    struct F {
        syn: bool,
        ack: bool,
        rst: bool,
    }
    const SYN: F = F {
        syn: true,
        ack: false,
        rst: false,
    };
    const ACK: F = F {
        syn: false,
        ack: true,
        rst: false,
    };

    fn tcp(src: &str, dst: &str, f: F, payload: &[u8]) -> Vec<u8> {
        let (src, dst): (SocketAddr, SocketAddr) =
            (src.parse().expect("src"), dst.parse().expect("dst"));
        let builder = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            _ => panic!("mixed families"),
        };
        let mut b = builder.tcp(src.port(), dst.port(), 1000, 65535);
        if f.syn {
            b = b.syn();
        }
        if f.ack {
            b = b.ack(5000);
        }
        if f.rst {
            b = b.rst();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).expect("build");
        out
    }

    fn endpoints(buf: &[u8]) -> (SocketAddr, SocketAddr) {
        let p = TcpPacket::new_checked(buf).expect("valid");
        assert!(p.verify_checksums(), "checksums broken by the rewrite");
        (p.src(), p.dst())
    }

    /// Seeds of `fuzz/fuzz_targets/redirect.rs` (see `crate::fuzz_seeds`):
    /// a mode byte (bit 0: strict), then records of a control byte (bits
    /// 0-2: 0 handle the packet, 4 claim, 5 confirm, 7 close; bits 3-7:
    /// seconds to advance), a length byte and the packet. Flows as the TUN
    /// sees them, in both families and both modes.
    #[test]
    fn write_fuzz_corpus() {
        const SYNACK: F = F {
            syn: true,
            ack: true,
            rst: false,
        };
        let record = |control: u8, packet: &[u8]| {
            let mut out = vec![control, u8::try_from(packet.len()).expect("short")];
            out.extend_from_slice(packet);
            out
        };
        let (listener, fake) = ("172.29.77.1:7301", "172.29.77.2:1024");
        let (listener6, fake6) = ("[fd00:6d70:62::1]:7301", "[fd00:6d70:62::2]:1024");
        let (lan6, srv6) = ("[2001:db8:1::23]:51000", "[2001:db8:100::10]:443");
        let flow = |mode: u8, lan: &str, srv: &str, listener: &str, fake: &str| {
            let mut out = vec![mode];
            out.extend(record(0, &tcp(lan, srv, SYN, b"")));
            if mode & 1 != 0 {
                out.extend(record(5, &[]));
                out.extend(record(0, &tcp(lan, srv, SYN, b"")));
            }
            out.extend(record(4, &[]));
            out.extend(record(0, &tcp(listener, fake, SYNACK, b"")));
            out.extend(record(0, &tcp(lan, srv, ACK, b"GET / HTTP/1.1\r\n\r\n")));
            out.extend(record(0, &tcp(listener, fake, ACK, b"HTTP/1.1 200 OK\r\n")));
            out.extend(record(7, &[]));
            // 31 s later, twice: the closed flow's linger runs out.
            out.extend(record(31 << 3, &tcp(lan, srv, ACK, b"")));
            out.extend(record(31 << 3 | 4, &[]));
            out.extend(record(0, &tcp(lan, srv, ACK, b"late")));
            out
        };
        let mut strays = vec![0];
        strays.extend(record(0, &tcp(LAN, SRV, ACK, b"")));
        strays.extend(record(0, &tcp(listener, fake, ACK, b"")));
        strays.extend(record(0, &tcp(LAN, "172.29.77.1:22", SYN, b"")));
        strays.extend(record(
            0,
            &tcp(
                LAN,
                SRV,
                F {
                    syn: false,
                    ack: false,
                    rst: true,
                },
                b"",
            ),
        ));
        crate::fuzz_seeds::write(
            "redirect",
            &[
                ("fast-v4", flow(0, LAN, SRV, listener, fake)),
                ("fast-v6", flow(0, lan6, srv6, listener6, fake6)),
                ("strict-v4", flow(1, LAN, SRV, listener, fake)),
                ("strict-v6", flow(1, lan6, srv6, listener6, fake6)),
                ("strays", strays),
            ],
        );
    }

    #[test]
    fn fast_mode_round_trip_v4_and_v6() {
        for (lan, srv, listener, fake_ip) in [
            (LAN, SRV, "172.29.77.1:7301", "172.29.77.2"),
            (
                "[fd77:77::2]:40000",
                "[2001:db8:100::10]:443",
                "[fd00:6d70:62::1]:7301",
                "fd00:6d70:62::2",
            ),
        ] {
            let mut t = FlowTable::new(addrs(), ConnectMode::Fast);
            let mut syn = tcp(lan, srv, SYN, b"");
            assert_eq!(t.handle(Duration::ZERO, &mut syn), Decision::Forward);
            let (fake, to) = endpoints(&syn);
            assert_eq!(to, listener.parse().expect("listener"));
            assert_eq!(fake.ip().to_string(), fake_ip);

            let (key, flow) = t.claim(fake).expect("the accepted peer maps to the flow");
            assert_eq!(flow.client, lan.parse().expect("lan"));
            assert_eq!(flow.server, srv.parse().expect("srv"));
            assert!(t.claim(fake).is_none(), "a flow is claimed once");

            // The listener's answer goes back as the server.
            let mut reply = tcp(listener, &fake.to_string(), ACK, b"hello");
            assert_eq!(t.handle(Duration::ZERO, &mut reply), Decision::Forward);
            assert_eq!(
                endpoints(&reply),
                (srv.parse().expect("srv"), lan.parse().expect("lan"))
            );
            // Later packets of the flow reuse the same fake port.
            let mut data = tcp(lan, srv, ACK, b"more");
            assert_eq!(t.handle(Duration::ZERO, &mut data), Decision::Forward);
            assert_eq!(endpoints(&data).0, fake);
            assert_eq!(key.port, fake.port());
        }
    }

    /// Makes `buf`'s TCP checksum partial as a TUN with offloads hands it
    /// over (the pseudo-header sum); returns how [`FlowTable::handle_with`]
    /// is told so.
    fn partial(buf: &mut [u8]) -> Checksum {
        Checksum::Partial {
            start: crate::wire::test_packets::make_partial(buf),
            offset: tcp::field::CHECKSUM,
        }
    }

    /// What the kernel does with the partial checksum of a (super-)packet
    /// written back: completes it over the TCP header and payload.
    fn complete(buf: &mut [u8]) {
        crate::wire::test_packets::finish_partial(buf);
    }

    /// Super-packets (60 KB of segments) with partial checksums both ways
    /// through the table, IPv4 and IPv6: once the kernel completes their
    /// checksums they are right for the rewritten addresses and ports. A
    /// partial checksum somewhere other than the TCP header's is dropped.
    #[test]
    fn super_packets_with_partial_checksums_round_trip() {
        let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        for (lan, srv, listener) in [
            (LAN, SRV, "172.29.77.1:7301"),
            (
                "[fd77:77::2]:40000",
                "[2001:db8:100::10]:443",
                "[fd00:6d70:62::1]:7301",
            ),
        ] {
            let mut t = FlowTable::new(addrs(), ConnectMode::Fast);
            let mut syn = tcp(lan, srv, SYN, b"");
            let csum = partial(&mut syn);
            assert_eq!(
                t.handle_with(Duration::ZERO, &mut syn, csum),
                Decision::Forward
            );
            complete(&mut syn);
            let (fake, to) = endpoints(&syn);
            assert_eq!(to, listener.parse().expect("listener"));

            let mut up = tcp(lan, srv, ACK, &big);
            let csum = partial(&mut up);
            assert_eq!(
                t.handle_with(Duration::ZERO, &mut up, csum),
                Decision::Forward
            );
            complete(&mut up);
            assert_eq!(endpoints(&up), (fake, to));

            let mut down = tcp(listener, &fake.to_string(), ACK, &big[1..]);
            let csum = partial(&mut down);
            assert_eq!(
                t.handle_with(Duration::ZERO, &mut down, csum),
                Decision::Forward
            );
            complete(&mut down);
            assert_eq!(
                endpoints(&down),
                (srv.parse().expect("srv"), lan.parse().expect("lan"))
            );

            let mut odd = tcp(lan, srv, ACK, b"x");
            let Checksum::Partial { start, offset } = partial(&mut odd) else {
                unreachable!()
            };
            let before = odd.clone();
            for wrong in [
                Checksum::Partial {
                    start: start + 1,
                    offset,
                },
                Checksum::Partial { start, offset: 6 },
            ] {
                assert_eq!(
                    t.handle_with(Duration::ZERO, &mut odd, wrong),
                    Decision::Drop(DropReason::Malformed)
                );
                assert_eq!(odd, before, "left alone");
            }
        }
    }

    #[test]
    fn distinct_flows_get_distinct_ports() {
        let mut t = FlowTable::new(addrs(), ConnectMode::Fast);
        let mut fakes = std::collections::HashSet::new();
        for port in 0..500u16 {
            let mut syn = tcp(&format!("192.168.77.2:{}", 30000 + port), SRV, SYN, b"");
            assert_eq!(t.handle(Duration::ZERO, &mut syn), Decision::Forward);
            assert!(fakes.insert(endpoints(&syn).0), "fake port reused");
        }
        assert_eq!(t.len(), 500);
    }

    #[test]
    fn unknown_flow_gets_a_reset_and_strays_are_dropped() {
        let mut t = FlowTable::new(addrs(), ConnectMode::Fast);
        let mut data = tcp(LAN, SRV, ACK, b"x");
        let Decision::Reply(rst) = t.handle(Duration::ZERO, &mut data) else {
            panic!("a segment of an unknown flow must be answered with a reset");
        };
        let p = TcpPacket::new_checked(&rst[..]).expect("rst");
        assert!(p.flags().rst);
        assert_eq!(
            (p.src(), p.dst()),
            (SRV.parse().expect("srv"), LAN.parse().expect("lan"))
        );
        let mut rst_in = tcp(
            LAN,
            SRV,
            F {
                syn: false,
                ack: false,
                rst: true,
            },
            b"",
        );
        assert_eq!(
            t.handle(Duration::ZERO, &mut rst_in),
            Decision::Drop(DropReason::Unknown)
        );
        let mut stray = tcp("172.29.77.1:7301", "172.29.77.2:5555", ACK, b"");
        assert_eq!(
            t.handle(Duration::ZERO, &mut stray),
            Decision::Drop(DropReason::Unknown)
        );
        let mut to_tun = tcp(LAN, "172.29.77.1:22", SYN, b"");
        assert_eq!(
            t.handle(Duration::ZERO, &mut to_tun),
            Decision::Drop(DropReason::NotForUs)
        );
        let mut garbage = vec![0x45, 0, 0, 3];
        assert_eq!(
            t.handle(Duration::ZERO, &mut garbage),
            Decision::Drop(DropReason::Malformed)
        );
        assert!(t.claim("10.0.0.1:1".parse().expect("addr")).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn strict_mode_holds_the_syn_until_confirmed() {
        let mut t = FlowTable::new(addrs(), ConnectMode::Strict);
        let original = tcp(LAN, SRV, SYN, b"");
        let mut syn = original.clone();
        let Decision::Hold(key, flow) = t.handle(Duration::ZERO, &mut syn) else {
            panic!("strict mode must hold a new SYN");
        };
        assert_eq!(syn, original, "a held SYN stays unchanged");
        assert_eq!(flow.server, SRV.parse().expect("srv"));
        let mut again = original.clone();
        assert_eq!(
            t.handle(Duration::from_secs(1), &mut again),
            Decision::Drop(DropReason::HeldSyn)
        );
        t.confirm(key);
        assert_eq!(
            t.handle(Duration::from_secs(1), &mut syn),
            Decision::Forward
        );
        assert_eq!(endpoints(&syn).1, "172.29.77.1:7301".parse().expect("l"));

        let mut other = tcp("192.168.77.2:40001", SRV, SYN, b"");
        let Decision::Hold(key2, _) = t.handle(Duration::ZERO, &mut other) else {
            panic!("hold");
        };
        t.refuse(key2);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn expiry_and_linger_on_a_fake_clock() {
        let mut t = FlowTable::new(addrs(), ConnectMode::Fast);
        let mut syn = tcp(LAN, SRV, SYN, b"");
        t.handle(Duration::ZERO, &mut syn);
        t.expire(UNCLAIMED_TIMEOUT - Duration::from_millis(1));
        assert_eq!(t.len(), 1, "expired too early");
        t.expire(UNCLAIMED_TIMEOUT);
        assert!(t.is_empty(), "an unclaimed flow must expire");

        let mut syn = tcp(LAN, SRV, SYN, b"");
        t.handle(Duration::ZERO, &mut syn);
        let (fake, _) = endpoints(&syn);
        let (key, _) = t.claim(fake).expect("claim");
        t.expire(Duration::from_secs(3600));
        assert_eq!(t.len(), 1, "a relayed flow never expires by time");
        let closed_at = Duration::from_secs(3600);
        t.closed(closed_at, key);
        let mut fin = tcp(LAN, SRV, ACK, b"");
        assert_eq!(t.handle(closed_at, &mut fin), Decision::Forward);
        t.expire(closed_at + CLOSED_LINGER - Duration::from_millis(1));
        assert_eq!(t.len(), 1);
        t.expire(closed_at + CLOSED_LINGER);
        assert!(t.is_empty());
    }

    #[test]
    fn a_new_connection_on_a_closed_flows_four_tuple_gets_a_new_port() {
        let mut t = FlowTable::new(addrs(), ConnectMode::Fast);
        let mut syn = tcp(LAN, SRV, SYN, b"");
        assert_eq!(t.handle(Duration::ZERO, &mut syn), Decision::Forward);
        let (fake, _) = endpoints(&syn);
        let (key, _) = t.claim(fake).expect("claimed");
        // A retransmitted SYN of the running flow keeps its port.
        let mut again = tcp(LAN, SRV, SYN, b"");
        assert_eq!(t.handle(Duration::ZERO, &mut again), Decision::Forward);
        assert_eq!(endpoints(&again).0, fake);
        t.closed(Duration::from_secs(1), key);

        // Seconds later the LAN host reuses its port for the same server.
        let mut reused = tcp(LAN, SRV, SYN, b"");
        assert_eq!(
            t.handle(Duration::from_secs(2), &mut reused),
            Decision::Forward
        );
        let (new_fake, _) = endpoints(&reused);
        assert_ne!(new_fake, fake, "the old port may still be in TIME_WAIT");
        assert!(
            t.claim(new_fake).is_some(),
            "the new connection is the redirect's own"
        );
        assert_eq!((t.open(), t.len()), (1, 1));
        // A late packet of the old connection (not a SYN) is the new
        // flow's now: it goes to the new port, as any NAT would do.
        let mut ack = tcp(LAN, SRV, ACK, b"");
        assert_eq!(
            t.handle(Duration::from_secs(2), &mut ack),
            Decision::Forward
        );
        assert_eq!(endpoints(&ack).0, new_fake);
    }

    #[test]
    fn past_the_open_flow_limit_new_flows_are_reset_until_one_closes() {
        let mut t = FlowTable::with_limit(addrs(), ConnectMode::Fast, 2);
        let mut first = tcp("192.168.77.2:40001", SRV, SYN, b"");
        let mut second = tcp("192.168.77.2:40002", SRV, SYN, b"");
        assert_eq!(t.handle(Duration::ZERO, &mut first), Decision::Forward);
        assert_eq!(t.handle(Duration::ZERO, &mut second), Decision::Forward);
        let mut third = tcp("192.168.77.2:40003", SRV, SYN, b"");
        let Decision::Full(rst) = t.handle(Duration::ZERO, &mut third.clone()) else {
            panic!("a third flow past the limit of 2 must be reset");
        };
        let rst = TcpPacket::new_checked(&rst[..]).expect("a TCP reset");
        assert!(rst.flags().rst);
        assert_eq!(rst.dst(), "192.168.77.2:40003".parse().expect("addr"));
        assert!(t.is_full());

        // A closed flow lingers but holds no descriptors: room again.
        let (key, _) = t.claim(endpoints(&first).0).expect("claimed");
        t.closed(Duration::from_secs(1), key);
        assert_eq!((t.open(), t.len()), (1, 2));
        assert_eq!(
            t.handle(Duration::from_secs(1), &mut third),
            Decision::Forward
        );
        assert!(t.is_full());
        // Expiry of the lingering one does not count it twice.
        for syn in [&second, &third] {
            t.claim(endpoints(syn).0).expect("relayed");
        }
        t.expire(Duration::from_secs(1) + CLOSED_LINGER);
        assert_eq!((t.open(), t.len()), (2, 2));
    }

    #[test]
    fn a_full_table_resets_new_flows() {
        let mut t = FlowTable::new(addrs(), ConnectMode::Fast);
        let total = usize::from(u16::MAX - FIRST_PORT) + 1;
        for i in 0..total {
            let src = format!("10.{}.{}.{}:1000", i >> 16, (i >> 8) & 255, i & 255);
            let mut syn = tcp(&src, SRV, SYN, b"");
            assert_eq!(t.handle(Duration::ZERO, &mut syn), Decision::Forward);
        }
        let mut one_more = tcp(LAN, SRV, SYN, b"");
        assert!(matches!(
            t.handle(Duration::ZERO, &mut one_more),
            Decision::Reply(_)
        ));
        // IPv6 has its own port space.
        let mut v6 = tcp("[fd77:77::2]:1", "[2001:db8::1]:80", SYN, b"");
        assert_eq!(t.handle(Duration::ZERO, &mut v6), Decision::Forward);
    }
}
