//! Cluster messages (protocol version 2): the answer that names a shard's
//! owner after a `Rejected(WrongNode)`, and the cluster map a client asks
//! for with a [`ClusterMapRequest`].
//!
//! In a cluster several nodes share the symbol shards; each shard has at
//! most one owner, and only the owner takes orders for its symbols. A node
//! never forwards an order: it refuses it with `Rejected(WrongNode)` and
//! says who owns the shard, so the client sends the order there itself.
//! Addresses are fixed 16-byte fields with an [`AddressFamily`], like
//! every other field of the protocol: an IPv4 address takes the first 4
//! bytes (network order) and the rest is zero.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::DecodeError;
use crate::frame::Kind;
use crate::msg::Message;
use crate::types::{AddressFamily, NodeState};

/// The node id that means "no node": no owner is known for a shard.
pub const NO_NODE: u64 = 0;

macro_rules! cluster_message {
    ($name:ident, $kind:ident, $bytes:literal) => {
        impl Message for $name {
            const KIND: Kind = Kind::$kind;
        }
        const _: () = assert!(core::mem::size_of::<$name>() == $bytes);
    };
}

/// An address as the three wire fields: 16 address bytes, the port and the
/// [`AddressFamily`]. `None` is "no address" (all zero).
pub fn address_fields(addr: Option<SocketAddr>) -> ([u8; 16], u16, AddressFamily) {
    match addr {
        None => ([0; 16], 0, AddressFamily::None),
        Some(SocketAddr::V4(a)) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&a.ip().octets());
            (bytes, a.port(), AddressFamily::Ipv4)
        }
        Some(SocketAddr::V6(a)) => (a.ip().octets(), a.port(), AddressFamily::Ipv6),
    }
}

/// The address the three wire fields give: `Ok(None)` for family `None`,
/// an error for an unknown family.
pub fn address_of(
    bytes: &[u8; 16],
    port: u16,
    family: u8,
) -> Result<Option<SocketAddr>, DecodeError> {
    Ok(match AddressFamily::from_wire(family)? {
        AddressFamily::None => None,
        AddressFamily::Ipv4 => {
            let ip = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        AddressFamily::Ipv6 => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(*bytes)), port)),
    })
}

/// Ask for the cluster map (8 bytes, client to server; protocol version 2).
/// Answered by a [`ClusterMap`] carrying the same `token`, then its
/// [`ClusterNode`]s and [`ClusterShard`]s.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ClusterMapRequest {
    /// Opaque to the server; echoed in [`ClusterMap::token`].
    pub token: U64,
}
cluster_message!(ClusterMapRequest, ClusterMapRequest, 8);

impl ClusterMapRequest {
    /// A request with `token`.
    pub fn new(token: u64) -> Self {
        ClusterMapRequest {
            token: U64::new(token),
        }
    }
}

/// Who owns a shard (56 bytes; protocol version 2): sent right after a
/// `Rejected(WrongNode)`, with the same `client_order_id`, `symbol` and
/// request kind.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ShardOwner {
    /// The `client_order_id` of the rejected request (a MassCancel's `request_id`).
    pub client_order_id: U64,
    /// The symbol the request named.
    pub symbol: U32,
    /// The symbol's shard: `symbol` mod the cluster's shard count.
    pub shard: U32,
    /// The version of the cluster map this answer comes from.
    pub map_version: U64,
    /// The owner's node id; [`NO_NODE`] when no owner is known.
    pub node_id: U64,
    /// The owner's order-entry address (see [`AddressFamily`]).
    pub address: [u8; 16],
    /// The owner's order-entry port.
    pub port: U16,
    /// [`AddressFamily`] of `address`; `None` when no owner is known.
    pub family: u8,
    /// The kind of the rejected request (as in its `Rejected`).
    pub request_kind: u8,
    /// Reserved, zero.
    pub reserved: U32,
}
cluster_message!(ShardOwner, ShardOwner, 56);

impl ShardOwner {
    /// Builds the answer; `owner` is the owner's id and address, `None`
    /// when no owner is known.
    pub fn new(
        client_order_id: u64,
        symbol: u32,
        shard: u32,
        map_version: u64,
        owner: Option<(u64, SocketAddr)>,
        request_kind: Kind,
    ) -> Self {
        let (address, port, family) = address_fields(owner.map(|(_, a)| a));
        ShardOwner {
            client_order_id: U64::new(client_order_id),
            symbol: U32::new(symbol),
            shard: U32::new(shard),
            map_version: U64::new(map_version),
            node_id: U64::new(owner.map_or(NO_NODE, |(id, _)| id)),
            address,
            port: U16::new(port),
            family: family.to_wire(),
            request_kind: request_kind as u8,
            reserved: U32::new(0),
        }
    }

    /// The owner's address; `Ok(None)` when no owner is known.
    pub fn owner_address(&self) -> Result<Option<SocketAddr>, DecodeError> {
        address_of(&self.address, self.port.get(), self.family)
    }
}

/// The cluster map's header (32 bytes; protocol version 2): `node_count`
/// [`ClusterNode`]s and then `shard_count` [`ClusterShard`]s follow it.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ClusterMap {
    /// The request's token.
    pub token: U64,
    /// The map's version: it increases whenever a shard changes owner or a
    /// node joins or leaves.
    pub map_version: U64,
    /// The answering node's own id.
    pub node_id: U64,
    /// Shards in the cluster (as many [`ClusterShard`]s follow).
    pub shard_count: U32,
    /// Nodes in the map (as many [`ClusterNode`]s follow).
    pub node_count: U32,
}
cluster_message!(ClusterMap, ClusterMap, 32);

/// One node of the cluster map (40 bytes; protocol version 2).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ClusterNode {
    /// The node's id (never [`NO_NODE`]).
    pub node_id: U64,
    /// Its order-entry address (see [`AddressFamily`]).
    pub address: [u8; 16],
    /// Its order-entry port.
    pub port: U16,
    /// [`AddressFamily`] of `address`.
    pub family: u8,
    /// [`NodeState`].
    pub state: u8,
    /// Its engine cores.
    pub cores: U32,
    /// How many shards it owns.
    pub shards_owned: U32,
    /// How long ago its last heartbeat was written, in ms, as the
    /// answering node sees it (saturates at 4,294,967,295).
    pub heartbeat_age_ms: U32,
}
cluster_message!(ClusterNode, ClusterNode, 40);

impl ClusterNode {
    /// Builds a node entry.
    pub fn new(
        node_id: u64,
        address: SocketAddr,
        state: NodeState,
        cores: u32,
        shards_owned: u32,
        heartbeat_age_ms: u32,
    ) -> Self {
        let (bytes, port, family) = address_fields(Some(address));
        ClusterNode {
            node_id: U64::new(node_id),
            address: bytes,
            port: U16::new(port),
            family: family.to_wire(),
            state: state.to_wire(),
            cores: U32::new(cores),
            shards_owned: U32::new(shards_owned),
            heartbeat_age_ms: U32::new(heartbeat_age_ms),
        }
    }

    /// The node's order-entry address.
    pub fn node_address(&self) -> Result<Option<SocketAddr>, DecodeError> {
        address_of(&self.address, self.port.get(), self.family)
    }

    /// The typed state.
    pub fn state(&self) -> Result<NodeState, DecodeError> {
        NodeState::from_wire(self.state)
    }
}

/// One shard of the cluster map (16 bytes; protocol version 2).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ClusterShard {
    /// The shard, 0 to `shard_count` − 1.
    pub shard: U32,
    /// Time left on its owner's lease in ms, as the answering node sees
    /// it; 0 when it has no owner.
    pub lease_remaining_ms: U32,
    /// The owner's node id (a [`ClusterNode`] of the map); [`NO_NODE`]
    /// when the shard has no owner and nobody serves it.
    pub owner: U64,
}
cluster_message!(ClusterShard, ClusterShard, 16);

impl ClusterShard {
    /// Builds a shard entry.
    pub fn new(shard: u32, owner: u64, lease_remaining_ms: u32) -> Self {
        ClusterShard {
            shard: U32::new(shard),
            lease_remaining_ms: U32::new(lease_remaining_ms),
            owner: U64::new(owner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_roundtrip_in_both_families() {
        for text in ["10.1.2.3:9000", "[2001:db8::7]:443", "127.0.0.1:1"] {
            let addr: SocketAddr = text.parse().unwrap();
            let (bytes, port, family) = address_fields(Some(addr));
            assert_eq!(address_of(&bytes, port, family.to_wire()), Ok(Some(addr)));
        }
        let (bytes, port, family) = address_fields(None);
        assert_eq!((bytes, port, family), ([0; 16], 0, AddressFamily::None));
        assert_eq!(address_of(&bytes, port, 0), Ok(None));
        assert!(matches!(
            address_of(&bytes, port, 9),
            Err(DecodeError::InvalidEnum {
                field: "address_family",
                value: 9
            })
        ));
    }

    #[test]
    fn ipv4_takes_the_first_four_bytes() {
        let o = ShardOwner::new(
            5,
            7,
            3,
            12,
            Some((99, "192.168.0.9:9001".parse().unwrap())),
            Kind::NewOrder,
        );
        assert_eq!(&o.address[..4], &[192, 168, 0, 9]);
        assert_eq!(&o.address[4..], &[0; 12]);
        assert_eq!(o.family, AddressFamily::Ipv4.to_wire());
        assert_eq!(o.port.get(), 9001);
        assert_eq!(o.node_id.get(), 99);
        assert_eq!(o.request_kind, Kind::NewOrder as u8);
        let none = ShardOwner::new(5, 7, 3, 12, None, Kind::Cancel);
        assert_eq!(none.owner_address(), Ok(None));
        assert_eq!(none.node_id.get(), NO_NODE);
    }
}
