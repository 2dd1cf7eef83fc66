//! Mutual authentication of two nodes over a fresh connection, as a state
//! machine that does no I/O and reads no clock (the transport feeds it
//! frames and sends what it returns; timeouts are the transport's).
//!
//! # Protocol
//! 1. Each side sends a [`Hello`] at once: cluster name, node id and name,
//!    the channel and lane the connection is for, and 32 fresh random bytes.
//! 2. On the peer's hello, each side checks it (same cluster; the acceptor's
//!    hello must echo the channel and lane the connector asked for; the
//!    peer's nonce is not its own, which would be a reflected hello) and
//!    sends [`Frame::Auth`] with
//!    `HMAC-SHA256(secret, "reactor-net auth v1" ‖ role ‖ connector's hello ‖ acceptor's hello)`,
//!    where `role` is 1 for the connector and 2 for the acceptor and the
//!    hellos are their exact encodings.
//! 3. On the peer's auth, each side checks the MAC for the peer's role
//!    (constant-time). Then the connection is authenticated both ways.
//!
//! The secret never travels. Both nonces are in the MAC, so an auth recorded
//! from another connection does not verify; the role byte stops a peer from
//! reflecting a side's own auth back to it; covering the whole hellos means a
//! changed identity or channel does not verify either. Nothing but hellos and
//! auths is accepted before the end.
#![forbid(unsafe_code)]

use crate::frame::{Frame, Hello};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

const DOMAIN: &[u8] = b"reactor-net auth v1";

/// The cluster's shared secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, AuthError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(AuthError::WeakSecret(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// The secret's bytes (the encrypted handshake derives its pre-shared
    /// key from them).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Which end of the connection this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It connected.
    Connector,
    /// It accepted.
    Acceptor,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Connector => 1,
            Role::Acceptor => 2,
        }
    }
}

/// Why a handshake failed. The connection is closed with this as the
/// logged reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The configured secret is too short to be one.
    #[error("the cluster secret is {0} bytes; it must be at least {MIN_SECRET_LEN}")]
    WeakSecret(usize),
    /// A frame the handshake does not allow at this point.
    #[error("unexpected {got} frame while waiting for the peer's {want}")]
    Unexpected {
        /// What came.
        got: &'static str,
        /// What the handshake waited for.
        want: &'static str,
    },
    /// The peer belongs to another cluster.
    #[error("the peer belongs to cluster {theirs:?}, this node to {ours:?}")]
    Cluster {
        /// Ours.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// The acceptor answered for another channel or lane.
    #[error("asked for channel {asked:?} lane {asked_lane}, the peer answered for {got:?} lane {got_lane}")]
    Channel {
        /// Asked for.
        asked: String,
        /// Lane asked for.
        asked_lane: u16,
        /// Answered.
        got: String,
        /// Lane answered.
        got_lane: u16,
    },
    /// The peer's hello carries this side's own nonce: a reflection.
    #[error("the peer sent back this side's own hello (a reflection)")]
    Reflected,
    /// The peer does not know the cluster secret (or the hellos were altered).
    #[error("the peer failed authentication: it does not hold the cluster secret")]
    BadMac,
}

/// What the peer proved it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub node: u16,
    /// Which run of that node (greater after each restart).
    pub incarnation: u64,
    /// Its node name.
    pub name: String,
    /// The connection's channel.
    pub channel: String,
    /// The connection's lane.
    pub lane: u16,
}

#[derive(Debug)]
enum State {
    /// Our hello is sent; waiting for theirs.
    WaitHello,
    /// Our auth is sent; waiting for theirs.
    WaitAuth { peer_hello: Vec<u8>, peer: Peer },
    Done,
}

/// One side of a handshake.
#[derive(Debug)]
pub struct Handshake {
    role: Role,
    secret: Secret,
    hello: Hello,
    hello_bytes: Vec<u8>,
    state: State,
}

/// What the transport does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this frame and feed the next one.
    Send(Frame),
    /// Authenticated: the connection is open.
    Done(Peer),
}

fn encoded(f: &Frame) -> Vec<u8> {
    let mut b = Vec::new();
    f.encode(&mut b);
    b
}

impl Handshake {
    /// Starts a handshake; the returned hello is to be sent at once.
    /// `hello.nonce` must be fresh random bytes.
    pub fn start(role: Role, secret: Secret, hello: Hello) -> (Self, Frame) {
        let frame = Frame::Hello(hello.clone());
        let hello_bytes = encoded(&frame);
        (Self { role, secret, hello, hello_bytes, state: State::WaitHello }, frame)
    }

    fn mac(&self, role: Role, peer_hello: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret.0).expect("HMAC takes any key length");
        let (connector, acceptor) = match self.role {
            Role::Connector => (&self.hello_bytes[..], peer_hello),
            Role::Acceptor => (peer_hello, &self.hello_bytes[..]),
        };
        m.update(DOMAIN);
        m.update(&[role.byte()]);
        m.update(connector);
        m.update(acceptor);
        m
    }

    /// Feeds the next frame from the peer.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Step, AuthError> {
        match (std::mem::replace(&mut self.state, State::Done), frame) {
            (State::WaitHello, Frame::Hello(h)) => {
                if h.cluster != self.hello.cluster {
                    return Err(AuthError::Cluster { ours: self.hello.cluster.clone(), theirs: h.cluster });
                }
                if h.nonce == self.hello.nonce {
                    return Err(AuthError::Reflected);
                }
                if self.role == Role::Connector && (h.channel != self.hello.channel || h.lane != self.hello.lane) {
                    return Err(AuthError::Channel {
                        asked: self.hello.channel.clone(),
                        asked_lane: self.hello.lane,
                        got: h.channel,
                        got_lane: h.lane,
                    });
                }
                let peer_hello = encoded(&Frame::Hello(h.clone()));
                let mac = self.mac(self.role, &peer_hello).finalize().into_bytes().into();
                let peer = Peer { node: h.node, incarnation: h.incarnation, name: h.name, channel: h.channel, lane: h.lane };
                self.state = State::WaitAuth { peer_hello, peer };
                Ok(Step::Send(Frame::Auth { mac }))
            }
            (State::WaitAuth { peer_hello, peer }, Frame::Auth { mac }) => {
                let peer_role = match self.role {
                    Role::Connector => Role::Acceptor,
                    Role::Acceptor => Role::Connector,
                };
                self.mac(peer_role, &peer_hello).verify_slice(&mac).map_err(|_| AuthError::BadMac)?;
                Ok(Step::Done(peer))
            }
            (state, frame) => {
                let want = match state {
                    State::WaitHello => "hello",
                    State::WaitAuth { .. } => "auth",
                    State::Done => "nothing (the handshake is over)",
                };
                Err(AuthError::Unexpected { got: frame.name(), want })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello(node: u16, nonce: u8) -> Hello {
        Hello {
            cluster: "prod".into(),
            node,
            incarnation: 1,
            name: format!("n{node}"),
            channel: "control".into(),
            lane: 0,
            nonce: [nonce; 32],
        }
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec()).unwrap()
    }

    /// Runs both sides to completion, returning each side's result.
    fn run(a: (Secret, Hello), b: (Secret, Hello)) -> (Result<Peer, AuthError>, Result<Peer, AuthError>) {
        let (mut c, ch) = Handshake::start(Role::Connector, a.0, a.1);
        let (mut s, sh) = Handshake::start(Role::Acceptor, b.0, b.1);
        let c_auth = c.on_frame(sh);
        let s_auth = s.on_frame(ch);
        let (Ok(Step::Send(ca)), Ok(Step::Send(sa))) = (c_auth.clone(), s_auth.clone()) else {
            return (c_auth.map(|_| unreachable!()), s_auth.map(|_| unreachable!()));
        };
        let done = |r: Result<Step, AuthError>| match r {
            Ok(Step::Done(p)) => Ok(p),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        (done(c.on_frame(sa)), done(s.on_frame(ca)))
    }

    #[test]
    fn both_sides_authenticate_each_other_with_the_shared_secret() {
        let k = "correct horse battery staple";
        let (c, s) = run((secret(k), hello(1, 1)), (secret(k), hello(2, 2)));
        assert_eq!(c.unwrap().node, 2);
        assert_eq!(s.unwrap().node, 1);
    }

    #[test]
    fn a_peer_without_the_secret_is_refused_on_both_sides() {
        let (c, s) = run((secret("the real cluster secret"), hello(1, 1)), (secret("a guessed secret value"), hello(2, 2)));
        assert_eq!(c, Err(AuthError::BadMac));
        assert_eq!(s, Err(AuthError::BadMac));
        assert_eq!(Secret::new(b"short".to_vec()).unwrap_err(), AuthError::WeakSecret(5));
    }

    #[test]
    fn reflections_replays_and_tampering_fail() {
        let k = "correct horse battery staple";
        // Reflected hello.
        let (mut c, ch) = Handshake::start(Role::Connector, secret(k), hello(1, 1));
        assert_eq!(c.on_frame(ch), Err(AuthError::Reflected));
        // Reflected auth: the acceptor's own auth sent back to it.
        let (mut c, ch) = Handshake::start(Role::Connector, secret(k), hello(1, 1));
        let (mut s, sh) = Handshake::start(Role::Acceptor, secret(k), hello(2, 2));
        let _ = c.on_frame(sh.clone()).unwrap();
        let Step::Send(s_auth) = s.on_frame(ch).unwrap() else { panic!() };
        assert_eq!(s.on_frame(s_auth.clone()), Err(AuthError::BadMac));
        // Replay: that auth presented to a new connection with a fresh nonce.
        let (mut c2, _) = Handshake::start(Role::Connector, secret(k), hello(1, 3));
        let _ = c2.on_frame(sh).unwrap();
        assert_eq!(c2.on_frame(s_auth), Err(AuthError::BadMac));
        // Tampering: the acceptor sees a hello whose node id was changed in
        // flight, so its transcript differs from the connector's.
        let (mut c, ch) = Handshake::start(Role::Connector, secret(k), hello(1, 1));
        let (mut s, sh) = Handshake::start(Role::Acceptor, secret(k), hello(2, 2));
        let Frame::Hello(mut forged) = ch else { panic!() };
        forged.node = 9;
        let Step::Send(s_auth) = s.on_frame(Frame::Hello(forged)).unwrap() else { panic!() };
        let _ = c.on_frame(sh).unwrap();
        assert_eq!(c.on_frame(s_auth), Err(AuthError::BadMac));
    }

    #[test]
    fn other_clusters_channels_and_early_frames_are_refused() {
        let k = secret("correct horse battery staple");
        let (mut c, _) = Handshake::start(Role::Connector, k.clone(), hello(1, 1));
        let mut other = hello(2, 2);
        other.cluster = "staging".into();
        assert!(matches!(c.on_frame(Frame::Hello(other)), Err(AuthError::Cluster { .. })));
        let (mut c, _) = Handshake::start(Role::Connector, k.clone(), hello(1, 1));
        let mut other = hello(2, 2);
        other.lane = 3;
        assert!(matches!(c.on_frame(Frame::Hello(other)), Err(AuthError::Channel { .. })));
        let (mut c, _) = Handshake::start(Role::Connector, k.clone(), hello(1, 1));
        assert_eq!(
            c.on_frame(Frame::Ping { nonce: 1 }),
            Err(AuthError::Unexpected { got: "ping", want: "hello" })
        );
        let (mut c, _) = Handshake::start(Role::Connector, k, hello(1, 1));
        let _ = c.on_frame(Frame::Hello(hello(2, 2))).unwrap();
        assert!(matches!(c.on_frame(Frame::Hello(hello(2, 2))), Err(AuthError::Unexpected { want: "auth", .. })));
    }

    proptest! {
        /// Whatever a peer sends, a handshake never panics and never
        /// completes unless the peer produced a valid MAC, which random
        /// frames cannot.
        #[test]
        fn random_frames_never_authenticate(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (mut s, _) = Handshake::start(Role::Acceptor, secret("correct horse battery staple"), hello(2, 2));
            let mut rest = &bytes[..];
            while let Ok(Some((f, n))) = Frame::decode(rest) {
                rest = &rest[n..];
                match s.on_frame(f) {
                    Ok(Step::Done(_)) => prop_assert!(false, "authenticated by random bytes"),
                    Ok(Step::Send(_)) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
