//! Batched UDP for the datagram tunnel's drivers: many datagrams per
//! receive (`recvmmsg`, and UDP GRO, which hands a train of equal-sized
//! datagrams from one source over as one buffer) and per send (UDP GSO:
//! one `sendmsg` of equal-sized datagrams to one destination, cut by the
//! kernel, or by the NIC; over a veth or through a router they travel
//! as one packet as far as a receiver with GRO).
//!
//! The socket work is quinn-udp's, the field's crate for this (it is
//! quinn's, and tested across kernels: it falls back to one datagram per
//! send where GSO fails). What is here holds the buffers, reused for every
//! batch, so the hot path allocates nothing. [`read_queued_tun`] does the
//! same for the TUN reads that feed these batches, and [`TunWriter`] writes
//! what the batches carried to the TUN, a flow's datagrams joined into UDP
//! super-packets.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicBool, Ordering};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use crate::wire::{coalesce, vnet};

/// Messages one receive takes at most (`recvmmsg`); with GRO each holds up
/// to 64 datagrams from one source, else one.
pub const RECV_MESSAGES: usize = 4;

/// Room per received message: the largest UDP datagram, or a GRO train
/// (the kernel coalesces at most 64 KiB by default).
const MESSAGE_ROOM: usize = 65_536;

/// Datagrams one GSO send carries at most (the kernel's limit).
const MAX_SEGMENTS: usize = 64;

/// Bytes one GSO send carries at most: what fits one IPv4 or IPv6 packet
/// before the kernel cuts it.
const MAX_GSO_BYTES: usize = 65_000;

/// A UDP socket set up for batches (GRO on; see [`Socket::new`]).
#[derive(Debug)]
pub struct Socket {
    io: UdpSocket,
    state: UdpSocketState,
}

impl Deref for Socket {
    type Target = UdpSocket;

    fn deref(&self) -> &UdpSocket {
        &self.io
    }
}

impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.as_fd()
    }
}

impl Socket {
    /// Sets `io` up for batched receives and sends. quinn-udp forbids
    /// fragmentation (it does path MTU discovery of its own); the tunnel
    /// allows it again ([`crate::sys::allow_fragments`]), which the caller
    /// does after this.
    ///
    /// # Errors
    ///
    /// A socket option that cannot be set.
    pub fn new(io: UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&io).into())?;
        Ok(Self { io, state })
    }

    /// Waits for datagrams and receives what is queued into `batch`, at
    /// most [`RECV_MESSAGES`] messages.
    ///
    /// # Errors
    ///
    /// What `recvmmsg` returns (ICMP errors of earlier sends show up here).
    pub async fn recv(&self, batch: &mut RecvBatch) -> io::Result<()> {
        batch.count = 0;
        let RecvBatch { buf, meta, count } = batch;
        let got = self
            .io
            .async_io(Interest::READABLE, || {
                let mut slices = slices(buf);
                self.state.recv((&self.io).into(), &mut slices, meta)
            })
            .await?;
        *count = got.min(RECV_MESSAGES);
        Ok(())
    }

    /// Sends `bytes` to `dst` as datagrams of `segment` bytes (the last
    /// may be shorter): with GSO, as few calls as the kernel allows, else
    /// one by one. Never waits: a full socket buffer, or a failure, is
    /// loss, as for any datagram.
    ///
    /// # Errors
    ///
    /// The first send that failed (`WouldBlock`: the socket buffer is full;
    /// the rest was not sent).
    pub fn try_send_segments(
        &self,
        dst: SocketAddr,
        bytes: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        let mut first_error = None;
        for chunk in bytes.chunks(self.chunk_len(segment)) {
            if let Err(e) = self.try_send_chunk(dst, chunk, segment) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// As [`Self::try_send_segments`], but waits while the socket buffer
    /// is full.
    ///
    /// # Errors
    ///
    /// The first send that failed (the others were still tried).
    pub async fn send_segments(
        &self,
        dst: SocketAddr,
        bytes: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        let mut first_error = None;
        for chunk in bytes.chunks(self.chunk_len(segment)) {
            loop {
                match self.try_send_chunk(dst, chunk, segment) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.io.writable().await?,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        break;
                    }
                    Ok(()) => break,
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Bytes of `segment`-sized datagrams one send carries.
    fn chunk_len(&self, segment: usize) -> usize {
        let segment = segment.max(1);
        let per_send = self
            .state
            .max_gso_segments()
            .min(MAX_SEGMENTS)
            .min(MAX_GSO_BYTES / segment)
            .max(1);
        segment * per_send
    }

    /// One send of `chunk` (at most [`Self::chunk_len`]): GSO for several
    /// datagrams; if the kernel refuses it (a segment over the path MTU, a
    /// device without GSO: quinn-udp then stops using it on this socket),
    /// one by one, which the kernel may fragment.
    fn try_send_chunk(&self, dst: SocketAddr, chunk: &[u8], segment: usize) -> io::Result<()> {
        let gso = u16::try_from(segment)
            .ok()
            .filter(|_| chunk.len() > segment);
        let Some(size) = gso else {
            return self.try_send_one(dst, chunk);
        };
        match self.try_send_gso(dst, chunk, size) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => chunk
                .chunks(segment)
                .try_for_each(|one| self.try_send_one(dst, one)),
            sent => sent,
        }
    }

    fn try_send_gso(&self, dst: SocketAddr, bytes: &[u8], segment: u16) -> io::Result<()> {
        let transmit = Transmit {
            destination: dst,
            ecn: None,
            contents: bytes,
            segment_size: Some(usize::from(segment)),
            src_ip: None,
        };
        self.io.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.io).into(), &transmit)
        })
    }

    fn try_send_one(&self, dst: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        self.io.try_send_to(bytes, dst).map(|_| ())
    }
}

/// Where `inner`, a slice of a buffer of `len` bytes at address `base`,
/// lies in it (so a packet opened in place can be written out after the
/// lock is gone).
pub fn range_in(base: usize, len: usize, inner: &[u8]) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(base)?;
    let end = start.checked_add(inner.len())?;
    (end <= len).then_some(start..end)
}

fn slices(buf: &mut [u8]) -> [IoSliceMut<'_>; RECV_MESSAGES] {
    let mut chunks = buf.chunks_mut(MESSAGE_ROOM);
    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()))
}

/// The buffers of one receive, reused for every batch.
pub struct RecvBatch {
    buf: Vec<u8>,
    meta: [RecvMeta; RECV_MESSAGES],
    count: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Room for [`RECV_MESSAGES`] messages.
    #[must_use]
    pub fn new() -> Self {
        Self {
            buf: vec![0; RECV_MESSAGES * MESSAGE_ROOM],
            meta: std::array::from_fn(|_| RecvMeta::default()),
            count: 0,
        }
    }

    /// The datagrams of the last receive, in arrival order: each one's
    /// source and where it lies in [`Self::bytes_mut`] (a GRO train cut at
    /// its stride).
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, Range<usize>)> + '_ {
        self.meta[..self.count]
            .iter()
            .enumerate()
            .flat_map(|(i, meta)| {
                let start = i * MESSAGE_ROOM;
                let len = meta.len.min(MESSAGE_ROOM);
                let stride = if meta.stride == 0 { len } else { meta.stride };
                (0..len)
                    .step_by(stride.max(1))
                    .map(move |at| (meta.addr, start + at..start + (at + stride).min(len)))
            })
    }

    /// The buffer the ranges of [`Self::datagrams`] point into.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// As [`Self::bytes`], to open datagrams in place.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

/// Sealed datagrams on their way out, packed back to back in one buffer
/// reused for every batch, each with where it goes (`T`: a destination,
/// or a set of them). Consecutive datagrams to the same place and of the
/// same size form a run, sent in one GSO call.
#[derive(Debug)]
pub struct SendBatch<T> {
    buf: Vec<u8>,
    used: usize,
    runs: Vec<Run<T>>,
}

/// Datagrams `start..end` of the buffer, each `segment` bytes but the last.
#[derive(Debug, Clone, Copy)]
struct Run<T> {
    to: T,
    start: usize,
    end: usize,
    segment: usize,
    /// The last datagram was shorter: nothing more joins.
    closed: bool,
}

impl<T: Copy + PartialEq> SendBatch<T> {
    /// A batch of `capacity` bytes.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity],
            used: 0,
            runs: Vec::with_capacity(64),
        }
    }

    /// Room for the next datagram, at least `need` bytes; `None` when the
    /// batch is too full (send it first).
    pub fn room(&mut self, need: usize) -> Option<&mut [u8]> {
        self.buf.get_mut(self.used..).filter(|r| r.len() >= need)
    }

    /// The first `len` bytes of the [`Self::room`] just written are a
    /// datagram for `to`.
    pub fn commit(&mut self, to: T, len: usize) {
        let start = self.used;
        let end = (start + len).min(self.buf.len());
        self.used = end;
        let len = end - start;
        if let Some(run) = self.runs.last_mut() {
            let joins = run.to == to
                && !run.closed
                && len <= run.segment
                && (run.end - run.start) / run.segment < MAX_SEGMENTS
                && run.end - run.start + len <= MAX_GSO_BYTES;
            if joins {
                run.end = end;
                run.closed = len < run.segment;
                return;
            }
        }
        self.runs.push(Run {
            to,
            start,
            end,
            segment: len.max(1),
            closed: false,
        });
    }

    /// Whether nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Each run: where it goes, its bytes and its datagrams' size.
    pub fn runs(&self) -> impl Iterator<Item = (T, &[u8], usize)> + '_ {
        self.runs
            .iter()
            .filter_map(|r| Some((r.to, self.buf.get(r.start..r.end)?, r.segment)))
    }

    /// Empties the batch (its buffer stays).
    pub fn clear(&mut self) {
        self.used = 0;
        self.runs.clear();
    }
}

/// Writes IP packets to a TUN device, in order, without waiting (a TUN
/// write never does): when the device takes virtio-net headers, each run
/// of one flow's consecutive UDP datagrams that [`coalesce`] can join goes
/// as one super-packet, which the kernel cuts back into the datagrams
/// after one trip through routing and the devices (and the receiving
/// socket's owner is woken once per super-packet, not per datagram); the
/// rest go one by one. If the kernel refuses a super-packet's header
/// (`EINVAL`: too old for UDP segmentation from a TUN), its datagrams go
/// one by one and the writer stops joining.
#[derive(Debug)]
pub struct TunWriter {
    vnet: bool,
    coalesce: AtomicBool,
}

impl TunWriter {
    /// A writer for a device with virtio-net headers (`vnet`) or without.
    #[must_use]
    pub fn new(vnet: bool) -> Self {
        Self {
            vnet,
            coalesce: AtomicBool::new(vnet),
        }
    }

    /// Writes one IP packet with a complete checksum.
    ///
    /// # Errors
    ///
    /// What the write returned.
    pub fn write_one(&self, tun: &tun_rs::AsyncDevice, packet: &[u8]) -> io::Result<()> {
        if self.vnet {
            write_tun(tun, &[IoSlice::new(&vnet::PLAIN), IoSlice::new(packet)])?;
        } else {
            write_tun(tun, &[IoSlice::new(packet)])?;
        }
        Ok(())
    }

    /// Writes the IP packets at `packets` in `buf`, in that order. Returns
    /// how many could not be written and the last error, if any.
    pub fn write(
        &self,
        tun: &tun_rs::AsyncDevice,
        buf: &[u8],
        packets: &[Range<usize>],
    ) -> (usize, Option<io::Error>) {
        let mut failed = (0, None);
        let mut fail = |e: io::Error, n: usize| {
            failed.0 += n;
            failed.1 = Some(e);
        };
        let coalesce = self.coalesce.load(Ordering::Relaxed);
        let packet = |i: usize| packets.get(i).and_then(|r| buf.get(r.clone()));
        let mut i = 0;
        while i < packets.len() {
            let Some(first) = packet(i) else {
                i += 1;
                continue;
            };
            let count = if coalesce {
                joined(first, i, packet)
            } else {
                None
            };
            let Some((datagram, count, bytes)) = count else {
                if let Err(e) = self.write_one(tun, first) {
                    fail(e, 1);
                }
                i += 1;
                continue;
            };
            let mut header = [0; coalesce::MAX_HEADER];
            let mut iov = [IoSlice::new(&[]); 1 + coalesce::MAX_SEGMENTS];
            let written = datagram
                .super_header(first, bytes, &mut header)
                .and_then(|len| {
                    iov[0] = IoSlice::new(header.get(..len)?);
                    let skip = datagram.header_len();
                    for (k, slot) in iov.iter_mut().skip(1).take(count).enumerate() {
                        *slot = IoSlice::new(packet(i + k)?.get(skip..)?);
                    }
                    Some(write_tun(tun, &iov[..=count]))
                });
            match written {
                Some(Ok(_)) => {}
                // The header refused (a kernel without UDP segmentation
                // from a TUN); any other error (the device down) is not
                // the super-packet's and would befall each datagram too.
                Some(Err(e)) if e.raw_os_error() != Some(libc::EINVAL) => fail(e, count),
                refused => {
                    if let Some(Err(e)) = refused {
                        debug!(error = %e, "the TUN refuses UDP super-packets; writing datagrams one by one");
                        self.coalesce.store(false, Ordering::Relaxed);
                    }
                    for k in 0..count {
                        if let Some(Err(e)) = packet(i + k).map(|p| self.write_one(tun, p)) {
                            fail(e, 1);
                        }
                    }
                }
            }
            i += count;
        }
        failed
    }
}

/// One packet gathered from `bufs`, written at once: a TUN write never
/// waits, so the runtime's idea of the descriptor's readiness (not yet
/// known right after it opened) must not hold it back.
fn write_tun(tun: &tun_rs::AsyncDevice, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    crate::sys::write_tun(std::os::fd::AsFd::as_fd(&**tun), bufs)
}

/// The run of datagrams that joins the one at `first` (index `i`;
/// `packet` gives each by index): the first's view, how many (at least
/// two) and their payload bytes; `None` when nothing joins it.
fn joined<'a>(
    first: &[u8],
    i: usize,
    packet: impl Fn(usize) -> Option<&'a [u8]>,
) -> Option<(coalesce::Datagram, usize, usize)> {
    let datagram = coalesce::Datagram::of(first)?;
    let (mut count, mut bytes, mut last) = (1, datagram.payload(), datagram.payload());
    while let Some(p) = packet(i + count) {
        let Some(next) = coalesce::Datagram::of(p) else {
            break;
        };
        // The first's checksum is worth checking once a second joins.
        if !datagram.joins(count, bytes, last, &next)
            || !next.checksum_ok(p)
            || (count == 1 && !datagram.checksum_ok(first))
        {
            break;
        }
        count += 1;
        bytes += next.payload();
        last = next.payload();
    }
    (count > 1).then_some((datagram, count, bytes))
}

/// After a TUN read woke up with the packet at `buf[..first]`: the packets
/// already queued behind it, read without waiting into the rest of `buf`
/// while it has room for a packet of `max_packet` bytes, at most `batch`
/// in all. `read` gets where each lies in `buf`, the first included.
pub fn read_queued_tun(
    tun: &tun_rs::AsyncDevice,
    buf: &mut [u8],
    first: usize,
    max_packet: usize,
    batch: usize,
    read: &mut Vec<Range<usize>>,
) {
    read.clear();
    read.push(0..first);
    let mut used = first;
    while read.len() < batch {
        let Some(room) = buf.get_mut(used..).filter(|r| r.len() >= max_packet) else {
            break;
        };
        match tun.try_recv(room) {
            Ok(n) => {
                read.push(used..used + n);
                used += n;
            }
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_datagrams_to_one_place_form_one_run_until_a_shorter_one() {
        let mut batch = SendBatch::<u8>::new(10_000);
        for (to, len) in [(1, 100), (1, 100), (1, 60), (1, 100), (2, 100), (2, 100)] {
            let room = batch.room(len).expect("room");
            room[..len].fill(to);
            batch.commit(to, len);
        }
        let runs: Vec<(u8, usize, usize)> = batch
            .runs()
            .map(|(to, bytes, segment)| (to, bytes.len(), segment))
            .collect();
        assert_eq!(runs, [(1, 260, 100), (1, 100, 100), (2, 200, 100)]);
        assert!(batch.room(10_000).is_none(), "full");
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.room(10_000).is_some());
    }

    #[test]
    fn a_run_stops_at_the_kernels_limits() {
        let mut batch = SendBatch::<u8>::new(1 << 20);
        for _ in 0..100 {
            batch.room(1000).expect("room");
            batch.commit(0, 1000);
        }
        let sizes: Vec<usize> = batch.runs().map(|(_, b, _)| b.len()).collect();
        assert_eq!(sizes, [64_000, 36_000], "64 datagrams at most");
    }

    #[tokio::test]
    async fn a_gso_train_arrives_as_its_datagrams() {
        let a = Socket::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind")).expect("a");
        let b = Socket::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind")).expect("b");
        let to = b.local_addr().expect("addr");
        let mut bytes = Vec::new();
        for i in 0..10u8 {
            bytes.extend(std::iter::repeat_n(i, if i == 9 { 50 } else { 300 }));
        }
        a.writable().await.expect("writable");
        a.try_send_segments(to, &bytes, 300).expect("send");
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < 10 {
            b.recv(&mut batch).await.expect("recv");
            let ranges: Vec<_> = batch.datagrams().collect();
            for (src, range) in ranges {
                assert_eq!(src, a.local_addr().expect("addr"));
                got.push(batch.bytes_mut()[range].to_vec());
            }
        }
        assert_eq!(got.len(), 10);
        for (i, datagram) in got.iter().enumerate() {
            let len = if i == 9 { 50 } else { 300 };
            assert_eq!(datagram, &vec![i as u8; len]);
        }
    }
}
