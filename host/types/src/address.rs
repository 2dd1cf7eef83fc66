//! Addresses and the tag layout they share with every other reference a
//! reactor can hold outside its own memory.
//!
//! A *tag* is `[node: 16 bits][shard: 8 bits][serial: 40 bits]`. The node is
//! a configured id ([`MAX_NODE`] at most, so a tag stays positive as an
//! `i64`, which host calls return beside negative statuses); the shard is
//! where an address lives (0 for blobs); the serial is unique on its node
//! (the runtime's tag source hands them out, persisted across restarts).
//! Serial 0 is never a reactor: [`Address::HOST`] is 0, and
//! [`Address::host_of`] names another node's host.

use std::fmt;
use std::str::FromStr;

/// A node's id in its cluster: the node bits of every tag it issues.
/// 0 is the id of a process that is not in a cluster.
pub type NodeId = u16;

/// Bits of a tag's serial.
pub const SERIAL_BITS: u32 = 40;
/// Largest serial.
pub const MAX_SERIAL: u64 = (1 << SERIAL_BITS) - 1;
/// Largest node id: tags and correlation ids must stay positive as `i64`.
pub const MAX_NODE: NodeId = 0x7fff;
/// Where the shard bits of a tag start.
pub const SHARD_SHIFT: u32 = SERIAL_BITS;
/// Where the node bits of a tag start.
pub const NODE_SHIFT: u32 = 48;

/// A tag from its parts.
///
/// # Panics
/// If `serial` exceeds [`MAX_SERIAL`].
#[inline]
pub const fn tag(node: NodeId, shard: u8, serial: u64) -> u64 {
    assert!(serial <= MAX_SERIAL, "serial out of range");
    ((node as u64) << NODE_SHIFT) | ((shard as u64) << SHARD_SHIFT) | serial
}

/// The node bits of a tag.
#[inline]
pub const fn tag_node(tag: u64) -> NodeId {
    (tag >> NODE_SHIFT) as NodeId
}

/// The serial bits of a tag.
#[inline]
pub const fn tag_serial(tag: u64) -> u64 {
    tag & MAX_SERIAL
}

/// A reactor's address: a tag `[node: 16][shard: 8][serial: 40]` (see the
/// module docs), unique across nodes and restarts when the runtime has a
/// data directory; [`Address::HOST`] is the outside world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Address(pub u64);

impl Address {
    /// The outside world of a process that is not in a cluster (node 0).
    pub const HOST: Address = Address(guest_sdk::abi::HOST_ADDRESS);

    /// The address `[node][shard][serial]`.
    ///
    /// # Panics
    /// If `serial` exceeds [`MAX_SERIAL`].
    #[inline]
    pub const fn new(node: NodeId, shard: u8, serial: u64) -> Self {
        Address(tag(node, shard, serial))
    }

    /// The outside world of node `node`: its host (serial 0 is never a
    /// reactor). A reply to it from any node reaches that node's host.
    #[inline]
    pub const fn host_of(node: NodeId) -> Address {
        Address::new(node, 0, 0)
    }

    /// Whether this is some node's host rather than a reactor.
    #[inline]
    pub const fn is_host(self) -> bool {
        self.serial() == 0
    }

    /// The node that issued this address.
    #[inline]
    pub const fn node(self) -> NodeId {
        tag_node(self.0)
    }

    /// The shard bits: the shard it was spawned on. A runtime with `n`
    /// shards keeps it on shard `shard() % n`.
    #[inline]
    pub const fn shard(self) -> usize {
        ((self.0 >> SHARD_SHIFT) & 0xff) as usize
    }

    /// The serial, unique on its node.
    #[inline]
    pub const fn serial(self) -> u64 {
        tag_serial(self.0)
    }

    /// Whether this could be a reactor's address: a serial above 0 and a
    /// node id in range.
    #[inline]
    pub const fn is_reactor(self) -> bool {
        self.serial() != 0 && self.node() <= MAX_NODE
    }
}

impl fmt::Display for Address {
    /// `#<shard>:<serial>` on node 0, `#<node>.<shard>:<serial>` otherwise,
    /// or `#host`. [`Address::from_str`](std::str::FromStr) reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::HOST {
            return f.write_str("#host");
        }
        if self.is_host() && self.0 & ((1u64 << NODE_SHIFT) - 1) == 0 {
            return write!(f, "#{}.host", self.node());
        }
        match self.node() {
            0 => write!(f, "#{}:{}", self.shard(), self.serial()),
            node => write!(f, "#{node}.{}:{}", self.shard(), self.serial()),
        }
    }
}

/// Why a string is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an address (expected #host, #<node>.host, #<shard>:<serial> or #<node>.<shard>:<serial>): {reason}")]
pub struct ParseAddressError {
    input: String,
    reason: &'static str,
}

impl FromStr for Address {
    type Err = ParseAddressError;

    /// Reads what `Display` writes: `#host`, `#<shard>:<serial>` (node 0) or
    /// `#<node>.<shard>:<serial>`. The `#` is optional.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseAddressError { input: s.to_owned(), reason };
        let body = s.strip_prefix('#').unwrap_or(s);
        if body == "host" {
            return Ok(Address::HOST);
        }
        if let Some(node) = body.strip_suffix(".host") {
            let node = node.parse::<u16>().map_err(|_| err("the node is not a number up to 65535"))?;
            return Ok(Address::host_of(node));
        }
        let (front, serial) = body.split_once(':').ok_or_else(|| err("no `:` before the serial"))?;
        let (node, shard) = match front.split_once('.') {
            Some((n, s)) => (n.parse::<u16>().map_err(|_| err("the node is not a number up to 65535"))?, s),
            None => (0, front),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(shard) || !digits(serial) {
            return Err(err("shard and serial must be decimal numbers"));
        }
        let shard = shard.parse::<u8>().map_err(|_| err("the shard is over 255"))?;
        let serial =
            serial.parse::<u64>().ok().filter(|&v| v <= MAX_SERIAL).ok_or_else(|| err("the serial is over 2^40-1"))?;
        Ok(Address::new(node, shard, serial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn address_layout_and_text() {
        let a = Address::new(0, 3, 42);
        assert_eq!((a.node(), a.shard(), a.serial()), (0, 3, 42));
        assert_eq!(a.to_string(), "#3:42");
        let b = Address::new(513, 255, MAX_SERIAL);
        assert_eq!((b.node(), b.shard(), b.serial()), (513, 255, MAX_SERIAL));
        assert_eq!(b.to_string(), format!("#513.255:{MAX_SERIAL}"));
        for x in [a, b, Address::HOST, Address::new(MAX_NODE, 0, 1), Address(u64::MAX)] {
            assert_eq!(x.to_string().parse::<Address>(), Ok(x), "{x}");
        }
        assert_eq!("3:42".parse::<Address>(), Ok(a));
        assert_eq!("#0.3:42".parse::<Address>(), Ok(a));
        for bad in ["", "#", "#3", "#3:", "#:4", "#256:1", "#1.2.3:4", "#-1:2", "#1:+2", "#70000.1:1", "#1:1099511627776"] {
            let e = bad.parse::<Address>().unwrap_err();
            assert!(e.to_string().contains("is not an address"), "{bad}: {e}");
        }
        assert!(!Address::HOST.is_reactor());
        assert!(!Address(u64::MAX).is_reactor());
        assert!(a.is_reactor());
    }

    #[test]
    fn hosts_of_nodes_read_back() {
        let h = Address::host_of(7);
        assert!(h.is_host() && !h.is_reactor());
        assert_eq!(h.to_string(), "#7.host");
        assert_eq!("#7.host".parse::<Address>(), Ok(h));
        assert_eq!(tag_node(h.0), 7);
    }

    proptest! {
        /// Every tag with a node in range prints as text that reads back to
        /// it; no string makes the parser panic.
        #[test]
        fn text_round_trips(node in 0..=MAX_NODE, shard: u8, serial in 0..=MAX_SERIAL) {
            let a = Address::new(node, shard, serial);
            prop_assert_eq!(a.to_string().parse::<Address>(), Ok(a));
            prop_assert_eq!((a.node(), a.shard() as u8, a.serial()), (node, shard, serial));
        }

        #[test]
        fn any_text_is_an_address_or_an_error(s in ".{0,40}") {
            let _ = s.parse::<Address>();
        }
    }
}
