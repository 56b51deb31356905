//! Route netlink requests on a socket of one network namespace: what attaching a pod to
//! the bridge needs (links, veth pairs, addresses, routes), without starting an `ip`
//! process per step (twelve of them made most of a pod start's cost, BENCHMARKS.md).
//!
//! A netlink socket belongs to the network namespace of the thread that opened it, for
//! its whole life: open one per namespace and use it from anywhere. Requests are
//! synchronous (send, then read until the kernel's ACK, error or end of dump); errors name
//! the object, the request and the kernel's errno.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    ErrorBuffer, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLMSG_DONE,
    NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressMessageBuffer};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkMessageBuffer,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use crate::error::Error;

const ENODEV: i32 = libc::ENODEV;
// Message and attribute numbers of `linux/rtnetlink.h`, `if_link.h` and `if_addr.h`.
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// A route netlink socket in the namespace it was opened in.
pub(super) struct Rtnl {
    socket: Socket,
    object: String,
    sequence: u32,
}

/// Where a route goes: `dst/len` (`None`: the default route), through `gateway` or
/// directly on the link.
pub(super) struct Route {
    pub dst: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
    pub scope: RouteScope,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace; `object` names what the
    /// requests are for in errors (e.g. `pod default_web-1`).
    pub(super) fn open(object: &str) -> Result<Rtnl, Error> {
        let fail = |e: io::Error| net_error(object, "open a route netlink socket", &e.to_string());
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        socket.bind_auto().map_err(fail)?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0)).map_err(fail)?;
        Ok(Rtnl { socket, object: object.to_owned(), sequence: 0 })
    }

    /// Sends one request and collects the messages of the answer, raw (type, payload):
    /// nothing for an ACKed change, the entries of a dump. The answers are read through
    /// the crates' buffer views, not decoded whole: decoding a link message formats every
    /// attribute it parses into an error context and cost more than the kernel's work.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<Vec<(u16, Vec<u8>)>, Failed> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(Failed::Io)?;
        let undecodable = |e: netlink_packet_core::DecodeError| {
            Failed::Io(io::Error::other(format!("undecodable answer: {e}")))
        };
        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(Failed::Io)?;
            let mut rest = &datagram[..];
            while !rest.is_empty() {
                let message = NetlinkBuffer::new_checked(rest).map_err(undecodable)?;
                let len = (message.length() as usize).min(rest.len());
                if message.sequence_number() == self.sequence {
                    match message.message_type() {
                        NLMSG_DONE => return Ok(answers),
                        NLMSG_ERROR => {
                            let error = ErrorBuffer::new_checked(message.payload()).map_err(undecodable)?;
                            return match error.code() {
                                None => Ok(answers),
                                Some(code) => Err(Failed::Errno(-code.get())),
                            };
                        }
                        NLMSG_NOOP | NLMSG_OVERRUN => {}
                        kind => answers.push((kind, message.payload().to_vec())),
                    }
                }
                if len == 0 {
                    break;
                }
                // Messages are 4-byte aligned within a datagram.
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
            }
        }
    }

    fn change(&mut self, what: &str, message: RouteNetlinkMessage, flags: u16) -> Result<(), Error> {
        self.request(message, flags).map(drop).map_err(|e| e.error(&self.object, what))
    }

    /// The index of link `name`, or `None` when there is none.
    pub(super) fn link_index(&mut self, name: &str) -> Result<Option<u32>, Error> {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(message), 0) {
            Ok(answers) => Ok(answers
                .iter()
                .filter(|(kind, _)| *kind == RTM_NEWLINK)
                .find_map(|(_, payload)| LinkMessageBuffer::new_checked(payload.as_slice()).ok())
                .map(|link| link.link_index())),
            Err(Failed::Errno(ENODEV)) => Ok(None),
            Err(e) => Err(e.error(&self.object, &format!("get link {name}"))),
        }
    }

    /// The kind (`bridge`, `veth`, ...) of the link with `index`, if it has one.
    fn link_kind(&mut self, index: u32) -> Result<Option<String>, Error> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        let answers = self
            .request(RouteNetlinkMessage::GetLink(message), 0)
            .map_err(|e| e.error(&self.object, &format!("get link {index}")))?;
        for (kind, payload) in &answers {
            let Ok(link) = LinkMessageBuffer::new_checked(payload.as_slice()) else { continue };
            if *kind != RTM_NEWLINK {
                continue;
            }
            for attr in link.attributes().flatten() {
                if attr.kind() != IFLA_LINKINFO {
                    continue;
                }
                for info in NlasIterator::new(attr.value()).flatten() {
                    if info.kind() == IFLA_INFO_KIND {
                        let name = info.value().split(|&b| b == 0).next().unwrap_or_default();
                        return Ok(Some(String::from_utf8_lossy(name).into_owned()));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The IPv4 addresses of every link (or only of link `index`), with their link.
    pub(super) fn ipv4_addrs(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>, Error> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        let answers = self
            .request(RouteNetlinkMessage::GetAddress(message), NLM_F_DUMP)
            .map_err(|e| e.error(&self.object, "list addresses"))?;
        let mut found = Vec::new();
        for (kind, payload) in &answers {
            let Ok(a) = AddressMessageBuffer::new_checked(payload.as_slice()) else { continue };
            if *kind != RTM_NEWADDR || index.is_some_and(|i| i != a.index()) {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS the peer's on
            // point-to-point links); fall back to IFA_ADDRESS when there is no local one.
            let (mut local, mut address) = (None, None);
            for attr in a.attributes().flatten() {
                let Ok(octets) = <[u8; 4]>::try_from(attr.value()) else { continue };
                match attr.kind() {
                    IFA_LOCAL => local = Some(Ipv4Addr::from(octets)),
                    IFA_ADDRESS => address = Some(Ipv4Addr::from(octets)),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                found.push((a.index(), ip, a.prefix_len()));
            }
        }
        Ok(found)
    }

    /// The index of the bridge that holds IPv4 address `ip`.
    pub(super) fn bridge_with(&mut self, ip: Ipv4Addr) -> Result<Option<u32>, Error> {
        for (index, addr, _) in self.ipv4_addrs(None)? {
            if addr == ip && self.link_kind(index)?.as_deref() == Some("bridge") {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// Creates veth pair `name` here and `peer` inside the namespace open at `peer_netns`.
    pub(super) fn add_veth(&mut self, name: &str, peer: &str, peer_netns: RawFd) -> Result<(), Error> {
        let mut other = LinkMessage::default();
        other.attributes.push(LinkAttribute::IfName(peer.to_owned()));
        other.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(other))),
        ]));
        self.change(
            &format!("add veth {name} peer {peer}"),
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Deletes link `index`; fine if it is already gone.
    pub(super) fn delete_link(&mut self, index: u32, name: &str) -> Result<(), Error> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(message), 0) {
            Ok(_) | Err(Failed::Errno(ENODEV)) => Ok(()),
            Err(e) => Err(e.error(&self.object, &format!("delete link {name}"))),
        }
    }

    /// Gives link `index` no IPv6 link-local address when it goes up (`ip link set X
    /// addrgenmode none`; the kernel refuses it in the request that creates the link, and
    /// applies it only at the next up). Pods use IPv4: this spares the kernel workers the
    /// duplicate address detection and multicast reports of every pod's veth ends.
    pub(super) fn set_no_link_local(&mut self, index: u32, name: &str) -> Result<(), Error> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
            AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
        ])]));
        self.change(&format!("set link {name} addrgenmode none"), RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Sets link `index` up, and makes it a port of `controller` when given.
    pub(super) fn set_up(&mut self, index: u32, name: &str, controller: Option<u32>) -> Result<(), Error> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        if let Some(c) = controller {
            message.attributes.push(LinkAttribute::Controller(c));
        }
        self.change(&format!("set link {name} up"), RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Turns on hairpin mode of bridge port `index` (`ip link set dev X type bridge_slave
    /// hairpin on`).
    pub(super) fn set_hairpin(&mut self, index: u32, name: &str) -> Result<(), Error> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(true)])),
        ]));
        self.change(&format!("set hairpin on {name}"), RouteNetlinkMessage::NewLink(message), 0)
    }

    fn address(index: u32, ip: Ipv4Addr, len: u8) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = len;
        message.header.index = index;
        message.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        message.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        message
    }

    /// Adds `ip/len` to link `index`, or keeps it if it is there.
    pub(super) fn replace_address(&mut self, index: u32, ip: Ipv4Addr, len: u8) -> Result<(), Error> {
        self.change(
            &format!("replace address {ip}/{len}"),
            RouteNetlinkMessage::NewAddress(Self::address(index, ip, len)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Removes `ip/len` from link `index`.
    pub(super) fn delete_address(&mut self, index: u32, ip: Ipv4Addr, len: u8) -> Result<(), Error> {
        self.change(
            &format!("delete address {ip}/{len}"),
            RouteNetlinkMessage::DelAddress(Self::address(index, ip, len)),
            0,
        )
    }

    /// Adds or replaces a route of the main table.
    pub(super) fn replace_route(&mut self, route: &Route) -> Result<(), Error> {
        let (dst, len) = route.dst.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = len;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        // What `ip route replace` sets when no protocol is given.
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = route.scope;
        message.header.kind = RouteType::Unicast;
        if len > 0 {
            message.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(gateway) = route.gateway {
            message.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        }
        message.attributes.push(RouteAttribute::Oif(route.oif));
        let what = match route.gateway {
            Some(g) if len == 0 => format!("replace default route via {g}"),
            Some(g) => format!("replace route {dst}/{len} via {g}"),
            None => format!("replace route {dst}/{len} on link {}", route.oif),
        };
        self.change(&what, RouteNetlinkMessage::NewRoute(message), NLM_F_CREATE | NLM_F_REPLACE)
    }
}

/// Why a request failed: the kernel's errno, or the socket.
enum Failed {
    Errno(i32),
    Io(io::Error),
}

impl Failed {
    fn error(self, object: &str, what: &str) -> Error {
        let message = match self {
            Failed::Errno(errno) => io::Error::from_raw_os_error(errno).to_string(),
            Failed::Io(e) => e.to_string(),
        };
        net_error(object, what, &message)
    }
}

fn net_error(object: &str, what: &str, message: &str) -> Error {
    Error::Net { object: object.to_owned(), command: format!("netlink: {what}"), message: message.to_owned() }
}
