//! Link and address events: the kernel tells a socket subscribed to
//! `RTNLGRP_LINK` whenever an interface changes (administrative state,
//! carrier, name), and one subscribed to the address groups whenever an
//! address is added or removed (and to the route groups whenever a default
//! route changes), so the client learns that a line went down, was
//! renumbered or got a new gateway within milliseconds instead of waiting
//! for TCP to time out.

use std::io;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};

use super::route::MAIN_TABLE;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use socket2::SockRef;

/// `RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR` and `RTNLGRP_IPV6_IFADDR`
/// (`linux/rtnetlink.h`).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
/// `RTNLGRP_IPV4_ROUTE` and `RTNLGRP_IPV6_ROUTE`.
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// Largest event datagram read (link messages are a few KiB).
const BUFFER: usize = 64 * 1024;

/// What changed on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Its state, as the event reported it.
    Link {
        /// Interface index.
        ifindex: u32,
        /// Administratively up and with carrier (`IFF_UP` and
        /// `IFF_LOWER_UP`); `false` also when the interface was deleted.
        usable: bool,
    },
    /// An address was added to it or removed from it (or changed flags,
    /// such as finishing duplicate address detection): read its addresses
    /// again to know which it has now.
    Address {
        /// Interface index.
        ifindex: u32,
    },
    /// A default route of the main table out of it was added, changed or
    /// removed (DHCP set a new gateway): read its default gateway again.
    Route {
        /// Interface index.
        ifindex: u32,
    },
}

/// A route netlink socket that receives link and address events, in the
/// network namespace of the thread that opened it.
pub struct LinkEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkEvents {
    /// Subscribes to link and address events; [`receive`](Self::receive) waits at most
    /// `poll` for one, so a thread reading them can notice it should stop.
    pub fn open(poll: Duration) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        for group in [
            RTNLGRP_LINK,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_ROUTE,
        ] {
            socket.add_membership(group)?;
        }
        SockRef::from(&socket).set_read_timeout(Some(poll))?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(BUFFER),
        })
    }

    /// The events of the next datagram; empty when none came in time. An
    /// overrun (`ENOBUFS`: events were lost) is an error: the caller should
    /// read the current state again.
    pub fn receive(&mut self) -> io::Result<Vec<LinkEvent>> {
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
        Ok(parse(&self.buf))
    }
}

/// The link and address events in one datagram; anything else (or
/// anything malformed) is skipped.
fn parse(mut buf: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]) {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    events.push(event(&link, true));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    events.push(event(&link, false));
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewAddress(address)
                    | RouteNetlinkMessage::DelAddress(address),
                ) => events.push(address_event(&address)),
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route),
                ) => events.extend(route_event(&route)),
                _ => {}
            }
        }
        // Messages are 4-byte aligned.
        let next = len.div_ceil(4) * 4;
        buf = buf.get(next..).unwrap_or_default();
    }
    events
}

fn event(link: &LinkMessage, exists: bool) -> LinkEvent {
    let flags = link.header.flags;
    LinkEvent::Link {
        ifindex: link.header.index,
        usable: exists && flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
    }
}

/// A main-table default route with an output interface; other routes
/// (subnets, mpbond's own tables) are of no interest.
fn route_event(route: &RouteMessage) -> Option<LinkEvent> {
    let mut table = u32::from(route.header.table);
    let mut ifindex = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            _ => {}
        }
    }
    if table != MAIN_TABLE || route.header.destination_prefix_length != 0 {
        return None;
    }
    ifindex.map(|ifindex| LinkEvent::Route { ifindex })
}

fn address_event(address: &AddressMessage) -> LinkEvent {
    LinkEvent::Address {
        ifindex: address.header.index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;

    fn datagram(messages: &[(RouteNetlinkMessage, u16)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (inner, _) in messages {
            let mut msg = NetlinkMessage::new(
                NetlinkHeader::default(),
                NetlinkPayload::from(inner.clone()),
            );
            msg.finalize();
            let mut buf = vec![0; msg.buffer_len()];
            msg.serialize(&mut buf);
            out.extend_from_slice(&buf);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        out
    }

    fn link(index: u32, flags: LinkFlags) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = flags;
        link
    }

    #[test]
    fn carrier_and_deletion_are_read_from_one_datagram() {
        let buf = datagram(&[
            (
                RouteNetlinkMessage::NewLink(link(3, LinkFlags::Up | LinkFlags::LowerUp)),
                0,
            ),
            (RouteNetlinkMessage::NewLink(link(4, LinkFlags::Up)), 0),
            (
                RouteNetlinkMessage::DelLink(link(5, LinkFlags::Up | LinkFlags::LowerUp)),
                0,
            ),
        ]);
        assert_eq!(
            parse(&buf),
            [
                LinkEvent::Link {
                    ifindex: 3,
                    usable: true
                },
                LinkEvent::Link {
                    ifindex: 4,
                    usable: false
                },
                LinkEvent::Link {
                    ifindex: 5,
                    usable: false
                },
            ]
        );
    }

    #[test]
    fn address_changes_name_their_interface() {
        let address = |index| {
            let mut msg = AddressMessage::default();
            msg.header.index = index;
            msg
        };
        let buf = datagram(&[
            (RouteNetlinkMessage::NewAddress(address(7)), 0),
            (RouteNetlinkMessage::DelAddress(address(8)), 0),
        ]);
        assert_eq!(
            parse(&buf),
            [
                LinkEvent::Address { ifindex: 7 },
                LinkEvent::Address { ifindex: 8 }
            ]
        );
    }

    #[test]
    fn main_default_routes_name_their_interface() {
        let route = |table: u32, dst_len, oif| {
            let mut msg = RouteMessage::default();
            msg.header.table = 252;
            msg.header.destination_prefix_length = dst_len;
            msg.attributes.push(RouteAttribute::Table(table));
            msg.attributes.push(RouteAttribute::Oif(oif));
            msg
        };
        let buf = datagram(&[
            (RouteNetlinkMessage::NewRoute(route(254, 0, 4)), 0),
            // A subnet, and a default route in mpbond's own table.
            (RouteNetlinkMessage::NewRoute(route(254, 24, 5)), 0),
            (RouteNetlinkMessage::NewRoute(route(7702, 0, 6)), 0),
            (RouteNetlinkMessage::DelRoute(route(254, 0, 7)), 0),
        ]);
        assert_eq!(
            parse(&buf),
            [
                LinkEvent::Route { ifindex: 4 },
                LinkEvent::Route { ifindex: 7 }
            ]
        );
    }

    #[test]
    fn garbage_and_truncation_are_skipped() {
        assert!(parse(&[]).is_empty());
        assert!(parse(&[0xff; 40]).is_empty());
        let buf = datagram(&[(RouteNetlinkMessage::NewLink(link(3, LinkFlags::Up)), 0)]);
        assert!(parse(&buf[..buf.len() - 8]).is_empty());
    }
}
