//! The kernel's MPTCP path manager over generic netlink (family `mptcp_pm`):
//! limits and endpoints, what `ip mptcp limits` and `ip mptcp endpoint` do.
//!
//! No published crate encodes the commands we need (`mptcp-pm` 0.2 only
//! reads endpoints and limits, through an async connection), so the few
//! attributes are written here on top of `netlink-packet-core`'s `Nla` and
//! `netlink-packet-generic`'s framing. Numbers are from the kernel's uapi
//! `linux/mptcp_pm.h` (generated from `Documentation/netlink/specs/mptcp_pm.yaml`;
//! older kernels carry the same values in `linux/mptcp.h`). They are ABI and
//! never change.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    parse_i32, parse_u16, parse_u32, parse_u8, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer,
    NlasIterator, Parseable, ParseableParametrized, NLA_F_NESTED,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::protocols::NETLINK_GENERIC;

use super::socket::{invalid_data, NlSocket};
use super::{interface_name, NetlinkError};

/// `MPTCP_PM_NAME`, `MPTCP_PM_VER`.
const FAMILY_NAME: &str = "mptcp_pm";
const FAMILY_VERSION: u8 = 1;

// enum mptcp_pm_command
const CMD_ADD_ADDR: u8 = 1;
const CMD_DEL_ADDR: u8 = 2;
const CMD_GET_ADDR: u8 = 3;
const CMD_SET_LIMITS: u8 = 5;
const CMD_GET_LIMITS: u8 = 6;
const CMD_SET_FLAGS: u8 = 7;

// enum mptcp_pm_attrs (MPTCP_PM_ATTR_*)
const ATTR_ADDR: u16 = 1; // nested, MPTCP_PM_ADDR_ATTR_*
const ATTR_RCV_ADD_ADDRS: u16 = 2; // u32
const ATTR_SUBFLOWS: u16 = 3; // u32

// enum mptcp_pm_addr_attrs (MPTCP_PM_ADDR_ATTR_*)
const ADDR_ATTR_FAMILY: u16 = 1; // u16, AF_INET / AF_INET6
const ADDR_ATTR_ID: u16 = 2; // u8
const ADDR_ATTR_ADDR4: u16 = 3; // struct in_addr
const ADDR_ATTR_ADDR6: u16 = 4; // struct in6_addr
const ADDR_ATTR_PORT: u16 = 5; // u16, host byte order
const ADDR_ATTR_FLAGS: u16 = 6; // u32, MPTCP_PM_ADDR_FLAG_*
const ADDR_ATTR_IF_IDX: u16 = 7; // s32

// MPTCP_PM_ADDR_FLAG_*
const FLAG_SIGNAL: u32 = 1 << 0;
const FLAG_SUBFLOW: u32 = 1 << 1;
const FLAG_BACKUP: u32 = 1 << 2;
const FLAG_FULLMESH: u32 = 1 << 3;
const FLAG_IMPLICIT: u32 = 1 << 4;

/// The path manager's per-namespace limits (`ip mptcp limits`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MptcpLimits {
    /// Extra subflows per connection (besides the initial one).
    pub subflows: u32,
    /// Addresses announced by the peer (ADD_ADDR) that are used.
    pub add_addr_accepted: u32,
}

/// How the in-kernel path manager uses an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointFlags {
    /// Announce the address to the peer (ADD_ADDR); a server-side flag.
    pub signal: bool,
    /// Open a subflow from this address to the peer; the client-side flag.
    pub subflow: bool,
    /// Keep subflows over it idle while a non-backup one works (MP_PRIO).
    pub backup: bool,
    /// One subflow to every address the peer announced.
    pub fullmesh: bool,
    /// Made by the kernel for an address it saw in use, not by a user.
    /// Read-only: the kernel refuses to add an endpoint with it.
    pub implicit: bool,
}

impl EndpointFlags {
    fn to_bits(self) -> u32 {
        [
            (self.signal, FLAG_SIGNAL),
            (self.subflow, FLAG_SUBFLOW),
            (self.backup, FLAG_BACKUP),
            (self.fullmesh, FLAG_FULLMESH),
            (self.implicit, FLAG_IMPLICIT),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |bits, (_, bit)| bits | bit)
    }

    /// Unknown bits (from kernels newer than this code) are dropped.
    fn from_bits(bits: u32) -> Self {
        Self {
            signal: bits & FLAG_SIGNAL != 0,
            subflow: bits & FLAG_SUBFLOW != 0,
            backup: bits & FLAG_BACKUP != 0,
            fullmesh: bits & FLAG_FULLMESH != 0,
            implicit: bits & FLAG_IMPLICIT != 0,
        }
    }
}

/// One path-manager endpoint: a local address MPTCP may use for subflows
/// (`ip mptcp endpoint`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MptcpEndpoint {
    /// 1..=255; 0 when adding means "let the kernel choose".
    pub id: u8,
    /// The local address.
    pub addr: IpAddr,
    /// 0 for none; a port is only accepted with `signal`.
    pub port: u16,
    /// The interface subflows from this address are bound to (`dev`).
    pub ifindex: Option<u32>,
    /// How the path manager uses it.
    pub flags: EndpointFlags,
}

/// A handle on the kernel's MPTCP path manager in the network namespace of
/// the thread that opened it.
pub struct MptcpPm {
    socket: NlSocket,
    family: u16,
}

impl MptcpPm {
    /// Opens a generic netlink socket and resolves the `mptcp_pm` family.
    pub fn open() -> Result<Self, NetlinkError> {
        let open = || -> io::Result<Self> {
            let socket = NlSocket::open(NETLINK_GENERIC, false)?;
            let family = resolve_family(&socket, FAMILY_NAME)?;
            Ok(Self { socket, family })
        };
        open().map_err(|source| NetlinkError::OpenMptcpPm { source })
    }

    /// The current limits.
    pub fn limits(&self) -> Result<MptcpLimits, NetlinkError> {
        let replies = self
            .request(CMD_GET_LIMITS, vec![])
            .map_err(|source| NetlinkError::MptcpLimits { source })?;
        let mut limits = MptcpLimits::default();
        for attr in replies.iter().flat_map(|m| &m.payload.attrs) {
            match attr {
                PmAttr::Subflows(n) => limits.subflows = *n,
                PmAttr::RcvAddAddrs(n) => limits.add_addr_accepted = *n,
                _ => {}
            }
        }
        Ok(limits)
    }

    /// Sets both limits. Linux caps each at 8 (`MPTCP_PM_ADDR_MAX`) and
    /// answers `EINVAL` above that.
    pub fn set_limits(&self, limits: MptcpLimits) -> Result<(), NetlinkError> {
        let attrs = vec![
            PmAttr::RcvAddAddrs(limits.add_addr_accepted),
            PmAttr::Subflows(limits.subflows),
        ];
        self.request(CMD_SET_LIMITS, attrs)
            .map(drop)
            .map_err(|source| NetlinkError::SetMptcpLimits { limits, source })
    }

    /// Every endpoint, as `ip mptcp endpoint show` lists them.
    pub fn endpoints(&self) -> Result<Vec<MptcpEndpoint>, NetlinkError> {
        self.list()
            .map_err(|source| NetlinkError::MptcpEndpoints { source })
    }

    /// Adds `ep`. With `ep.id == 0` the kernel picks the id (see
    /// [`endpoints`](Self::endpoints) to learn it). The kernel answers
    /// `EEXIST` for an address that already has an endpoint
    /// ([`NetlinkError::is_already_exists`]) and `EBUSY` for an id another
    /// address holds.
    pub fn add_endpoint(&self, ep: &MptcpEndpoint) -> Result<(), NetlinkError> {
        let mut addr = vec![AddrAttr::Family(family_of(ep.addr))];
        if ep.id != 0 {
            addr.push(AddrAttr::Id(ep.id));
        }
        addr.push(match ep.addr {
            IpAddr::V4(a) => AddrAttr::Addr4(a),
            IpAddr::V6(a) => AddrAttr::Addr6(a),
        });
        if ep.port != 0 {
            addr.push(AddrAttr::Port(ep.port));
        }
        addr.push(AddrAttr::Flags(ep.flags.to_bits()));
        let ifindex = ep.ifindex.map(i32::try_from).transpose();
        let result = match ifindex {
            Ok(ifindex) => {
                addr.extend(ifindex.map(AddrAttr::IfIndex));
                self.request(CMD_ADD_ADDR, vec![PmAttr::Addr(addr)])
                    .map(drop)
            }
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface index out of range",
            )),
        };
        result.map_err(|source| NetlinkError::AddEndpoint {
            addr: ep.addr,
            dev: ep.ifindex.map(interface_name),
            source,
        })
    }

    /// Deletes endpoint `id`, closing the subflows that use it and sending
    /// RM_ADDR to peers. A missing id is [`NetlinkError::is_not_found`].
    pub fn del_endpoint(&self, id: u8) -> Result<(), NetlinkError> {
        let result = if id == 0 {
            Err(id_zero())
        } else {
            self.by_id(CMD_DEL_ADDR, id, vec![]).map(drop)
        };
        result.map_err(|source| NetlinkError::DelEndpoint { id, source })
    }

    /// Marks endpoint `id` as backup or not; the kernel tells peers of
    /// existing connections (MP_PRIO). Other flags are kept. A missing id
    /// is [`NetlinkError::is_not_found`].
    pub fn set_endpoint_backup(&self, id: u8, backup: bool) -> Result<(), NetlinkError> {
        let set = || -> io::Result<()> {
            if id == 0 {
                return Err(id_zero());
            }
            // SET_FLAGS replaces every changeable flag (backup, fullmesh) with
            // what it is given, so send the current ones with backup changed;
            // `ip mptcp endpoint change id N backup` drops `fullmesh` that way.
            let current = self.raw_flags(id)?;
            let keep = current & !(FLAG_SIGNAL | FLAG_SUBFLOW | FLAG_IMPLICIT | FLAG_BACKUP);
            let flags = if backup { keep | FLAG_BACKUP } else { keep };
            self.by_id(CMD_SET_FLAGS, id, vec![AddrAttr::Flags(flags)])
                .map(drop)
        };
        set().map_err(|source| NetlinkError::SetEndpointBackup { id, backup, source })
    }

    fn list(&self) -> io::Result<Vec<MptcpEndpoint>> {
        let replies = self.socket.dump(&self.message(CMD_GET_ADDR, vec![]))?;
        replies
            .iter()
            .flat_map(|m| &m.payload.attrs)
            .filter_map(|attr| match attr {
                PmAttr::Addr(addr) => Some(endpoint_from(addr)),
                _ => None,
            })
            .collect()
    }

    /// The kernel's raw flags of endpoint `id` (GET_ADDR by id).
    fn raw_flags(&self, id: u8) -> io::Result<u32> {
        let replies = self.by_id(CMD_GET_ADDR, id, vec![])?;
        replies
            .iter()
            .flat_map(|m| &m.payload.attrs)
            .filter_map(|attr| match attr {
                PmAttr::Addr(addr) => Some(addr),
                _ => None,
            })
            .flatten()
            .find_map(|attr| match attr {
                AddrAttr::Flags(flags) => Some(*flags),
                _ => None,
            })
            .ok_or_else(|| invalid_data("GET_ADDR reply without flags"))
    }

    /// A command addressing endpoint `id`.
    ///
    /// The in-kernel path manager answers `EINVAL` ("address not found" in
    /// the extended ack) for an id it does not have; callers want to tell
    /// that apart from a malformed request, so an `EINVAL` for an id that
    /// the endpoint list confirms absent becomes `ENOENT`.
    fn by_id(
        &self,
        cmd: u8,
        id: u8,
        mut extra: Vec<AddrAttr>,
    ) -> io::Result<Vec<GenlMessage<PmMessage>>> {
        let mut addr = vec![AddrAttr::Id(id)];
        addr.append(&mut extra);
        match self.request(cmd, vec![PmAttr::Addr(addr)]) {
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => match self.list() {
                Ok(list) if list.iter().all(|ep| ep.id != id) => {
                    Err(io::Error::from_raw_os_error(libc::ENOENT))
                }
                _ => Err(err),
            },
            other => other,
        }
    }

    fn request(&self, cmd: u8, attrs: Vec<PmAttr>) -> io::Result<Vec<GenlMessage<PmMessage>>> {
        self.socket.request(&self.message(cmd, attrs), 0)
    }

    fn message(&self, cmd: u8, attrs: Vec<PmAttr>) -> GenlMessage<PmMessage> {
        let mut msg = GenlMessage::from_payload(PmMessage { cmd, attrs });
        msg.set_resolved_family_id(self.family);
        msg
    }
}

fn id_zero() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "endpoint id 0 stands for each connection's initial address, not an endpoint",
    )
}

fn family_of(addr: IpAddr) -> u16 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u16,
        IpAddr::V6(_) => libc::AF_INET6 as u16,
    }
}

fn endpoint_from(attrs: &[AddrAttr]) -> io::Result<MptcpEndpoint> {
    let mut id = None;
    let mut addr = None;
    let mut port = 0;
    let mut ifindex = None;
    let mut flags = 0;
    for attr in attrs {
        match attr {
            AddrAttr::Id(v) => id = Some(*v),
            AddrAttr::Addr4(a) => addr = Some(IpAddr::V4(*a)),
            AddrAttr::Addr6(a) => addr = Some(IpAddr::V6(*a)),
            AddrAttr::Port(p) => port = *p,
            AddrAttr::IfIndex(i) => ifindex = u32::try_from(*i).ok().filter(|i| *i != 0),
            AddrAttr::Flags(f) => flags = *f,
            AddrAttr::Family(_) | AddrAttr::Other(_) => {}
        }
    }
    let (Some(id), Some(addr)) = (id, addr) else {
        return Err(invalid_data("MPTCP endpoint without id or address"));
    };
    Ok(MptcpEndpoint {
        id,
        addr,
        port,
        ifindex,
        flags: EndpointFlags::from_bits(flags),
    })
}

/// Asks the generic netlink controller for the id of family `name`.
fn resolve_family(socket: &NlSocket, name: &str) -> io::Result<u16> {
    let msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    });
    let replies = socket.request(&msg, 0)?;
    replies
        .iter()
        .flat_map(|m| &m.payload.nlas)
        .find_map(|attr| match attr {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| invalid_data("generic netlink family reply without an id"))
}

/// A `mptcp_pm` request or reply: a command and its top-level attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PmMessage {
    cmd: u8,
    attrs: Vec<PmAttr>,
}

impl GenlFamily for PmMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for PmMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for PmMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| PmAttr::parse(&nla?))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cmd: header.cmd,
            attrs,
        })
    }
}

/// `MPTCP_PM_ATTR_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PmAttr {
    Addr(Vec<AddrAttr>),
    RcvAddAddrs(u32),
    Subflows(u32),
    Other(DefaultNla),
}

impl Nla for PmAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Addr(attrs) => attrs.as_slice().buffer_len(),
            Self::RcvAddAddrs(_) | Self::Subflows(_) => 4,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            // The kernel validates strictly: a nest must say it is one.
            Self::Addr(_) => ATTR_ADDR | NLA_F_NESTED,
            Self::RcvAddAddrs(_) => ATTR_RCV_ADD_ADDRS,
            Self::Subflows(_) => ATTR_SUBFLOWS,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Addr(attrs) => attrs.as_slice().emit(buffer),
            Self::RcvAddAddrs(n) | Self::Subflows(n) => buffer.copy_from_slice(&n.to_ne_bytes()),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for PmAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let value = buf.value();
        Ok(match buf.kind() {
            ATTR_ADDR => Self::Addr(
                NlasIterator::new(value)
                    .map(|nla| AddrAttr::parse(&nla?))
                    .collect::<Result<_, _>>()?,
            ),
            ATTR_RCV_ADD_ADDRS => Self::RcvAddAddrs(parse_u32(value)?),
            ATTR_SUBFLOWS => Self::Subflows(parse_u32(value)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `MPTCP_PM_ADDR_ATTR_*`, inside [`PmAttr::Addr`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum AddrAttr {
    Family(u16),
    Id(u8),
    Addr4(Ipv4Addr),
    Addr6(Ipv6Addr),
    Port(u16),
    Flags(u32),
    IfIndex(i32),
    Other(DefaultNla),
}

impl Nla for AddrAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Id(_) => 1,
            Self::Family(_) | Self::Port(_) => 2,
            Self::Addr4(_) | Self::Flags(_) | Self::IfIndex(_) => 4,
            Self::Addr6(_) => 16,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Family(_) => ADDR_ATTR_FAMILY,
            Self::Id(_) => ADDR_ATTR_ID,
            Self::Addr4(_) => ADDR_ATTR_ADDR4,
            Self::Addr6(_) => ADDR_ATTR_ADDR6,
            Self::Port(_) => ADDR_ATTR_PORT,
            Self::Flags(_) => ADDR_ATTR_FLAGS,
            Self::IfIndex(_) => ADDR_ATTR_IF_IDX,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Family(v) | Self::Port(v) => buffer.copy_from_slice(&v.to_ne_bytes()),
            Self::Id(v) => buffer.copy_from_slice(&[*v]),
            Self::Addr4(a) => buffer.copy_from_slice(&a.octets()),
            Self::Addr6(a) => buffer.copy_from_slice(&a.octets()),
            Self::Flags(v) => buffer.copy_from_slice(&v.to_ne_bytes()),
            Self::IfIndex(v) => buffer.copy_from_slice(&v.to_ne_bytes()),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for AddrAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let value = buf.value();
        Ok(match buf.kind() {
            ADDR_ATTR_FAMILY => Self::Family(parse_u16(value)?),
            ADDR_ATTR_ID => Self::Id(parse_u8(value)?),
            ADDR_ATTR_ADDR4 => Self::Addr4(Ipv4Addr::from(
                <[u8; 4]>::try_from(value)
                    .map_err(|_| DecodeError::invalid_ip_address(value.len()))?,
            )),
            ADDR_ATTR_ADDR6 => Self::Addr6(Ipv6Addr::from(
                <[u8; 16]>::try_from(value)
                    .map_err(|_| DecodeError::invalid_ip_address(value.len()))?,
            )),
            ADDR_ATTR_PORT => Self::Port(parse_u16(value)?),
            ADDR_ATTR_FLAGS => Self::Flags(parse_u32(value)?),
            ADDR_ATTR_IF_IDX => Self::IfIndex(parse_i32(value)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: &PmMessage) -> PmMessage {
        let mut bytes = vec![0; msg.buffer_len()];
        msg.emit(&mut bytes);
        let header = GenlHeader {
            cmd: msg.cmd,
            version: FAMILY_VERSION,
        };
        PmMessage::parse_with_param(&bytes, header).expect("parse back")
    }

    #[test]
    fn endpoint_attributes_roundtrip() {
        let msg = PmMessage {
            cmd: CMD_ADD_ADDR,
            attrs: vec![PmAttr::Addr(vec![
                AddrAttr::Family(libc::AF_INET6 as u16),
                AddrAttr::Id(7),
                AddrAttr::Addr6("fd77:1::2".parse().expect("v6")),
                AddrAttr::Port(8443),
                AddrAttr::Flags(FLAG_SIGNAL | FLAG_BACKUP),
                AddrAttr::IfIndex(3),
            ])],
        };
        assert_eq!(roundtrip(&msg), msg);
    }

    #[test]
    fn address_nest_carries_the_nested_flag() {
        let attr = PmAttr::Addr(vec![AddrAttr::Id(1)]);
        let mut bytes = vec![0; attr.buffer_len()];
        attr.emit(&mut bytes);
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
        assert_eq!(kind, ATTR_ADDR | NLA_F_NESTED);
        // 4 (nest header) + 4 (id header) + 1 (id) + 3 (padding)
        assert_eq!(bytes.len(), 12);
    }

    #[test]
    fn flags_map_both_ways() {
        let flags = EndpointFlags {
            subflow: true,
            backup: true,
            ..EndpointFlags::default()
        };
        assert_eq!(flags.to_bits(), FLAG_SUBFLOW | FLAG_BACKUP);
        assert_eq!(EndpointFlags::from_bits(flags.to_bits() | 1 << 20), flags);
    }

    #[test]
    fn malformed_attributes_are_errors_not_panics() {
        for bytes in [
            &[8, 0, 1, 0, 5, 0, 0][..],           // length past the end
            &[5, 0, 3, 0, 1][..],                 // u32 with one byte
            &[12, 0, 1, 0x80, 5, 0, 3, 0, 1][..], // nest with a bad inner length
            &[6, 0, 1, 0x80, 0, 0, 0, 0][..],     // nest with a truncated header
        ] {
            let _ = PmMessage::parse_with_param(bytes, GenlHeader { cmd: 3, version: 1 });
        }
        let v4 = [8, 0, ADDR_ATTR_ADDR4 as u8, 0, 1, 2, 3, 4];
        let nla = NlaBuffer::new_checked(&v4[..]).expect("nla");
        assert_eq!(
            AddrAttr::parse(&nla).expect("v4"),
            AddrAttr::Addr4(Ipv4Addr::new(1, 2, 3, 4))
        );
        let short = [6, 0, ADDR_ATTR_ADDR6 as u8, 0, 1, 2];
        let nla = NlaBuffer::new_checked(&short[..]).expect("nla");
        assert!(AddrAttr::parse(&nla).is_err());
    }

    #[test]
    fn endpoint_without_address_is_rejected() {
        assert!(endpoint_from(&[AddrAttr::Id(1)]).is_err());
        let ep = endpoint_from(&[
            AddrAttr::Id(2),
            AddrAttr::Addr4(Ipv4Addr::new(10, 0, 0, 2)),
            AddrAttr::IfIndex(0),
            AddrAttr::Flags(FLAG_SUBFLOW),
        ])
        .expect("endpoint");
        assert_eq!(ep.ifindex, None);
        assert!(ep.flags.subflow);
    }
}
