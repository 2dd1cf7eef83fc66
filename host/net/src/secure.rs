//! Encrypted, authenticated connections: the Noise handshake as an I/O-free
//! state machine, the static keys of nodes and whom they are trusted for,
//! and the record layer every frame travels in afterwards.
//!
//! # Handshake
//! `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s` (through `snow`), the pre-shared
//! key derived from the cluster secret, each side's static X25519 key its
//! node's own (kept in its data directory). Four `Noise` frames, each at
//! most [`MAX_NOISE_LEN`] bytes:
//! 1. connector → acceptor: `e` (no payload);
//! 2. acceptor → connector: `e, ee, s, es` (no payload);
//! 3. connector → acceptor: `s, se, psk`, payload the connector's [`Hello`]
//!    (cluster, node id, incarnation, name, channel, lane) and its identity
//!    trailer. The acceptor now knows the connector holds the cluster
//!    secret and the static key it presented.
//! 4. acceptor → connector: the first transport message, payload the
//!    acceptor's [`Hello`] echoing the channel and lane, and its identity
//!    trailer. Decrypting it proves to the connector that the acceptor
//!    holds the secret (the transport keys depend on it) and its static key.
//!
//! The identity trailer follows the hello frame in both payloads: a version
//! byte ([`IDENTITY_VERSION`]) and the sender's Ed25519 signing public key
//! ([`SignPublicKey`]), with which it signs what other nodes relay for it
//! (HyParView announcements). A payload without it (an older node) is
//! refused as a malformed hello.
//!
//! Every byte of all four messages is in the handshake hash, so nothing can
//! be altered or replayed into another connection; the hellos travel
//! encrypted. Who may claim which node id is the [`Keyring`]'s to decide,
//! from the peer's static key; the caller asks it once the handshake is
//! done, and the keyring then also knows the node's signing key.
//!
//! # Known peers
//! Under trust on first use the keyring's bindings (node id, static key,
//! signing key) are handed to a [`KnownStore`] as they are learned (the
//! node keeps them in its data directory, [`format_known`] /
//! [`parse_known`]), and a restarted node starts from them: a node id it
//! knew stays bound to the key it knew.
//!
//! # Records
//! After the handshake both directions are a sequence of records: a `u16`
//! (little-endian) ciphertext length, then that many bytes of
//! ChaCha20-Poly1305 ciphertext with its 16-byte tag, nonces counting up
//! from 0 per direction (1 for the acceptor, whose 0 was message 4). The
//! plaintexts, concatenated, are the frames of `frame`. A record that does
//! not decrypt (altered, injected, replayed, reordered or dropped bytes)
//! ends the connection.
#![forbid(unsafe_code)]

use crate::auth::{Peer, Role, Secret};
use crate::frame::{Frame, FrameError, Hello, MAX_NOISE_LEN, MAX_PREAUTH_FRAME_LEN};
use crate::node::NodeId;
use sha2::{Digest, Sha256};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use ed25519_dalek::Signer as _;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";
/// Most ciphertext bytes in one record (Noise's message limit).
pub const MAX_RECORD_LEN: usize = 65535;
/// Bytes of the authentication tag of a record.
pub const TAG_LEN: usize = 16;
/// Most plaintext bytes in one record.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_LEN - TAG_LEN;

/// The version byte of the identity trailer after a handshake's hello.
pub const IDENTITY_VERSION: u8 = 1;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

const PROLOGUE: &[u8] = b"reactor-net noise v1";
const PSK_DOMAIN: &[u8] = b"reactor-net noise psk v1";

/// Why a handshake, a key or a record was refused. The connection is closed
/// with this as the logged reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    /// A Noise message did not verify: the peer does not hold the cluster
    /// secret, or the handshake was altered in flight.
    #[error("the Noise handshake failed ({0}): the peer does not hold the cluster secret, or the messages were altered")]
    Handshake(String),
    /// A frame the handshake does not allow at this point.
    #[error("unexpected {got} frame while waiting for {want}")]
    Unexpected {
        /// What came.
        got: &'static str,
        /// What the handshake waited for.
        want: &'static str,
    },
    /// The peer's hello inside the handshake is not a hello.
    #[error("the peer's hello is malformed: {0}")]
    BadHello(String),
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
    /// The peer presented this node's own static key.
    #[error("the peer presented this node's own static key")]
    OwnKey,
    /// The node id is bound to another static key.
    #[error("node {node} is known by static key {known}, and the peer presented {presented}")]
    KeyMismatch {
        /// The node id claimed.
        node: NodeId,
        /// The key it is bound to.
        known: PublicKey,
        /// The key presented.
        presented: PublicKey,
    },
    /// The static key is bound to another node id.
    #[error("static key {key} belongs to node {owner}, and the peer claims node {claimed}")]
    KeyOfAnotherNode {
        /// The key.
        key: PublicKey,
        /// The node it belongs to.
        owner: NodeId,
        /// The node id claimed.
        claimed: NodeId,
    },
    /// The keys are pinned and this node id is not among them.
    #[error("node {0} is not in this node's pinned peer keys")]
    NotPinned(NodeId),
    /// A record that does not decrypt, or one of an impossible length.
    #[error("a record does not decrypt: {0}")]
    Record(&'static str),
    /// A key could not be made or read.
    #[error("bad static key: {0}")]
    Key(String),
    /// A new binding could not be recorded where the keyring keeps them;
    /// it was not made (the node would forget it on restart).
    #[error("cannot record the key of node {node}: {why}")]
    Store {
        /// The node id.
        node: NodeId,
        /// Why.
        why: String,
    },
}

/// A node's static X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = SecureError;

    /// 64 hexadecimal digits.
    fn from_str(s: &str) -> Result<Self, SecureError> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut k)
            .map_err(|_| SecureError::Key(format!("{s:?} is not 64 hexadecimal digits")))?;
        Ok(PublicKey(k))
    }
}

/// A node's static X25519 key pair. The private half never leaves it and is
/// not printed by `Debug`.
#[derive(Clone)]
pub struct StaticKey {
    private: [u8; 32],
    public: PublicKey,
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKey").field("public", &self.public).finish_non_exhaustive()
    }
}

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("the Noise protocol name parses")
}

impl StaticKey {
    /// A fresh key pair from the OS random source.
    pub fn generate() -> Result<Self, SecureError> {
        let kp = snow::Builder::new(params()).generate_keypair().map_err(|e| SecureError::Key(e.to_string()))?;
        let private: [u8; 32] = kp.private.as_slice().try_into().map_err(|_| SecureError::Key("private key length".into()))?;
        Ok(Self::from_private(private))
    }

    /// The key pair of a private key (its public half computed).
    pub fn from_private(private: [u8; 32]) -> Self {
        let mut dh = DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .expect("the default resolver has X25519");
        dh.set(&private);
        let mut public = [0u8; 32];
        public.copy_from_slice(dh.pubkey());
        Self { private, public: PublicKey(public) }
    }

    /// The private half (to be stored, mode 0600, by its node).
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// The public half: what peers see and pin.
    pub fn public(&self) -> PublicKey {
        self.public
    }
}

/// A node's Ed25519 signing public key: what verifies the statements it
/// makes about itself that other nodes relay (HyParView announcements).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignPublicKey(pub [u8; 32]);

impl fmt::Display for SignPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SignPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignPublicKey({self})")
    }
}

impl std::str::FromStr for SignPublicKey {
    type Err = SecureError;

    /// 64 hexadecimal digits.
    fn from_str(s: &str) -> Result<Self, SecureError> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut k)
            .map_err(|_| SecureError::Key(format!("{s:?} is not 64 hexadecimal digits")))?;
        Ok(SignPublicKey(k))
    }
}

impl SignPublicKey {
    /// Whether `sig` is this key's signature of `msg` (strict Ed25519: no
    /// malleable or small-order encodings). Any malformed key or signature
    /// is simply not a valid signature.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <[u8; SIGNATURE_LEN]>::try_from(sig) else { return false };
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else { return false };
        key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok()
    }
}

/// A node's Ed25519 signing key (kept, mode 0600, in its data directory
/// beside its static key). The private half is not printed by `Debug`.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("public", &self.public()).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the OS random source.
    pub fn generate() -> Result<Self, SecureError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| SecureError::Key(format!("the OS random source failed: {e}")))?;
        Ok(Self::from_bytes(secret))
    }

    /// The key of a 32-byte secret.
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        Self { key: ed25519_dalek::SigningKey::from_bytes(&secret) }
    }

    /// The 32-byte secret (to be stored, mode 0600, by its node).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> SignPublicKey {
        SignPublicKey(self.key.verifying_key().to_bytes())
    }

    /// The signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(msg).to_bytes()
    }
}

/// What a keyring knows of a node: its id, the static key it proved in a
/// handshake, the signing key it sent in that handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The node id.
    pub node: NodeId,
    /// Its static X25519 key.
    pub key: PublicKey,
    /// Its Ed25519 signing key.
    pub sign: SignPublicKey,
}

/// Keeps a trust-on-first-use keyring's bindings (in the node's data
/// directory): called with all of them, under the keyring's lock, each
/// time one is added or changed, before it is used. An error refuses the
/// connection that brought it (the binding is not made).
pub type KnownStore = Box<dyn Fn(&[Binding]) -> Result<(), String> + Send + Sync>;

/// The first line of a known-peers file.
pub const KNOWN_HEADER: &str = "# reactor-net known peer keys v1";
/// Most bindings in a known-peers file (one per possible node id).
pub const MAX_KNOWN: usize = u16::MAX as usize;
/// Most bytes of a known-peers file: the header and [`MAX_KNOWN`] lines.
pub const MAX_KNOWN_LEN: usize = KNOWN_HEADER.len() + 1 + MAX_KNOWN * (5 + 1 + 64 + 1 + 64 + 1);

/// A known-peers file: [`KNOWN_HEADER`], then one line per binding,
/// `<node id> <static key hex> <signing key hex>`, by node id.
pub fn format_known(bindings: &[Binding]) -> String {
    let mut sorted = bindings.to_vec();
    sorted.sort_by_key(|b| b.node);
    let mut out = format!("{KNOWN_HEADER}\n");
    for b in sorted {
        out.push_str(&format!("{} {} {}\n", b.node, b.key, b.sign));
    }
    out
}

/// Parses a known-peers file strictly (it is ours: anything else in it is
/// damage): the header first, then lines of exactly three fields, a node
/// id from 1 and two keys of 64 lowercase hexadecimal digits, no node id
/// and no static key twice, at most [`MAX_KNOWN`] lines and
/// [`MAX_KNOWN_LEN`] bytes. The error names the line and what is wrong.
pub fn parse_known(text: &str) -> Result<Vec<Binding>, String> {
    if text.len() > MAX_KNOWN_LEN {
        return Err(format!("{} bytes, more than a known-peers file holds ({MAX_KNOWN_LEN})", text.len()));
    }
    let mut lines = text.split_terminator('\n');
    if lines.next() != Some(KNOWN_HEADER) {
        return Err(format!("line 1: expected {KNOWN_HEADER:?}"));
    }
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut out: Vec<Binding> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        if out.len() >= MAX_KNOWN {
            return Err(format!("line {n}: more than {MAX_KNOWN} bindings"));
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let [id, key, sign] = fields[..] else {
            return Err(format!("line {n}: expected `<node id> <static key> <signing key>` separated by single spaces"));
        };
        let node: NodeId = match id.parse() {
            Ok(v) if v != 0 && !id.starts_with(['+', '0']) => v,
            _ => return Err(format!("line {n}: {id:?} is not a node id")),
        };
        if !hex64(key) || !hex64(sign) {
            return Err(format!("line {n}: a key is not 64 lowercase hexadecimal digits"));
        }
        let key: PublicKey = key.parse().map_err(|e| format!("line {n}: {e}"))?;
        let sign: SignPublicKey = sign.parse().map_err(|e| format!("line {n}: {e}"))?;
        if !ids.insert(node) {
            return Err(format!("line {n}: node {node} is listed twice"));
        }
        if !keys.insert(key) {
            return Err(format!("line {n}: static key {key} is listed for another node too"));
        }
        out.push(Binding { node, key, sign });
    }
    Ok(out)
}

/// Looks up the signing key a node proved it holds (the [`Keyring`]); what
/// an overlay verifies announcements relayed for that node with.
pub trait SigningKeys: Send + Sync + fmt::Debug {
    /// The signing key of `node`, if this node learned it (from `node`
    /// itself, over an authenticated connection, now or before a restart).
    fn signing_key(&self, node: NodeId) -> Option<SignPublicKey>;
}

/// Which static key may claim which node id, and the signing key each
/// node id sent with it.
///
/// Pinned: only the node ids listed, each with its key (per-node
/// credentials: the cluster secret alone does not let anyone claim a listed
/// node). Otherwise trust on first use: the first key seen for a node id is
/// bound to it for the life of this keyring — and, with a [`KnownStore`],
/// across restarts — and a key seen for one node id cannot claim another.
/// Either way a node's signing key is the one it sent in its last
/// handshake with a key admitted for its id (only the holder of that
/// static key could send it).
#[derive(Default)]
pub struct Keyring {
    pinned: Option<HashMap<NodeId, PublicKey>>,
    /// Invariant (trust on first use): no static key bound to two ids.
    seen: Mutex<BTreeMap<NodeId, Binding>>,
    store: Option<KnownStore>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seen = self.seen.lock().map(|s| s.len()).unwrap_or_default();
        f.debug_struct("Keyring")
            .field("pinned", &self.pinned.as_ref().map(HashMap::len))
            .field("seen", &seen)
            .field("stored", &self.store.is_some())
            .finish()
    }
}

impl Keyring {
    /// Trust on first use, in memory only.
    pub fn trust_on_first_use() -> Self {
        Self::default()
    }

    /// Trust on first use, starting from the bindings `known` (as a
    /// previous run stored them), every new binding handed to `store`
    /// before it is used. `known` must not bind a node id or a static key
    /// twice ([`parse_known`] refuses such files).
    pub fn trust_on_first_use_stored(known: Vec<Binding>, store: KnownStore) -> Result<Self, SecureError> {
        let mut seen = BTreeMap::new();
        for b in known {
            if seen.values().any(|k: &Binding| k.key == b.key) {
                return Err(SecureError::Key(format!("static key {} is bound to two node ids", b.key)));
            }
            if seen.insert(b.node, b).is_some() {
                return Err(SecureError::Key(format!("node {} is bound twice", b.node)));
            }
        }
        Ok(Self { pinned: None, seen: Mutex::new(seen), store: Some(store) })
    }

    /// Only these node ids, each with its key.
    pub fn pinned(keys: HashMap<NodeId, PublicKey>) -> Self {
        Self { pinned: Some(keys), seen: Mutex::default(), store: None }
    }

    /// Parses a pinned-keys file: one `<node id> <public key in hex>` per
    /// line; blank lines and lines starting with `#` are ignored. A node id
    /// or a key listed twice is refused.
    pub fn parse_pins(text: &str) -> Result<HashMap<NodeId, PublicKey>, String> {
        let mut keys: HashMap<NodeId, PublicKey> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let mut parts = line.split_whitespace();
            let (Some(id), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {n}: expected `<node id> <public key>`"));
            };
            let id: NodeId = id.parse().map_err(|_| format!("line {n}: {id:?} is not a node id"))?;
            let key: PublicKey = key.parse().map_err(|e| format!("line {n}: {e}"))?;
            if keys.values().any(|k| *k == key) {
                return Err(format!("line {n}: key {key} is listed for another node too"));
            }
            if keys.insert(id, key).is_some() {
                return Err(format!("line {n}: node {id} is listed twice"));
            }
        }
        Ok(keys)
    }

    /// Whether `key` may be node `node`; on first use, binds them. `sign`
    /// is the signing key the peer sent in the same handshake: recorded as
    /// the node's once the static key is admitted.
    pub fn admit(&self, node: NodeId, key: PublicKey, sign: SignPublicKey) -> Result<(), SecureError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pinned) = &self.pinned {
            match pinned.get(&node) {
                Some(k) if *k == key => {}
                Some(k) => return Err(SecureError::KeyMismatch { node, known: *k, presented: key }),
                None => return Err(SecureError::NotPinned(node)),
            }
            seen.insert(node, Binding { node, key, sign });
            return Ok(());
        }
        let before = seen.get(&node).copied();
        match before {
            Some(known) if known.key != key => {
                return Err(SecureError::KeyMismatch { node, known: known.key, presented: key });
            }
            Some(known) if known.sign == sign => return Ok(()),
            Some(_) => {}
            None => {
                if let Some((&owner, _)) = seen.iter().find(|(_, b)| b.key == key) {
                    return Err(SecureError::KeyOfAnotherNode { key, owner, claimed: node });
                }
            }
        }
        seen.insert(node, Binding { node, key, sign });
        if let Some(store) = &self.store {
            let all: Vec<Binding> = seen.values().copied().collect();
            if let Err(why) = store(&all) {
                match before {
                    Some(b) => seen.insert(node, b),
                    None => seen.remove(&node),
                };
                return Err(SecureError::Store { node, why });
            }
        }
        Ok(())
    }

    /// Every binding this keyring holds, by node id.
    pub fn bindings(&self) -> Vec<Binding> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).values().copied().collect()
    }
}

impl SigningKeys for Keyring {
    fn signing_key(&self, node: NodeId) -> Option<SignPublicKey> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).get(&node).map(|b| b.sign)
    }
}

/// The 32-byte pre-shared key derived from the cluster secret.
fn psk(secret: &Secret) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(PSK_DOMAIN);
    h.update(secret.bytes());
    h.finalize().into()
}

fn noise_err(e: snow::Error) -> SecureError {
    SecureError::Handshake(e.to_string())
}

/// Seals plaintext into records (one direction of a connection).
pub struct Sealer {
    transport: Arc<snow::StatelessTransportState>,
    nonce: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").field("nonce", &self.nonce).finish_non_exhaustive()
    }
}

/// The nonce to use now; counts `nonce` up (a direction's nonces never
/// repeat: when they run out, so does the connection).
fn take_nonce(nonce: &mut u64) -> Result<u64, SecureError> {
    let n = *nonce;
    *nonce = n.checked_add(1).ok_or(SecureError::Record("the nonces of this connection are used up"))?;
    Ok(n)
}

impl Sealer {
    fn seal_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SecureError> {
        let nonce = take_nonce(&mut self.nonce)?;
        let at = out.len();
        out.resize(at + plain.len() + TAG_LEN, 0);
        let n = self
            .transport
            .write_message(nonce, plain, &mut out[at..])
            .map_err(|_| SecureError::Record("encryption failed"))?;
        out.truncate(at + n);
        Ok(())
    }

    /// Appends `plain` to `out` as records of at most
    /// [`MAX_RECORD_PLAINTEXT`] plaintext bytes each.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SecureError> {
        for chunk in plain.chunks(MAX_RECORD_PLAINTEXT) {
            out.extend_from_slice(&((chunk.len() + TAG_LEN) as u16).to_le_bytes());
            self.seal_into(chunk, out)?;
        }
        Ok(())
    }
}

/// Opens records (the other direction of a connection).
pub struct Opener {
    transport: Arc<snow::StatelessTransportState>,
    nonce: u64,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener").field("nonce", &self.nonce).finish_non_exhaustive()
    }
}

impl Opener {
    fn open_one(&mut self, ciphertext: &[u8], plain: &mut Vec<u8>) -> Result<(), SecureError> {
        if ciphertext.len() < TAG_LEN {
            return Err(SecureError::Record("a record shorter than its tag"));
        }
        let nonce = take_nonce(&mut self.nonce)?;
        let at = plain.len();
        plain.resize(at + ciphertext.len() - TAG_LEN, 0);
        match self.transport.read_message(nonce, ciphertext, &mut plain[at..]) {
            Ok(n) => {
                plain.truncate(at + n);
                Ok(())
            }
            Err(_) => {
                plain.truncate(at);
                Err(SecureError::Record("authentication failed (altered, injected, replayed or reordered bytes)"))
            }
        }
    }

    /// Decrypts every whole record at the front of `wire`, appending the
    /// plaintext to `plain`; returns how many bytes of `wire` it used.
    pub fn open(&mut self, wire: &[u8], plain: &mut Vec<u8>) -> Result<usize, SecureError> {
        let mut at = 0;
        while let Some(len) = wire.get(at..at + 2) {
            let len = u16::from_le_bytes([len[0], len[1]]) as usize;
            let Some(ct) = wire.get(at + 2..at + 2 + len) else { break };
            self.open_one(ct, plain)?;
            at += 2 + len;
        }
        Ok(at)
    }
}

/// The two directions of an established connection.
#[derive(Debug)]
pub struct Session {
    /// What this side sends.
    pub sealer: Sealer,
    /// What it receives.
    pub opener: Opener,
}

/// A finished handshake.
#[derive(Debug)]
pub struct Established {
    /// Who the peer says it is (its hello, authenticated).
    pub peer: Peer,
    /// The static key it proved it holds: for the [`Keyring`].
    pub key: PublicKey,
    /// The signing key it sent with its hello: for the [`Keyring`].
    pub sign_key: SignPublicKey,
    /// The record layer.
    pub session: Session,
    /// A last handshake frame to send before any record (the acceptor's).
    pub send: Option<Frame>,
}

/// What the transport does next.
#[derive(Debug)]
pub enum Step {
    /// Send this frame and feed the next one.
    Send(Frame),
    /// Authenticated and encrypted both ways (see [`Established`]).
    Done(Box<Established>),
}

#[derive(Debug)]
enum State {
    /// Connector: message 1 sent, waiting for message 2.
    WaitMsg2,
    /// Acceptor: waiting for message 1.
    WaitMsg1,
    /// Acceptor: message 2 sent, waiting for message 3.
    WaitMsg3,
    /// Connector: message 3 sent, waiting for the acceptor's sealed hello.
    WaitConfirm,
    Done,
}

/// One side of an encrypted handshake.
pub struct Handshake {
    role: Role,
    noise: Option<snow::HandshakeState>,
    /// The connector's session, between message 3 and the confirmation.
    session: Option<Session>,
    own_key: PublicKey,
    /// This node's signing key, sent after its hello.
    sign: SignPublicKey,
    hello: Hello,
    state: State,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake").field("role", &self.role).field("state", &self.state).finish_non_exhaustive()
    }
}

fn encoded(f: &Frame) -> Vec<u8> {
    let mut b = Vec::new();
    f.encode(&mut b);
    b
}

/// What this side puts in its handshake payload: its hello frame, then the
/// identity trailer (version, signing key).
fn payload_of(hello: &Hello, sign: SignPublicKey) -> Vec<u8> {
    let mut b = encoded(&Frame::Hello(hello.clone()));
    b.push(IDENTITY_VERSION);
    b.extend_from_slice(&sign.0);
    b
}

/// A handshake payload: exactly one `Hello` frame, then the identity
/// trailer.
fn hello_from(bytes: &[u8]) -> Result<(Hello, SignPublicKey), SecureError> {
    let (hello, n) = match Frame::decode_with_limit(bytes, MAX_PREAUTH_FRAME_LEN) {
        Ok(Some((Frame::Hello(h), n))) => (h, n),
        Ok(Some((f, _))) => return Err(SecureError::BadHello(format!("a {} frame", f.name()))),
        Ok(None) => return Err(SecureError::BadHello("truncated".into())),
        Err(e) => return Err(SecureError::BadHello(FrameError::to_string(&e))),
    };
    match &bytes[n..] {
        [] => Err(SecureError::BadHello("no signing key after the hello (a node of an older version?)".into())),
        [IDENTITY_VERSION, key @ ..] => {
            let key: [u8; 32] = key.try_into().map_err(|_| {
                SecureError::BadHello(format!("{} bytes of signing key after the hello, expected 32", key.len()))
            })?;
            Ok((hello, SignPublicKey(key)))
        }
        [v, ..] => Err(SecureError::BadHello(format!("identity version {v} after the hello, this node speaks {IDENTITY_VERSION}"))),
    }
}

impl Handshake {
    /// Starts a handshake for `role` with this node's `key`, the cluster
    /// `secret`, its own `hello` (the acceptor's channel and lane are
    /// filled in from the connector's) and its signing key `sign` (sent
    /// after the hello). The connector gets its first frame to send.
    pub fn start(
        role: Role,
        secret: &Secret,
        key: &StaticKey,
        sign: SignPublicKey,
        hello: Hello,
    ) -> Result<(Self, Option<Frame>), SecureError> {
        let psk = psk(secret);
        let builder = snow::Builder::new(params())
            .local_private_key(&key.private)
            .and_then(|b| b.psk(3, &psk))
            .and_then(|b| b.prologue(PROLOGUE))
            .map_err(noise_err)?;
        let mut noise = match role {
            Role::Connector => builder.build_initiator(),
            Role::Acceptor => builder.build_responder(),
        }
        .map_err(noise_err)?;
        let (state, first) = match role {
            Role::Connector => {
                let mut buf = [0u8; MAX_NOISE_LEN];
                let n = noise.write_message(&[], &mut buf).map_err(noise_err)?;
                (State::WaitMsg2, Some(Frame::Noise { msg: buf[..n].to_vec() }))
            }
            Role::Acceptor => (State::WaitMsg1, None),
        };
        Ok((Self { role, noise: Some(noise), session: None, own_key: key.public, sign, hello, state }, first))
    }

    fn check_cluster(&self, theirs: &Hello) -> Result<(), SecureError> {
        if theirs.cluster != self.hello.cluster {
            return Err(SecureError::Cluster { ours: self.hello.cluster.clone(), theirs: theirs.cluster.clone() });
        }
        Ok(())
    }

    fn remote_key(own: PublicKey, rs: Option<&[u8]>) -> Result<PublicKey, SecureError> {
        let rs = rs.ok_or_else(|| SecureError::Handshake("no remote static key".into()))?;
        let key = PublicKey(rs.try_into().map_err(|_| SecureError::Handshake("remote static key length".into()))?);
        if key == own {
            return Err(SecureError::OwnKey);
        }
        Ok(key)
    }

    /// The record layer of a finished Noise handshake. The acceptor's
    /// nonce 0 is its confirmation (message 4).
    fn split(noise: snow::HandshakeState) -> Result<Session, SecureError> {
        let t = Arc::new(noise.into_stateless_transport_mode().map_err(noise_err)?);
        Ok(Session { sealer: Sealer { transport: t.clone(), nonce: 0 }, opener: Opener { transport: t, nonce: 0 } })
    }

    /// Feeds the next frame from the peer.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Step, SecureError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        let msg = match (&state, frame) {
            (State::WaitMsg1 | State::WaitMsg2 | State::WaitMsg3 | State::WaitConfirm, Frame::Noise { msg }) => msg,
            (state, f) => {
                let want = match state {
                    State::WaitMsg1 | State::WaitMsg2 | State::WaitMsg3 => "the next Noise handshake message",
                    State::WaitConfirm => "the peer's confirmation",
                    State::Done => "nothing (the handshake is over)",
                };
                if matches!(f, Frame::Hello(_)) && !matches!(state, State::Done) {
                    return Err(SecureError::Unexpected { got: "plaintext hello (is the peer in --insecure-plaintext mode?)", want });
                }
                return Err(SecureError::Unexpected { got: f.name(), want });
            }
        };
        let mut payload = [0u8; MAX_NOISE_LEN];
        match state {
            State::WaitMsg1 => {
                let noise = self.noise.as_mut().expect("handshake state until the end");
                noise.read_message(&msg, &mut payload).map_err(noise_err)?;
                let mut out = [0u8; MAX_NOISE_LEN];
                let n = noise.write_message(&[], &mut out).map_err(noise_err)?;
                self.state = State::WaitMsg3;
                Ok(Step::Send(Frame::Noise { msg: out[..n].to_vec() }))
            }
            State::WaitMsg2 => {
                let noise = self.noise.as_mut().expect("handshake state until the end");
                noise.read_message(&msg, &mut payload).map_err(noise_err)?;
                let mut out = [0u8; MAX_NOISE_LEN];
                let n = noise.write_message(&payload_of(&self.hello, self.sign), &mut out).map_err(noise_err)?;
                let noise = self.noise.take().expect("handshake state until the end");
                self.session = Some(Self::split(noise)?);
                self.state = State::WaitConfirm;
                Ok(Step::Send(Frame::Noise { msg: out[..n].to_vec() }))
            }
            State::WaitMsg3 => {
                let noise = self.noise.as_mut().expect("handshake state until the end");
                let n = noise.read_message(&msg, &mut payload).map_err(noise_err)?;
                let key = Self::remote_key(self.own_key, noise.get_remote_static())?;
                let (theirs, sign_key) = hello_from(&payload[..n])?;
                self.check_cluster(&theirs)?;
                let noise = self.noise.take().expect("handshake state until the end");
                let mut session = Self::split(noise)?;
                self.hello.channel = theirs.channel.clone();
                self.hello.lane = theirs.lane;
                let mut confirm = Vec::new();
                session.sealer.seal_into(&payload_of(&self.hello, self.sign), &mut confirm)?;
                let peer = Peer {
                    node: theirs.node,
                    incarnation: theirs.incarnation,
                    name: theirs.name,
                    channel: theirs.channel,
                    lane: theirs.lane,
                };
                Ok(Step::Done(Box::new(Established { peer, key, sign_key, session, send: Some(Frame::Noise { msg: confirm }) })))
            }
            State::WaitConfirm => {
                let mut session = self.session.take().expect("a session once message 3 is sent");
                let mut plain = Vec::new();
                session.opener.open_one(&msg, &mut plain).map_err(|_| {
                    SecureError::Handshake("the acceptor's confirmation does not decrypt".into())
                })?;
                let (theirs, sign_key) = hello_from(&plain)?;
                self.check_cluster(&theirs)?;
                if theirs.channel != self.hello.channel || theirs.lane != self.hello.lane {
                    return Err(SecureError::Channel {
                        asked: self.hello.channel.clone(),
                        asked_lane: self.hello.lane,
                        got: theirs.channel,
                        got_lane: theirs.lane,
                    });
                }
                let key = Self::remote_key(self.own_key, session.opener.transport.get_remote_static())?;
                let peer = Peer {
                    node: theirs.node,
                    incarnation: theirs.incarnation,
                    name: theirs.name,
                    channel: theirs.channel,
                    lane: theirs.lane,
                };
                Ok(Step::Done(Box::new(Established { peer, key, sign_key, session, send: None })))
            }
            State::Done => unreachable!("refused above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello(node: NodeId, channel: &str, lane: u16) -> Hello {
        Hello {
            cluster: "prod".into(),
            node,
            incarnation: 3,
            name: format!("n{node}"),
            channel: channel.into(),
            lane,
            nonce: [0; 32],
        }
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec()).unwrap()
    }

    const K: &str = "correct horse battery staple";

    /// The signing key the tests give the holder of `k`.
    fn sign_of(k: &StaticKey) -> SignPublicKey {
        SigningKey::from_bytes(*k.private()).public()
    }

    /// Runs both sides; returns each side's outcome.
    fn run(
        c: (&Secret, &StaticKey, Hello),
        a: (&Secret, &StaticKey, Hello),
    ) -> (Result<Established, SecureError>, Result<Established, SecureError>) {
        let (mut ch, m1) = Handshake::start(Role::Connector, c.0, c.1, sign_of(c.1), c.2).unwrap();
        let (mut ah, none) = Handshake::start(Role::Acceptor, a.0, a.1, sign_of(a.1), a.2).unwrap();
        assert!(none.is_none());
        let Step::Send(m2) = ah.on_frame(m1.unwrap()).unwrap() else { panic!("message 2") };
        let Step::Send(m3) = ch.on_frame(m2).unwrap() else { panic!("message 3") };
        let a_done = match ah.on_frame(m3) {
            Ok(Step::Done(e)) => *e,
            Ok(s) => panic!("{s:?}"),
            Err(e) => return (Err(SecureError::Unexpected { got: "(acceptor failed)", want: "" }), Err(e)),
        };
        let mut a_done = a_done;
        let confirm = a_done.send.take().unwrap();
        let c_done = match ch.on_frame(confirm) {
            Ok(Step::Done(e)) => Ok(*e),
            Ok(s) => panic!("{s:?}"),
            Err(e) => Err(e),
        };
        (c_done, Ok(a_done))
    }

    #[test]
    fn both_sides_learn_each_others_hello_and_key_and_talk_in_records() {
        let (kc, ka) = (StaticKey::generate().unwrap(), StaticKey::generate().unwrap());
        let s = secret(K);
        let (c, a) = run((&s, &kc, hello(1, "bulk", 3)), (&s, &ka, hello(2, "", 0)));
        let (mut c, mut a) = (c.unwrap(), a.unwrap());
        assert_eq!((c.peer.node, c.peer.channel.as_str(), c.peer.lane, c.key), (2, "bulk", 3, ka.public()));
        assert_eq!((a.peer.node, a.peer.incarnation, a.key), (1, 3, kc.public()));
        // Each learned the other's signing key with its hello.
        assert_eq!((c.sign_key, a.sign_key), (sign_of(&ka), sign_of(&kc)));
        // A large plaintext crosses in several records, both ways.
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        c.session.sealer.seal(&big, &mut wire).unwrap();
        assert!(wire.len() > big.len() + 3 * TAG_LEN);
        let mut plain = Vec::new();
        // Fed a byte short, the last record waits.
        let used = a.session.opener.open(&wire[..wire.len() - 1], &mut plain).unwrap();
        let used2 = a.session.opener.open(&wire[used..], &mut plain).unwrap();
        assert_eq!(used + used2, wire.len());
        assert_eq!(plain, big);
        let mut back = Vec::new();
        a.session.sealer.seal(b"pong", &mut back).unwrap();
        let mut got = Vec::new();
        c.session.opener.open(&back, &mut got).unwrap();
        assert_eq!(got, b"pong");
    }

    #[test]
    fn a_peer_without_the_secret_fails_at_message_3() {
        let (kc, ka) = (StaticKey::generate().unwrap(), StaticKey::generate().unwrap());
        let (c, a) = run((&secret("a guessed secret value"), &kc, hello(1, "x", 0)), (&secret(K), &ka, hello(2, "", 0)));
        assert!(c.is_err());
        assert!(matches!(a, Err(SecureError::Handshake(_))), "{a:?}");
    }

    #[test]
    fn altered_injected_and_replayed_records_are_refused() {
        let (kc, ka) = (StaticKey::generate().unwrap(), StaticKey::generate().unwrap());
        let s = secret(K);
        let (c, a) = run((&s, &kc, hello(1, "x", 0)), (&s, &ka, hello(2, "", 0)));
        let (mut c, mut a) = (c.unwrap(), a.unwrap());
        let mut wire = Vec::new();
        c.session.sealer.seal(b"first", &mut wire).unwrap();
        // Replayed: the same record twice.
        let mut plain = Vec::new();
        a.session.opener.open(&wire, &mut plain).unwrap();
        assert!(matches!(a.session.opener.open(&wire, &mut plain), Err(SecureError::Record(_))));
        // Altered: one bit of a fresh connection's first record.
        let (c2, a2) = run((&s, &kc, hello(1, "x", 0)), (&s, &ka, hello(2, "", 0)));
        let (mut c2, mut a2) = (c2.unwrap(), a2.unwrap());
        let mut ok = Vec::new();
        c2.session.sealer.seal(b"second", &mut ok).unwrap();
        let last = ok.len() - 1;
        ok[last] ^= 1;
        assert!(matches!(a2.session.opener.open(&ok, &mut plain), Err(SecureError::Record(_))));
        // Injected: a record sealed with another connection's keys.
        let mut other = Vec::new();
        c.session.sealer.seal(b"from elsewhere", &mut other).unwrap();
        let (_, a3) = run((&s, &kc, hello(1, "x", 0)), (&s, &ka, hello(2, "", 0)));
        assert!(matches!(a3.unwrap().session.opener.open(&other, &mut plain), Err(SecureError::Record(_))));
        // A record too short to hold its tag.
        assert!(matches!(a.session.opener.open(&[3, 0, 1, 2, 3], &mut plain), Err(SecureError::Record(_))));
    }

    #[test]
    fn other_clusters_wrong_echoes_plaintext_hellos_and_own_keys_are_refused() {
        let (kc, ka) = (StaticKey::generate().unwrap(), StaticKey::generate().unwrap());
        let s = secret(K);
        let mut other = hello(2, "", 0);
        other.cluster = "staging".into();
        let (_, a) = run((&s, &kc, hello(1, "x", 0)), (&s, &ka, other));
        assert!(matches!(a, Err(SecureError::Cluster { .. })), "{a:?}");
        let (c, a) = run((&s, &kc, hello(1, "x", 0)), (&s, &kc, hello(2, "", 0)));
        assert!(matches!(a, Err(SecureError::OwnKey)) || matches!(c, Err(SecureError::OwnKey)), "{c:?} {a:?}");
        let (mut ah, _) = Handshake::start(Role::Acceptor, &s, &ka, sign_of(&ka), hello(2, "", 0)).unwrap();
        let r = ah.on_frame(Frame::Hello(hello(1, "x", 0)));
        assert!(matches!(&r, Err(SecureError::Unexpected { got, .. }) if got.contains("insecure-plaintext")), "{r:?}");
    }

    #[test]
    fn the_keyring_binds_node_ids_to_keys() {
        let (k1, k2, k3) = (PublicKey([1; 32]), PublicKey([2; 32]), PublicKey([3; 32]));
        let (s1, s2) = (SignPublicKey([11; 32]), SignPublicKey([12; 32]));
        let tofu = Keyring::trust_on_first_use();
        assert_eq!(tofu.signing_key(1), None);
        tofu.admit(1, k1, s1).unwrap();
        tofu.admit(1, k1, s1).unwrap();
        assert_eq!(tofu.signing_key(1), Some(s1));
        assert!(matches!(tofu.admit(1, k2, s2), Err(SecureError::KeyMismatch { node: 1, .. })));
        assert_eq!(tofu.signing_key(1), Some(s1), "a refused key does not bring its signing key");
        assert!(matches!(tofu.admit(2, k1, s2), Err(SecureError::KeyOfAnotherNode { owner: 1, claimed: 2, .. })));
        assert_eq!(tofu.signing_key(2), None);
        tofu.admit(2, k2, s2).unwrap();
        // The holder of node 1's static key may send a new signing key.
        tofu.admit(1, k1, s2).unwrap();
        assert_eq!(tofu.signing_key(1), Some(s2));
        let text = format!("# the cluster\n1 {k1}\n\n2   {k2}\n");
        let pinned = Keyring::pinned(Keyring::parse_pins(&text).unwrap());
        pinned.admit(1, k1, s1).unwrap();
        assert_eq!(pinned.signing_key(1), Some(s1));
        assert!(matches!(pinned.admit(1, k3, s2), Err(SecureError::KeyMismatch { .. })));
        assert_eq!(pinned.signing_key(1), Some(s1));
        assert_eq!(pinned.admit(3, k3, s2), Err(SecureError::NotPinned(3)));
        assert_eq!(pinned.signing_key(3), None);
        for bad in ["1", "x 00", &format!("1 {k1}\n1 {k2}"), &format!("1 {k1}\n2 {k1}"), "1 abcd", &format!("1 {k1} extra")] {
            assert!(Keyring::parse_pins(bad).is_err(), "{bad:?}");
        }
        // The public key is a function of the private one.
        let k = StaticKey::generate().unwrap();
        assert_eq!(StaticKey::from_private(*k.private()).public(), k.public());
        assert_eq!(k.public().to_string().parse::<PublicKey>().unwrap(), k.public());
        assert!(!format!("{k:?}").contains(&hex::encode(k.private())));
    }

    #[test]
    fn signatures_verify_only_with_the_signers_key_and_the_same_bytes() {
        let (a, b) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
        let sig = a.sign(b"node 3 is incarnation 7 at 10.0.0.3:7000");
        assert!(a.public().verify(b"node 3 is incarnation 7 at 10.0.0.3:7000", &sig));
        assert!(!b.public().verify(b"node 3 is incarnation 7 at 10.0.0.3:7000", &sig), "another key");
        assert!(!a.public().verify(b"node 3 is incarnation 8 at 10.0.0.3:7000", &sig), "other bytes");
        let mut bent = sig;
        bent[5] ^= 1;
        assert!(!a.public().verify(b"node 3 is incarnation 7 at 10.0.0.3:7000", &bent));
        assert!(!a.public().verify(b"node 3 is incarnation 7 at 10.0.0.3:7000", &sig[..63]), "short");
        assert!(!a.public().verify(b"node 3 is incarnation 7 at 10.0.0.3:7000", &[]), "none");
        assert!(!SignPublicKey([0xff; 32]).verify(b"x", &sig), "not a point");
        // The key survives its file; Debug keeps the secret.
        assert_eq!(SigningKey::from_bytes(a.to_bytes()).public(), a.public());
        assert!(!format!("{a:?}").contains(&hex::encode(a.to_bytes())));
        assert_eq!(a.public().to_string().parse::<SignPublicKey>().unwrap(), a.public());
    }

    #[test]
    fn a_hello_without_its_signing_key_is_refused() {
        let h = encoded(&Frame::Hello(hello(1, "x", 0)));
        assert!(matches!(hello_from(&h), Err(SecureError::BadHello(m)) if m.contains("no signing key")));
        let mut v2 = h.clone();
        v2.push(2);
        v2.extend_from_slice(&[7; 32]);
        assert!(matches!(hello_from(&v2), Err(SecureError::BadHello(m)) if m.contains("identity version 2")));
        let mut short = h.clone();
        short.push(IDENTITY_VERSION);
        short.extend_from_slice(&[7; 31]);
        assert!(matches!(hello_from(&short), Err(SecureError::BadHello(m)) if m.contains("31 bytes")));
        let ok = payload_of(&hello(1, "x", 0), SignPublicKey([7; 32]));
        assert_eq!(hello_from(&ok).unwrap(), (hello(1, "x", 0), SignPublicKey([7; 32])));
    }

    #[test]
    fn known_bindings_are_stored_as_learned_and_outlive_the_keyring() {
        let b = |node: NodeId, k: u8| Binding { node, key: PublicKey([k; 32]), sign: SignPublicKey([k + 100; 32]) };
        let file = Arc::new(Mutex::new(format_known(&[])));
        let store = |file: &Arc<Mutex<String>>| -> KnownStore {
            let file = file.clone();
            Box::new(move |all: &[Binding]| {
                *file.lock().unwrap() = format_known(all);
                Ok(())
            })
        };
        let first = Keyring::trust_on_first_use_stored(parse_known(&file.lock().unwrap()).unwrap(), store(&file)).unwrap();
        first.admit(2, b(2, 2).key, b(2, 2).sign).unwrap();
        first.admit(3, b(3, 3).key, b(3, 3).sign).unwrap();
        assert_eq!(parse_known(&file.lock().unwrap()).unwrap(), vec![b(2, 2), b(3, 3)]);
        // "Restart": a new keyring from the file refuses node 2 with
        // another key, and a known key claiming a new id; it knows the
        // signing keys at once.
        let again = Keyring::trust_on_first_use_stored(parse_known(&file.lock().unwrap()).unwrap(), store(&file)).unwrap();
        assert_eq!(again.signing_key(3), Some(b(3, 3).sign));
        assert!(matches!(again.admit(2, PublicKey([9; 32]), b(2, 2).sign), Err(SecureError::KeyMismatch { node: 2, .. })));
        assert!(matches!(again.admit(4, b(3, 3).key, b(3, 3).sign), Err(SecureError::KeyOfAnotherNode { owner: 3, .. })));
        again.admit(2, b(2, 2).key, b(2, 2).sign).unwrap();
        // A binding that cannot be stored is not made.
        let failing = Keyring::trust_on_first_use_stored(Vec::new(), Box::new(|_: &[Binding]| Err("disk full".into()))).unwrap();
        let r = failing.admit(5, b(5, 5).key, b(5, 5).sign);
        assert!(matches!(&r, Err(SecureError::Store { node: 5, why }) if why == "disk full"), "{r:?}");
        assert_eq!(failing.signing_key(5), None);
        assert!(failing.bindings().is_empty());
        // Bindings a keyring cannot hold are refused at construction.
        assert!(Keyring::trust_on_first_use_stored(vec![b(2, 2), b(3, 2)], store(&file)).is_err());
    }

    #[test]
    fn known_peer_files_parse_strictly() {
        let (k, s) = (PublicKey([0xab; 32]), SignPublicKey([0xcd; 32]));
        let good = format_known(&[Binding { node: 7, key: k, sign: s }, Binding { node: 1, key: PublicKey([1; 32]), sign: s }]);
        let parsed = parse_known(&good).unwrap();
        assert_eq!(parsed.iter().map(|b| b.node).collect::<Vec<_>>(), [1, 7], "sorted by node id");
        assert_eq!(format_known(&parsed), good);
        assert_eq!(parse_known(&format!("{KNOWN_HEADER}\n")).unwrap(), vec![]);
        let line = format!("7 {k} {s}");
        for (bad, why) in [
            (String::new(), "line 1"),
            ("7 x y\n".to_string(), "line 1"),
            (format!("# reactor-net known peer keys v2\n{line}\n"), "line 1"),
            (format!("{KNOWN_HEADER}\n{line}\n\n"), "line 3"),
            (format!("{KNOWN_HEADER}\n{line} extra\n"), "line 2"),
            (format!("{KNOWN_HEADER}\n7  {k} {s}\n"), "line 2"),
            (format!("{KNOWN_HEADER}\n0 {k} {s}\n"), "not a node id"),
            (format!("{KNOWN_HEADER}\n07 {k} {s}\n"), "not a node id"),
            (format!("{KNOWN_HEADER}\n70000 {k} {s}\n"), "not a node id"),
            (format!("{KNOWN_HEADER}\n7 {} {s}\n", k.to_string().to_uppercase()), "lowercase"),
            (format!("{KNOWN_HEADER}\n7 {k} {}\n", &s.to_string()[..63]), "lowercase"),
            (format!("{KNOWN_HEADER}\n{line}\n{line}\n"), "listed twice"),
            (format!("{KNOWN_HEADER}\n{line}\n8 {k} {s}\n"), "another node"),
            (format!("{KNOWN_HEADER}\n{line}\n8 {k}"), "line 3"),
            ("x".repeat(MAX_KNOWN_LEN + 1), "more than a known-peers file"),
        ] {
            let e = parse_known(&bad).expect_err(&bad[..bad.len().min(80)]);
            assert!(e.contains(why), "{e} for {:?}", &bad[..bad.len().min(80)]);
        }
    }

    proptest! {
        /// Whatever frames a peer sends, an acceptor never panics and never
        /// completes a handshake.
        #[test]
        fn random_frames_never_complete_a_handshake(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4)) {
            let ka = StaticKey::from_private([9; 32]);
            let (mut ah, _) = Handshake::start(Role::Acceptor, &secret(K), &ka, sign_of(&ka), hello(2, "", 0)).unwrap();
            for msg in msgs {
                match ah.on_frame(Frame::Noise { msg }) {
                    Ok(Step::Done(_)) => prop_assert!(false, "authenticated by random bytes"),
                    Ok(Step::Send(_)) => {}
                    Err(_) => break,
                }
            }
        }

        /// Random bytes fed to an opener are refused or wait; never a panic
        /// and never plaintext.
        #[test]
        fn random_records_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (kc, ka) = (StaticKey::from_private([5; 32]), StaticKey::from_private([6; 32]));
            let s = secret(K);
            let (_, a) = run((&s, &kc, hello(1, "x", 0)), (&s, &ka, hello(2, "", 0)));
            let mut plain = Vec::new();
            let _ = a.unwrap().session.opener.open(&bytes, &mut plain);
            prop_assert!(plain.is_empty());
        }
    }
}
