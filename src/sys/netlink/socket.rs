//! One netlink socket talking to the kernel: send a request, collect the
//! replies up to the kernel's acknowledgement or the end of a dump.
//!
//! Synchronous on purpose: the operations are rare and answered at once, so
//! a blocking socket with a reply timeout is simpler than an async
//! connection task. Message encoding is the rust-netlink crates' job; this
//! file only frames, matches sequence numbers and turns kernel errors into
//! `io::Error`s carrying the errno.

use std::io;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use netlink_packet_core::{
    parse_string, parse_u32, ErrorMessage, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable, NlasIterator, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};
use socket2::SockRef;

/// How long to wait for the kernel's answer. The kernel answers netlink
/// requests synchronously, so this only fires if something is badly wrong;
/// it keeps a caller (perhaps on a tokio blocking thread) from hanging.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a dump is restarted when the kernel flags it as interrupted
/// (`NLM_F_DUMP_INTR`: the table changed while it was being read).
const DUMP_ATTEMPTS: usize = 3;

/// A datagram larger than this is read after a `MSG_PEEK` told its size.
const INITIAL_BUFFER: usize = 32 * 1024;

/// `NLM_F_CAPPED` on an error reply: only the request's header is echoed.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS` on an error reply: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG` (`linux/netlink.h`): the kernel's error text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// A connected netlink socket of one protocol (route, generic, ...).
///
/// Requests are serialised by a mutex so that two threads sharing one
/// socket never read each other's replies.
pub(super) struct NlSocket {
    inner: Mutex<Inner>,
}

struct Inner {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Opens and connects a socket of `protocol` (a `NETLINK_*` number).
    ///
    /// `strict` turns on `NETLINK_GET_STRICT_CHK`, so the kernel filters
    /// dumps by the header fields given (interface index, table, ...) and
    /// rejects malformed requests instead of ignoring them.
    pub(super) fn open(protocol: isize, strict: bool) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // The kernel's error text (extended ack) is logged on failures; a
        // capped ack keeps it from echoing whole requests back.
        socket.set_ext_ack(true)?;
        socket.set_cap_ack(true)?;
        if strict {
            socket.set_netlink_get_strict_chk(true)?;
        }
        SockRef::from(&socket).set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Self {
            inner: Mutex::new(Inner {
                socket,
                // Any start works; a distinctive one is easy to spot in
                // `nlmon` captures.
                seq: 0x6d70_0000,
                buf: Vec::with_capacity(INITIAL_BUFFER),
            }),
        })
    }

    /// Sends `msg` (with `NLM_F_REQUEST | NLM_F_ACK | flags`) and returns the
    /// messages the kernel answered with before its acknowledgement.
    pub(super) fn request<I>(&self, msg: &I, flags: u16) -> io::Result<Vec<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Clone,
    {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (replies, _interrupted) = inner.exchange(msg, flags)?;
        Ok(replies)
    }

    /// Dumps with `msg` (`NLM_F_DUMP`) and returns every message of the dump.
    /// A dump the kernel flags as interrupted is read again.
    pub(super) fn dump<I>(&self, msg: &I) -> io::Result<Vec<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Clone,
    {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..DUMP_ATTEMPTS {
            let (replies, interrupted) = inner.exchange(msg, NLM_F_DUMP)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            format!("the kernel's table kept changing during {DUMP_ATTEMPTS} dumps"),
        ))
    }
}

impl Inner {
    /// One request and its replies; also says whether a dump was interrupted.
    fn exchange<I>(&mut self, msg: &I, flags: u16) -> io::Result<(Vec<I>, bool)>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Clone,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg.clone()));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            self.recv_datagram()?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let rest = self.buf.get(offset..).unwrap_or_default();
                let reply = NetlinkMessage::<I>::deserialize(rest).map_err(invalid_data)?;
                let len = reply.header.length as usize;
                if len < NLMSG_HDRLEN {
                    return Err(invalid_data("netlink message shorter than its header"));
                }
                offset += len.next_multiple_of(4);
                if reply.header.sequence_number != seq {
                    // The answer to an earlier request that timed out.
                    continue;
                }
                interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    NetlinkPayload::Error(err) => {
                        let Some(code) = err.code else {
                            return Ok((replies, interrupted));
                        };
                        let message = extended_ack(reply.header.flags, &err);
                        return Err(kernel_error(code.get(), message));
                    }
                    NetlinkPayload::Done(done) => {
                        if done.code < 0 {
                            return Err(kernel_error(done.code, None));
                        }
                        return Ok((replies, interrupted));
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(invalid_data("netlink overrun"));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Reads one datagram into `self.buf`, however large it is.
    fn recv_datagram(&mut self) -> io::Result<()> {
        self.buf.clear();
        let size = self
            .socket
            .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC)
            .map_err(timeout_context)?;
        self.buf.clear();
        self.buf.reserve(size);
        self.socket
            .recv(&mut self.buf, 0)
            .map_err(timeout_context)?;
        Ok(())
    }
}

/// The kernel's errno as an `io::Error`; its extended-ack text, if any, is
/// logged because `io::Error` cannot carry both the errno and a message.
fn kernel_error(code: i32, message: Option<String>) -> io::Error {
    let errno = code.checked_neg().unwrap_or(libc::EINVAL);
    if let Some(message) = message {
        tracing::debug!(errno, kernel = %message, "netlink request refused");
    }
    io::Error::from_raw_os_error(errno)
}

/// The text of an extended ack (`NLMSGERR_ATTR_MSG`), when the kernel sent one.
fn extended_ack(flags: u16, err: &ErrorMessage) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // `err.header` is what follows the error code: the echoed request
    // (only its header when capped), then the attributes.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        parse_u32(err.header.get(..4)?).ok()? as usize
    };
    let tlvs = err.header.get(echoed..)?;
    NlasIterator::new(tlvs)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| parse_string(nla.value()).ok())
}

fn timeout_context(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from the kernel within {REPLY_TIMEOUT:?}"),
        )
    } else {
        err
    }
}

/// A reply we could not decode, as an `io::Error`.
pub(super) fn invalid_data(err: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("undecodable netlink reply: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_ack_text_is_found_after_a_capped_header() {
        // A capped error: the 16-byte echoed header, then NLMSGERR_ATTR_MSG.
        let mut header = vec![0u8; NLMSG_HDRLEN];
        let text = b"address not found\0";
        let nla_len = 4 + text.len();
        header.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        header.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        header.extend_from_slice(text);
        header.resize(NLMSG_HDRLEN + nla_len.next_multiple_of(4), 0);
        let mut err = ErrorMessage::default();
        err.header = header;
        assert_eq!(
            extended_ack(NLM_F_CAPPED | NLM_F_ACK_TLVS, &err).as_deref(),
            Some("address not found")
        );
        assert_eq!(extended_ack(NLM_F_CAPPED, &err), None);
    }

    #[test]
    fn truncated_extended_ack_is_ignored() {
        let mut err = ErrorMessage::default();
        err.header = vec![0xff; 3];
        assert_eq!(extended_ack(NLM_F_ACK_TLVS, &err), None);
        assert_eq!(extended_ack(NLM_F_ACK_TLVS | NLM_F_CAPPED, &err), None);
    }

    #[test]
    fn kernel_errors_keep_the_errno() {
        let err = kernel_error(-libc::ENOENT, Some("gone".into()));
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}
