//! The kernel's MPTCP path manager events: a generic netlink socket
//! subscribed to the `mptcp_pm` family's multicast group
//! `mptcp_pm_events`, what `ip mptcp monitor` shows.
//!
//! The kernel sends one event per connection created, established or
//! closed and per subflow established or closed, namespace-wide, each
//! with the subflow's (or the initial subflow's) local and remote address
//! and port. That is what attributes MP_JOIN outcomes to an uplink: a
//! subflow closed without having been established is a join that failed.
//! Numbers are from the kernel's uapi `linux/mptcp_pm.h` (enum
//! `mptcp_event_type`, enum `mptcp_event_attr`); they are ABI.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use netlink_packet_core::{NlaBuffer, NlasIterator};
use netlink_packet_generic::ctrl::nlas::{GenlCtrlAttrs, McastGrpAttrs};
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::protocols::NETLINK_GENERIC;
use netlink_sys::{Socket, SocketAddr};
use socket2::SockRef;

use super::socket::{invalid_data, NlSocket};

/// `MPTCP_PM_NAME`, `MPTCP_PM_EV_GRP_NAME`.
const FAMILY_NAME: &str = "mptcp_pm";
const GROUP_NAME: &str = "mptcp_pm_events";

// enum mptcp_event_type
const EVENT_CREATED: u8 = 1;
const EVENT_ESTABLISHED: u8 = 2;
const EVENT_CLOSED: u8 = 3;
const EVENT_SUB_ESTABLISHED: u8 = 10;
const EVENT_SUB_CLOSED: u8 = 11;

// enum mptcp_event_attr
const ATTR_TOKEN: u16 = 1; // u32
const ATTR_SADDR4: u16 = 5; // struct in_addr
const ATTR_SADDR6: u16 = 6; // struct in6_addr
const ATTR_DADDR4: u16 = 7;
const ATTR_DADDR6: u16 = 8;
const ATTR_SPORT: u16 = 9; // be16
const ATTR_DPORT: u16 = 10; // be16
const ATTR_ERROR: u16 = 12; // u8, the subflow's sk_err
const ATTR_RESET_REASON: u16 = 16; // u32, from the peer's MP_TCPRST
const ATTR_SERVER_SIDE: u16 = 18; // u8

/// Sizes of `struct nlmsghdr` and `struct genlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// Largest event datagram read (an event is about a hundred bytes).
const BUFFER: usize = 64 * 1024;

/// What happened, in the kernel's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MptcpEventKind {
    /// `CREATED`: a connection's initial subflow was set up with MPTCP
    /// (MP_CAPABLE answered); addresses are the initial subflow's.
    Created,
    /// `ESTABLISHED`: the connection is fully established.
    Established,
    /// `CLOSED`: the connection is gone.
    Closed,
    /// `SF_ESTABLISHED`: an additional subflow (MP_JOIN) was established.
    SubflowEstablished,
    /// `SF_CLOSED`: a subflow was closed, whether it had been established
    /// or not.
    SubflowClosed,
}

/// One path manager event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MptcpEvent {
    /// What happened.
    pub kind: MptcpEventKind,
    /// The connection's token (local).
    pub token: u32,
    /// The local address and port of the subflow (of the initial subflow
    /// for connection events); `None` when the event lacked them.
    pub local: Option<(IpAddr, u16)>,
    /// The remote address and port.
    pub remote: Option<(IpAddr, u16)>,
    /// The subflow's socket error (errno), 0 for none.
    pub error: u8,
    /// The reset reason the peer gave (MP_TCPRST), if it sent one.
    pub reset_reason: Option<u32>,
    /// The event is about a connection this host accepted.
    pub server_side: bool,
}

/// A generic netlink socket that receives the MPTCP path manager's
/// events, in the network namespace of the thread that opened it.
pub struct MptcpEvents {
    socket: Socket,
    family: u16,
    buf: Vec<u8>,
}

impl MptcpEvents {
    /// Resolves the family and its event group and subscribes to it;
    /// [`receive`](Self::receive) waits at most `poll` for events.
    pub fn open(poll: Duration) -> io::Result<Self> {
        let (family, group) = resolve(&NlSocket::open(NETLINK_GENERIC, false)?)?;
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        socket.add_membership(group)?;
        SockRef::from(&socket).set_read_timeout(Some(poll))?;
        Ok(Self {
            socket,
            family,
            buf: Vec::with_capacity(BUFFER),
        })
    }

    /// The events of the next datagram; empty when none came in time. An
    /// overrun (`ENOBUFS`: events were lost) is an error; later events
    /// still come.
    pub fn receive(&mut self) -> io::Result<Vec<MptcpEvent>> {
        self.buf.clear();
        match self.socket.recv(&mut self.buf, 0) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        }
        Ok(parse(&self.buf, self.family))
    }
}

/// The family id of `mptcp_pm` and the id of its event group.
fn resolve(socket: &NlSocket) -> io::Result<(u16, u32)> {
    let msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.to_owned())],
    });
    let replies = socket.request(&msg, 0)?;
    let attrs = || replies.iter().flat_map(|m| &m.payload.nlas);
    let family = attrs()
        .find_map(|attr| match attr {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| invalid_data("generic netlink family reply without an id"))?;
    let group = attrs()
        .filter_map(|attr| match attr {
            GenlCtrlAttrs::McastGroups(groups) => Some(groups),
            _ => None,
        })
        .flatten()
        .find_map(|group| {
            let named = group
                .iter()
                .any(|a| matches!(a, McastGrpAttrs::Name(n) if n == GROUP_NAME));
            group.iter().find_map(|a| match a {
                McastGrpAttrs::Id(id) if named => Some(*id),
                _ => None,
            })
        })
        .ok_or_else(|| invalid_data("the mptcp_pm family has no mptcp_pm_events group"))?;
    Ok((family, group))
}

/// The events of family `family` in one datagram; anything else (other
/// event types, anything malformed) is skipped.
fn parse(mut buf: &[u8], family: u16) -> Vec<MptcpEvent> {
    let mut events = Vec::new();
    while let Some(header) = buf.get(..NLMSG_HDRLEN) {
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        if kind == family {
            events.extend(buf.get(NLMSG_HDRLEN..len).and_then(event));
        }
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    events
}

/// One event from a generic netlink payload (header and attributes).
fn event(payload: &[u8]) -> Option<MptcpEvent> {
    let kind = match *payload.first()? {
        EVENT_CREATED => MptcpEventKind::Created,
        EVENT_ESTABLISHED => MptcpEventKind::Established,
        EVENT_CLOSED => MptcpEventKind::Closed,
        EVENT_SUB_ESTABLISHED => MptcpEventKind::SubflowEstablished,
        EVENT_SUB_CLOSED => MptcpEventKind::SubflowClosed,
        _ => return None,
    };
    let mut event = MptcpEvent {
        kind,
        token: 0,
        local: None,
        remote: None,
        error: 0,
        reset_reason: None,
        server_side: false,
    };
    let (mut saddr, mut daddr, mut sport, mut dport) = (None, None, 0, 0);
    for nla in NlasIterator::new(payload.get(GENL_HDRLEN..)?) {
        // A malformed attribute ends the list; what came before counts.
        let Ok(nla): Result<NlaBuffer<&[u8]>, _> = nla else {
            break;
        };
        let value = nla.value();
        match nla.kind() {
            ATTR_TOKEN => event.token = u32::from_ne_bytes(value.try_into().ok()?),
            ATTR_SADDR4 => saddr = Some(v4(value)?),
            ATTR_SADDR6 => saddr = Some(v6(value)?),
            ATTR_DADDR4 => daddr = Some(v4(value)?),
            ATTR_DADDR6 => daddr = Some(v6(value)?),
            ATTR_SPORT => sport = u16::from_be_bytes(value.try_into().ok()?),
            ATTR_DPORT => dport = u16::from_be_bytes(value.try_into().ok()?),
            ATTR_ERROR => event.error = *value.first()?,
            ATTR_RESET_REASON => {
                event.reset_reason = Some(u32::from_ne_bytes(value.try_into().ok()?))
            }
            ATTR_SERVER_SIDE => event.server_side = value.first().is_some_and(|v| *v != 0),
            _ => {}
        }
    }
    event.local = saddr.map(|a| (a, sport));
    event.remote = daddr.map(|a| (a, dport));
    Some(event)
}

fn v4(value: &[u8]) -> Option<IpAddr> {
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?).into())
}

fn v6(value: &[u8]) -> Option<IpAddr> {
    Some(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAMILY: u16 = 0x1d;

    fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    fn message(family: u16, cmd: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![cmd, 1, 0, 0];
        for (kind, value) in attrs {
            attr(&mut body, *kind, value);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&family.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_failed_join_names_its_local_address() {
        let buf = message(
            FAMILY,
            EVENT_SUB_CLOSED,
            &[
                (ATTR_TOKEN, &0xdead_beef_u32.to_ne_bytes()),
                (ATTR_SADDR4, &[10, 77, 2, 2]),
                (ATTR_DADDR4, &[10, 77, 9, 2]),
                (ATTR_SPORT, &40000u16.to_be_bytes()),
                (ATTR_DPORT, &7300u16.to_be_bytes()),
                (ATTR_ERROR, &[104]),
            ],
        );
        let events = parse(&buf, FAMILY);
        assert_eq!(
            events,
            [MptcpEvent {
                kind: MptcpEventKind::SubflowClosed,
                token: 0xdead_beef,
                local: Some(("10.77.2.2".parse().expect("ip"), 40000)),
                remote: Some(("10.77.9.2".parse().expect("ip"), 7300)),
                error: 104,
                reset_reason: None,
                server_side: false,
            }]
        );
    }

    #[test]
    fn other_families_events_and_garbage_are_skipped() {
        let mut buf = message(FAMILY + 1, EVENT_SUB_CLOSED, &[]);
        buf.extend(message(FAMILY, 6, &[(ATTR_TOKEN, &[0; 4])])); // ANNOUNCED
        buf.extend(message(
            FAMILY,
            EVENT_SUB_ESTABLISHED,
            &[
                (ATTR_SADDR6, &[0xfd; 16]),
                (ATTR_SPORT, &1u16.to_be_bytes()),
            ],
        ));
        let events = parse(&buf, FAMILY);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, MptcpEventKind::SubflowEstablished);
        assert_eq!(events[0].local, Some((IpAddr::from([0xfd; 16]), 1)));
        assert!(parse(&[0xff; 40], FAMILY).is_empty());
        let truncated = message(FAMILY, EVENT_SUB_CLOSED, &[(ATTR_SADDR4, &[1, 2, 3])]);
        assert!(parse(&truncated, FAMILY).is_empty());
        assert!(parse(&buf[..buf.len() - 3], FAMILY).is_empty());
    }
}

#[cfg(test)]
mod live {
    use super::*;

    /// Needs MPTCP in this namespace and CAP_NET_ADMIN (the suite runs as
    /// root).
    #[test]
    fn a_loopback_connection_is_seen() {
        let mut events = MptcpEvents::open(Duration::from_millis(200)).expect("open");
        let listener = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::MPTCP),
        )
        .expect("listener");
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        listener.bind(&addr.into()).expect("bind");
        listener.listen(8).expect("listen");
        let local = listener.local_addr().expect("local");
        let client = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::MPTCP),
        )
        .expect("client");
        client.connect(&local).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client.send(b"x").expect("send");
        let mut buf = [std::mem::MaybeUninit::new(0u8); 1];
        server.recv(&mut buf).expect("recv");
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.extend(events.receive().expect("receive"));
        }
        eprintln!("{seen:#?}");
        assert!(seen.iter().any(|e| e.kind == MptcpEventKind::Created));
    }
}
