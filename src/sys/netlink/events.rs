//! Link events: the kernel tells a socket subscribed to `RTNLGRP_LINK`
//! whenever an interface changes (administrative state, carrier, name), so
//! the client learns that a line went down within milliseconds instead of
//! waiting for TCP to time out.

use std::io;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use socket2::SockRef;

/// `RTNLGRP_LINK` (`linux/rtnetlink.h`).
const RTNLGRP_LINK: u32 = 1;

/// Largest event datagram read (link messages are a few KiB).
const BUFFER: usize = 64 * 1024;

/// One interface's state as an event reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    /// Interface index.
    pub ifindex: u32,
    /// Administratively up and with carrier (`IFF_UP` and `IFF_LOWER_UP`);
    /// `false` also when the interface was deleted.
    pub usable: bool,
}

/// A route netlink socket that receives link events, in the network
/// namespace of the thread that opened it.
pub struct LinkEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkEvents {
    /// Subscribes to link events; [`receive`](Self::receive) waits at most
    /// `poll` for one, so a thread reading them can notice it should stop.
    pub fn open(poll: Duration) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        socket.add_membership(RTNLGRP_LINK)?;
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

/// The link events in one datagram; anything else (or anything malformed)
/// is skipped.
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
    LinkEvent {
        ifindex: link.header.index,
        usable: exists && flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
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
                LinkEvent {
                    ifindex: 3,
                    usable: true
                },
                LinkEvent {
                    ifindex: 4,
                    usable: false
                },
                LinkEvent {
                    ifindex: 5,
                    usable: false
                },
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
