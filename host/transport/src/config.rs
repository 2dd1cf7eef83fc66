//! What a transport is configured with: its channels ([`ChannelSpec`], also
//! parsed from the command line) and the rest of [`TransportConfig`].
//! Plain data; it uses no other module.

use reactor_net::NodeInfo;
use reactor_net::auth::Secret;
use reactor_net::fault::Schedule;
use reactor_net::frame::{MAX_CONTROL_LEN, MAX_NAME_LEN};
use reactor_net::secure::{Keyring, SigningKey, StaticKey};
use std::sync::Arc;
use std::time::Duration;

/// Hops after which a forwarded message is dropped (a routing loop).
pub const MAX_HOPS: u8 = 16;

/// Index of the control channel.
pub const CONTROL: u16 = 0;

/// One named channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Its name (in hellos and status).
    pub name: String,
    /// Parallel connections per peer.
    pub lanes: u16,
    /// Sequence numbers, acks, retransmission, de-duplication.
    pub reliable: bool,
    /// Causal order across the nodes of the channel (implies `reliable`).
    pub causal: bool,
    /// Messages of at least this many bytes go on this channel (the first
    /// channel whose rule matches wins; `None`: only by name).
    pub min_bytes: Option<usize>,
}

impl ChannelSpec {
    /// A channel with `lanes` connections, unreliable, no rule.
    pub fn new(name: &str, lanes: u16) -> Self {
        Self { name: name.to_owned(), lanes: lanes.max(1), reliable: false, causal: false, min_bytes: None }
    }
}

impl std::str::FromStr for ChannelSpec {
    type Err = String;

    /// `name[:lanes=N][:reliable][:causal][:min-bytes=N]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        if name.is_empty() || name.len() > reactor_net::frame::MAX_NAME_LEN || name == "*" || name == "control" {
            return Err(format!("`{s}`: a channel needs a name of 1 to 64 bytes other than `*` and `control`"));
        }
        let mut spec = ChannelSpec::new(name, 1);
        for p in parts {
            match p.split_once('=') {
                Some(("lanes", n)) => {
                    spec.lanes = n.parse().ok().filter(|&n| (1..=256).contains(&n)).ok_or(format!("`{s}`: lanes must be 1 to 256"))?
                }
                Some(("min-bytes", n)) => spec.min_bytes = Some(n.parse().map_err(|_| format!("`{s}`: min-bytes must be a number"))?),
                None if p == "reliable" => spec.reliable = true,
                None if p == "causal" => {
                    spec.causal = true;
                    spec.reliable = true;
                }
                _ => return Err(format!("`{s}`: unknown channel option `{p}` (lanes=N, reliable, causal, min-bytes=N)")),
            }
        }
        Ok(spec)
    }
}

/// Transport settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node.
    pub me: NodeInfo,
    /// The cluster's name (hellos of other clusters are refused).
    pub cluster: String,
    /// The cluster secret (the Noise pre-shared key is derived from it).
    pub secret: Secret,
    /// This node's static key (its identity on the wire).
    pub static_key: Arc<StaticKey>,
    /// This node's signing key: its public half travels in the handshake,
    /// and the overlay signs this node's announcements with it.
    pub signing_key: Arc<SigningKey>,
    /// Which static key may claim which node id (trust on first use unless
    /// pinned).
    pub keyring: Arc<Keyring>,
    /// No encryption: only the handshake is authenticated (HMAC with the
    /// secret), every frame after it travels in the clear and can be forged
    /// by anyone on the path. Off by default; for measuring and debugging.
    pub insecure_plaintext: bool,
    /// Application channels; the control channel is added in front.
    pub channels: Vec<ChannelSpec>,
    /// One connection per pair of nodes for everything (the baseline).
    pub multiplex: bool,
    /// Interval of pings on a connection.
    pub ping_interval: Duration,
    /// A connection that reads nothing for this long is dead.
    pub idle_timeout: Duration,
    /// Limit on dialing plus authenticating.
    pub connect_timeout: Duration,
    /// Limit on an accepted connection's handshake.
    pub handshake_timeout: Duration,
    /// Accepted connections authenticating at once, from everyone; more
    /// are closed at once.
    pub max_handshakes: usize,
    /// Accepted connections authenticating at once from one IP address.
    pub max_handshakes_per_addr: usize,
    /// Accepted connections open at once from one IP address.
    pub max_conns_per_addr: usize,
    /// Overlay messages from peers queued for the overlay task; a peer whose
    /// message does not fit waits (its connection is not read meanwhile).
    pub overlay_queue: usize,
    /// Messages queued per lane before senders see `INBOX_FULL`.
    pub lane_capacity: usize,
    /// Fault injection: every connection's frames pass a
    /// [`FaultInjector`](reactor_net::fault::FaultInjector) driven by this
    /// schedule (times from the transport's start).
    pub faults: Option<Schedule>,
    /// Every connection's frames pass a [`Trace`](reactor_net::fault::Trace)
    /// hook (logged at `trace` level, the last 1,024 kept per connection).
    pub trace: bool,
}

impl TransportConfig {
    /// Defaults around `me`: one application channel `default` with 4 lanes,
    /// encrypted connections with a fresh static key (a node sets its own,
    /// kept in its data directory) trusted on first use.
    pub fn new(me: NodeInfo, cluster: &str, secret: Secret) -> Self {
        Self {
            me,
            cluster: cluster.to_owned(),
            secret,
            static_key: Arc::new(StaticKey::generate().expect("the OS random source works")),
            signing_key: Arc::new(SigningKey::generate().expect("the OS random source works")),
            keyring: Arc::new(Keyring::trust_on_first_use()),
            insecure_plaintext: false,
            handshake_timeout: Duration::from_secs(2),
            max_handshakes: 128,
            max_handshakes_per_addr: 32,
            max_conns_per_addr: 1024,
            overlay_queue: 1024,
            channels: vec![ChannelSpec::new("default", 4)],
            multiplex: false,
            ping_interval: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            lane_capacity: 4096,
            faults: None,
            trace: false,
        }
    }

    /// Refuses settings the wire format cannot carry (names over
    /// [`MAX_NAME_LEN`] bytes, a channel without lanes or with more than
    /// 256) and limits of zero, with the rule broken.
    pub fn validate(&self) -> Result<(), String> {
        for (what, name) in [("cluster name", &self.cluster), ("node name", &self.me.name)] {
            if name.len() > MAX_NAME_LEN {
                return Err(format!("the {what} {name:?} is {} bytes; the wire carries at most {MAX_NAME_LEN}", name.len()));
            }
        }
        if self.me.id == 0 {
            return Err("node id 0 is reserved".into());
        }
        for c in &self.channels {
            if c.name.is_empty() || c.name.len() > MAX_NAME_LEN || c.name == "*" || c.name == "control" {
                return Err(format!("channel {:?}: a channel needs a name of 1 to 64 bytes other than `*` and `control`", c.name));
            }
            if !(1..=256).contains(&c.lanes) {
                return Err(format!("channel {}: lanes must be 1 to 256, not {}", c.name, c.lanes));
            }
        }
        if self.channels.is_empty() {
            return Err("at least one application channel is needed".into());
        }
        if self.channels.len() > usize::from(u16::MAX) {
            return Err(format!("{} channels; the wire numbers at most {}", self.channels.len(), u16::MAX));
        }
        for (what, n) in [
            ("max_handshakes", self.max_handshakes),
            ("max_handshakes_per_addr", self.max_handshakes_per_addr),
            ("max_conns_per_addr", self.max_conns_per_addr),
            ("overlay_queue", self.overlay_queue),
            ("lane_capacity", self.lane_capacity),
        ] {
            if n == 0 {
                return Err(format!("{what} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Most bytes of a broadcast payload: a control frame's limit less room for
/// the overlay's own header.
pub const MAX_BROADCAST_LEN: usize = MAX_CONTROL_LEN - 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChannelSpec, String> {
        s.parse()
    }

    #[test]
    fn a_bare_name_is_one_unreliable_lane_without_a_rule() {
        assert_eq!(parse("events"), Ok(ChannelSpec::new("events", 1)));
        // `new` never makes a channel without a lane.
        assert_eq!(ChannelSpec::new("x", 0).lanes, 1);
    }

    #[test]
    fn every_option_is_parsed() {
        let spec = parse("bulk:lanes=8:reliable:min-bytes=4096").unwrap();
        assert_eq!(
            spec,
            ChannelSpec { name: "bulk".into(), lanes: 8, reliable: true, causal: false, min_bytes: Some(4096) }
        );
        // Causal implies reliable; options come in any order.
        let spec = parse("ordered:causal:lanes=256").unwrap();
        assert!(spec.causal && spec.reliable);
        assert_eq!(spec.lanes, 256);
        // A name of exactly the frame limit fits.
        let long = "n".repeat(reactor_net::frame::MAX_NAME_LEN);
        assert_eq!(parse(&long).unwrap().name, long);
    }

    #[test]
    fn bad_names_are_refused_with_the_rule() {
        let too_long = "n".repeat(reactor_net::frame::MAX_NAME_LEN + 1);
        for s in ["", ":lanes=2", "*", "control", "control:reliable", too_long.as_str()] {
            assert_eq!(
                parse(s),
                Err(format!("`{s}`: a channel needs a name of 1 to 64 bytes other than `*` and `control`")),
                "{s:?}"
            );
        }
    }

    #[test]
    fn settings_the_wire_cannot_carry_are_refused_before_anything_starts() {
        let me = NodeInfo { id: 1, name: "n1".into(), addr: "127.0.0.1:0".into(), role: reactor_net::NodeRole::Peer, incarnation: 1 };
        let secret = Secret::new(b"the cluster secret of the tests".to_vec()).unwrap();
        let ok = TransportConfig::new(me, "test", secret);
        assert_eq!(ok.validate(), Ok(()));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let mut c = ok.clone();
        c.cluster = long.clone();
        assert!(c.validate().unwrap_err().contains("cluster name"));
        let mut c = ok.clone();
        c.me.name = long.clone();
        assert!(c.validate().unwrap_err().contains("node name"));
        let mut c = ok.clone();
        c.channels = vec![ChannelSpec { name: long, ..ChannelSpec::new("x", 1) }];
        assert!(c.validate().unwrap_err().contains("1 to 64 bytes"));
        let mut c = ok.clone();
        c.channels[0].lanes = 0;
        assert!(c.validate().unwrap_err().contains("lanes must be 1 to 256"));
        let mut c = ok;
        c.max_handshakes = 0;
        assert!(c.validate().unwrap_err().contains("max_handshakes"));
    }

    #[test]
    fn bad_options_are_refused_naming_the_spec() {
        for s in ["x:lanes=0", "x:lanes=257", "x:lanes=", "x:lanes=four", "x:lanes=-1"] {
            assert_eq!(parse(s), Err(format!("`{s}`: lanes must be 1 to 256")), "{s:?}");
        }
        for s in ["x:min-bytes=big", "x:min-bytes=-5", "x:min-bytes="] {
            assert_eq!(parse(s), Err(format!("`{s}`: min-bytes must be a number")), "{s:?}");
        }
        assert_eq!(
            parse("x:fast"),
            Err("`x:fast`: unknown channel option `fast` (lanes=N, reliable, causal, min-bytes=N)".into())
        );
        // A flag given a value, a value option without one, an empty option.
        for (s, opt) in [("x:reliable=yes", "reliable=yes"), ("x:lanes", "lanes"), ("x::reliable", "")] {
            assert_eq!(
                parse(s),
                Err(format!("`{s}`: unknown channel option `{opt}` (lanes=N, reliable, causal, min-bytes=N)")),
                "{s:?}"
            );
        }
    }
}
