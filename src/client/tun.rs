//! The client's TUN device, with TCP offloads when the kernel grants them.
//!
//! With offloads the device is opened with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD` of checksum and TCP segmentation (IPv4 and IPv6), and
//! UDP segmentation where the kernel has it (6.2 on): every packet read or
//! written carries a [`vnet`] header, TCP arrives as super-packets of up
//! to 64 KiB with partial checksums, and goes back the same way for the
//! kernel to segment (or to deliver whole to the local listener). UDP
//! mostly arrives one datagram at a time (its checksum may be partial:
//! the capture finishes it before sealing), and as a super-packet when
//! the sender segments itself (`UDP_SEGMENT`, as QUIC stacks do) or GRO
//! joined it on the way in: the capture cuts it into its datagrams
//! ([`crate::wire::coalesce::split`]), one read instead of dozens.
//! Datagrams from the tunnel are written back a flow's run at a time as
//! UDP super-packets, which the kernel takes from any device with
//! virtio-net headers.

use std::io::{self, IoSlice};
use std::ops::{Deref, Range};
use std::os::fd::AsFd;

use tracing::{debug, info};
use tun_rs::{AsyncDevice, DeviceBuilder};

use crate::config::client::TunConfig;
use crate::udp::TunWriter;
use crate::wire::vnet;

/// The TUN device and how its packets are framed.
pub(super) struct Tun {
    device: AsyncDevice,
    offload: bool,
    /// Writes batches of packets, a flow's datagrams joined with offloads.
    writer: TunWriter,
}

impl Tun {
    /// Opens the device, with offloads if `config.offload` and the kernel
    /// grants them, plain otherwise.
    pub(super) fn open(config: &TunConfig) -> io::Result<Self> {
        if config.offload {
            match Self::build(config, true) {
                Ok(device) => {
                    let fd = device.as_fd();
                    let tcp = crate::sys::TUN_TCP_OFFLOADS;
                    let udp = crate::sys::TUN_UDP_OFFLOADS;
                    // UDP segmentation needs Linux 6.2; without it, TCP's.
                    let granted = match crate::sys::set_tun_offloads(fd, tcp | udp) {
                        Ok(()) => Ok("checksum, TCP and UDP segmentation"),
                        Err(e) => {
                            debug!(error = %e, "the kernel refuses the TUN's UDP segmentation");
                            crate::sys::set_tun_offloads(fd, tcp)
                                .map(|()| "checksum, TCP segmentation")
                        }
                    };
                    match granted {
                        Ok(what) => {
                            info!(name = %config.name, "TUN offloads on ({what})");
                            return Ok(Self {
                                device,
                                offload: true,
                                writer: TunWriter::new(true),
                            });
                        }
                        Err(e) => {
                            debug!(error = %e, "the kernel refuses the TUN's TCP offloads; plain packets");
                            drop(device);
                        }
                    }
                }
                Err(e) => debug!(error = %e, "no TUN offloads; plain packets"),
            }
        }
        Ok(Self {
            device: Self::build(config, false)?,
            offload: false,
            writer: TunWriter::new(false),
        })
    }

    fn build(config: &TunConfig, offload: bool) -> io::Result<AsyncDevice> {
        DeviceBuilder::new()
            .name(config.name.clone())
            .ipv4(config.ipv4.addr(), config.ipv4.prefix_len(), None)
            .ipv6(config.ipv6.addr(), config.ipv6.prefix_len())
            .mtu(config.mtu)
            .offload(offload)
            .build_async()
    }

    /// Whether packets carry a [`vnet`] header.
    pub(super) fn offload(&self) -> bool {
        self.offload
    }

    /// Writes one whole IP packet with a complete checksum (one mpbond
    /// built, or a datagram from the tunnel); in front of it a plain
    /// [`vnet`] header when the device has offloads. Returns the bytes of
    /// the IP packet written.
    pub(super) async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        if !self.offload {
            return self.device.send(packet).await;
        }
        let bufs = [IoSlice::new(&vnet::PLAIN), IoSlice::new(packet)];
        let n = self.device.send_vectored(&bufs).await?;
        Ok(n.saturating_sub(vnet::LEN))
    }

    /// Writes the whole IP packets at `packets` in `buf` (datagrams from
    /// the tunnel), in order, without waiting: with offloads, a flow's
    /// consecutive UDP datagrams as one super-packet
    /// ([`crate::wire::coalesce`]). Returns how many could not be written
    /// and the last error.
    pub(super) fn write_batch(
        &self,
        buf: &[u8],
        packets: &[Range<usize>],
    ) -> (usize, Option<io::Error>) {
        self.writer.write(&self.device, buf, packets)
    }

    /// Writes a packet as read, with its own header if the device has
    /// offloads.
    pub(super) async fn send_framed(&self, framed: &[u8]) -> io::Result<usize> {
        self.device.send(framed).await
    }
}

impl Deref for Tun {
    type Target = AsyncDevice;

    fn deref(&self) -> &AsyncDevice {
        &self.device
    }
}
