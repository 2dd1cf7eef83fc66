//! The reactor runtime inside the guest: typed messages over the raw ABI.
//!
//! Unsafe code here is confined to the `sys` block of host imports; each call
//! passes pointers into this module's own memory with the lengths of the
//! slices they come from.

use crate::abi;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Everything a reactor author usually needs.
pub mod prelude {
    pub use crate::{
        Address, Blob, BlobError, Context, Down, Durability, ModuleRef, Payload, PendingReply, Reactor, RequestId, Restart, SendError,
        Strategy, Supervision,
    };
    pub use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
    pub use serde::{Deserialize, Serialize};
}

pub use serde;

/// Raw host imports. The names must equal the `abi::IMPORT_*` constants; the
/// host's integration tests instantiate every guest against a linker built
/// from those constants, so a mismatch fails the build of confidence at once.
mod sys {
    #[link(wasm_import_module = "reactor")]
    unsafe extern "C" {
        pub(crate) fn inbox_read(ptr: *mut u8, len: usize) -> usize;
        pub(crate) fn send(to: u64, ptr: *const u8, len: usize, flags: u32) -> i32;
        pub(crate) fn request(to: u64, ptr: *const u8, len: usize, flags: u32) -> i64;
        pub(crate) fn reply(to: u64, corr: u64, ptr: *const u8, len: usize, flags: u32) -> i32;
        pub(crate) fn spawn(mptr: *const u8, mlen: usize, iptr: *const u8, ilen: usize) -> i64;
        pub(crate) fn spawn_durable(mptr: *const u8, mlen: usize, iptr: *const u8, ilen: usize, level: i32) -> i64;
        pub(crate) fn self_address() -> u64;
        pub(crate) fn log(level: i32, ptr: *const u8, len: usize);
        pub(crate) fn fail(ptr: *const u8, len: usize);
        pub(crate) fn blob_create(ptr: *const u8, len: usize) -> i64;
        pub(crate) fn blob_open(tag: u64) -> i32;
        pub(crate) fn blob_len(tag: u64) -> i64;
        pub(crate) fn blob_read(tag: u64, offset: u64, ptr: *mut u8, len: usize) -> i64;
        pub(crate) fn blob_close(tag: u64) -> i32;
        pub(crate) fn blob_give(tag: u64, to: u64) -> i32;
        pub(crate) fn set_affinity(key: u64) -> i32;
        pub(crate) fn move_near(peer: u64) -> i32;
        pub(crate) fn supervise(strategy: i32, restart: i32, max_restarts: i32, within_ms: i64, backoff_ms: i64, attempts: i32) -> i32;
        pub(crate) fn watch(target: u64, op: i32) -> i32;
        pub(crate) fn trap_exits(on: i32) -> i32;
    }
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        pub(crate) fn random_get(buf: *mut u8, len: usize) -> u16;
    }
}

/// A reactor's address: where messages to it are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct Address(pub u64);

impl Address {
    /// The outside world (the host API, the command line).
    pub const HOST: Address = Address(abi::HOST_ADDRESS);
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Identifies a request this reactor made; its reply carries the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct RequestId(pub u64);

/// Why a send, request, reply or spawn did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No live reactor has that address.
    NoSuchReactor,
    /// The destination's inbox is full: back off and retry later.
    InboxFull,
    /// The encoded message exceeds [`abi::MAX_PAYLOAD_LEN`].
    TooLarge,
    /// The module to spawn is unknown to the host.
    NoSuchModule,
    /// The host refused to spawn.
    SpawnRefused,
    /// `reply` was called while handling something that is not a request.
    NotARequest,
    /// The value could not be encoded.
    Encode(String),
    /// The host rejected an argument.
    BadArgument,
    /// The host reached a limit (e.g. it cannot issue a correlation id now).
    Limit,
    /// The host does not offer the call (no supervisor: a bare runtime).
    Unsupported,
    /// A status this SDK version does not know.
    Unknown(i64),
}

impl SendError {
    fn from_status(s: i64) -> Self {
        match s as i32 {
            abi::STATUS_NO_SUCH_REACTOR => Self::NoSuchReactor,
            abi::STATUS_INBOX_FULL => Self::InboxFull,
            abi::STATUS_TOO_LARGE => Self::TooLarge,
            abi::STATUS_NO_SUCH_MODULE => Self::NoSuchModule,
            abi::STATUS_SPAWN_REFUSED => Self::SpawnRefused,
            abi::STATUS_BAD_ARGUMENT => Self::BadArgument,
            abi::STATUS_LIMIT => Self::Limit,
            abi::STATUS_UNSUPPORTED => Self::Unsupported,
            _ => Self::Unknown(s),
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A request whose answer was deferred with [`Context::defer_reply`]. It is
/// plain data, so it can live in the reactor's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PendingReply {
    to: Address,
    corr: u64,
    text: bool,
}

/// Which module a [`Context::spawn`] instantiates.
#[derive(Clone, Copy, Debug)]
pub enum ModuleRef<'a> {
    /// The calling reactor's own module.
    Own,
    /// A module the host has loaded under this name (e.g. `"kv"`).
    Name(&'a str),
    /// A module by the SHA-256 of its bytes.
    Hash([u8; 32]),
}

impl ModuleRef<'_> {
    fn encode(&self) -> Vec<u8> {
        match self {
            ModuleRef::Own => alloc::vec![abi::MODULE_REF_SELF],
            ModuleRef::Name(n) => {
                let mut v = alloc::vec![abi::MODULE_REF_NAME];
                v.extend_from_slice(n.as_bytes());
                v
            }
            ModuleRef::Hash(h) => {
                let mut v = alloc::vec![abi::MODULE_REF_HASH];
                v.extend_from_slice(h);
                v
            }
        }
    }
}

/// Bytes of a message, an init argument or a reply, not yet decoded.
#[derive(Clone, Copy, Debug)]
pub struct Payload<'a> {
    bytes: &'a [u8],
    text: bool,
    error: bool,
}

/// Why a payload did not decode into the requested type.
#[derive(Clone, Debug)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'a> Payload<'a> {
    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// True when the payload is JSON text (it came from the command line).
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// For a reply: why the request failed, if it did (the answering
    /// reactor replied with [`Context::reply_error`], or the host answered
    /// for it); then there is no value to decode.
    pub fn error(&self) -> Option<alloc::borrow::Cow<'a, str>> {
        self.error.then(|| String::from_utf8_lossy(self.bytes))
    }

    /// Decodes the payload as `T` (postcard, or JSON for text payloads). An
    /// error reply (see [`Payload::error`]) does not decode: its reason is
    /// the error.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        if let Some(why) = self.error() {
            return Err(DecodeError(alloc::format!("the request failed: {why}")));
        }
        decode(self.bytes, self.text)
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], text: bool) -> Result<T, DecodeError> {
    if text {
        #[cfg(feature = "text")]
        return serde_json::from_slice(bytes).map_err(|e| DecodeError(alloc::format!("json: {e}")));
        #[cfg(not(feature = "text"))]
        return Err(DecodeError("text payloads need the guest-sdk `text` feature".into()));
    }
    postcard::from_bytes(bytes).map_err(|e| DecodeError(alloc::format!("postcard: {e}")))
}

fn encode<T: Serialize + ?Sized>(value: &T, text: bool) -> Result<Vec<u8>, SendError> {
    if text {
        #[cfg(feature = "text")]
        return serde_json::to_vec(value).map_err(|e| SendError::Encode(alloc::format!("{e}")));
        #[cfg(not(feature = "text"))]
        return Err(SendError::Encode("text payloads need the `text` feature".into()));
    }
    postcard::to_allocvec(value).map_err(|e| SendError::Encode(alloc::format!("{e}")))
}

/// Sends `value` as the reply to `pending`; one that does not encode is
/// answered with an error instead.
fn send_reply<T: Serialize + ?Sized>(pending: PendingReply, value: &T) -> Result<(), SendError> {
    let bytes = match encode(value, pending.text) {
        Ok(b) => b,
        Err(e) => {
            let _ = send_error(pending, &alloc::format!("the reply could not be encoded: {e}"));
            return Err(e);
        }
    };
    let flags = if pending.text { abi::FLAG_TEXT as u32 } else { 0 };
    // SAFETY: `bytes` is a live slice of our own memory for the call.
    status(unsafe { sys::reply(pending.to.0, pending.corr, bytes.as_ptr(), bytes.len(), flags) })
}

/// Sends `reason` as an error reply to `pending`.
fn send_error(pending: PendingReply, reason: &str) -> Result<(), SendError> {
    let flags = abi::FLAG_ERROR as u32 | if pending.text { abi::FLAG_TEXT as u32 } else { 0 };
    // The reason is cut to what a message may carry.
    let mut end = reason.len().min(abi::MAX_PAYLOAD_LEN as usize);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    // SAFETY: `reason` is a live slice of our own memory for the call.
    status(unsafe { sys::reply(pending.to.0, pending.corr, reason.as_ptr(), end, flags) })
}

fn status(s: i32) -> Result<(), SendError> {
    if s == abi::STATUS_OK { Ok(()) } else { Err(SendError::from_status(s as i64)) }
}

/// A reactor: a state machine that changes only in response to messages.
///
/// The state starts as `Default::default()`; [`Reactor::start`] sees the init
/// argument given at spawn time.
pub trait Reactor: Default + 'static {
    /// The messages this reactor understands.
    type Msg: DeserializeOwned;

    /// Called once, before any message, with the spawn-time argument.
    fn start(&mut self, cx: &mut Context, init: Payload<'_>) {
        let _ = (cx, init);
    }

    /// Handles one message (one-way or request; [`Context::reply`] answers a
    /// request).
    fn react(&mut self, cx: &mut Context, msg: Self::Msg);

    /// Handles the reply to a request this reactor made with
    /// [`Context::request`].
    fn on_reply(&mut self, cx: &mut Context, id: RequestId, reply: Payload<'_>) {
        let _ = (cx, id, reply);
    }

    /// Called when a reactor this one monitors ([`Context::monitor`]) is
    /// gone for good, or one it is linked to ([`Context::link`]) while it
    /// traps exits ([`Context::trap_exits`]). The default logs it.
    fn on_down(&mut self, cx: &mut Context, down: Down) {
        cx.log(abi::LOG_INFO, &alloc::format!("{} is gone: {}", down.address, down.reason));
    }

    /// Called when a message does not decode as [`Reactor::Msg`]. The default
    /// logs a warning and drops it.
    fn on_undecodable(&mut self, cx: &mut Context, err: DecodeError) {
        cx.log(abi::LOG_WARN, &alloc::format!("dropping undecodable message from {}: {err}", cx.sender()));
    }
}

/// What a handler can do: send, request, reply, spawn, log, and learn who it
/// is and who is talking to it.
#[derive(Debug)]
pub struct Context {
    me: Address,
    from: Address,
    kind: u8,
    corr: u64,
    text: bool,
}

impl Context {
    /// This reactor's own address.
    pub fn me(&self) -> Address {
        self.me
    }

    /// The sender of the message being handled ([`Address::HOST`] for the
    /// outside world).
    pub fn sender(&self) -> Address {
        self.from
    }

    /// True while handling a request that has not been answered yet.
    pub fn is_request(&self) -> bool {
        self.kind == abi::KIND_REQUEST
    }

    /// Picks the connection of the messages this reactor sends to other
    /// nodes for the rest of this call by an explicit partition `key`
    /// (messages with one key keep their order, unrelated keys flow in
    /// parallel) instead of by destination, the default; `0` restores the
    /// default.
    pub fn set_affinity(&mut self, key: u64) {
        // SAFETY: no pointers.
        unsafe { sys::set_affinity(key) };
    }

    /// Asks the host to move this reactor, live, to the node where `peer`
    /// lives (e.g. one it talks to a lot), after this call; its address
    /// stays the same. Nothing happens if `peer` lives on this node or a
    /// move is under way already. False if `peer` is not a reactor.
    pub fn move_near(&mut self, peer: Address) -> bool {
        // SAFETY: no pointers.
        unsafe { sys::move_near(peer.0) == abi::STATUS_OK }
    }

    /// Sends a one-way message.
    pub fn send<T: Serialize + ?Sized>(&mut self, to: Address, msg: &T) -> Result<(), SendError> {
        let bytes = encode(msg, false)?;
        // SAFETY: `bytes` is a live slice of our own memory for the call.
        status(unsafe { sys::send(to.0, bytes.as_ptr(), bytes.len(), 0) })
    }

    /// Sends a request; the reply arrives later in [`Reactor::on_reply`] with
    /// the returned id.
    pub fn request<T: Serialize + ?Sized>(&mut self, to: Address, msg: &T) -> Result<RequestId, SendError> {
        let bytes = encode(msg, false)?;
        // SAFETY: `bytes` is a live slice of our own memory for the call.
        let r = unsafe { sys::request(to.0, bytes.as_ptr(), bytes.len(), 0) };
        if r > 0 { Ok(RequestId(r as u64)) } else { Err(SendError::from_status(r)) }
    }

    /// Answers the request being handled. A request is answered at most once:
    /// after the first reply, [`Context::is_request`] is false.
    ///
    /// A reply that cannot be given does not leave the caller waiting: one
    /// that does not encode is answered with an error reply saying so, and
    /// one over [`abi::MAX_PAYLOAD_LEN`] is answered so by the host (which
    /// also logs and counts it). The error is returned all the same.
    pub fn reply<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SendError> {
        if self.kind != abi::KIND_REQUEST {
            return Err(SendError::NotARequest);
        }
        self.kind = abi::KIND_MESSAGE;
        let pending = PendingReply { to: self.from, corr: self.corr, text: self.text };
        send_reply(pending, value)
    }

    /// Answers the request being handled with an error: the caller learns
    /// that it failed, and why (a text reason, not a value). The command
    /// line prints it as an error and exits non-zero; a reactor sees it in
    /// [`Payload::error`].
    pub fn reply_error(&mut self, reason: &str) -> Result<(), SendError> {
        if self.kind != abi::KIND_REQUEST {
            return Err(SendError::NotARequest);
        }
        self.kind = abi::KIND_MESSAGE;
        send_error(PendingReply { to: self.from, corr: self.corr, text: self.text }, reason)
    }

    /// Takes over the duty to answer the request being handled, to answer it
    /// later with [`Context::reply_later`] (e.g. after asking another
    /// reactor). `None` if the current message is not an unanswered request.
    pub fn defer_reply(&mut self) -> Option<PendingReply> {
        if self.kind != abi::KIND_REQUEST {
            return None;
        }
        self.kind = abi::KIND_MESSAGE;
        Some(PendingReply { to: self.from, corr: self.corr, text: self.text })
    }

    /// Answers a request taken with [`Context::defer_reply`] (as
    /// [`Context::reply`] does).
    pub fn reply_later<T: Serialize + ?Sized>(&mut self, pending: PendingReply, value: &T) -> Result<(), SendError> {
        send_reply(pending, value)
    }

    /// Answers a request taken with [`Context::defer_reply`] with an error
    /// (as [`Context::reply_error`] does).
    pub fn reply_later_error(&mut self, pending: PendingReply, reason: &str) -> Result<(), SendError> {
        send_error(pending, reason)
    }

    /// Starts a new reactor from `module` with the spawn argument `init`.
    pub fn spawn<T: Serialize + ?Sized>(&mut self, module: ModuleRef<'_>, init: &T) -> Result<Address, SendError> {
        let m = module.encode();
        let i = encode(init, false)?;
        // SAFETY: both slices are live for the call.
        let r = unsafe { sys::spawn(m.as_ptr(), m.len(), i.as_ptr(), i.len()) };
        if r > 0 { Ok(Address(r as u64)) } else { Err(SendError::from_status(r)) }
    }

    /// [`Context::spawn`], the new reactor *durable*: every input it
    /// consumes is journaled (`Durability::Synced`: on disk before what it
    /// sends leaves), so the host can replay it, bring it back after a
    /// crash and restart it after a failure. Refused where the host keeps
    /// no journals.
    pub fn spawn_durable<T: Serialize + ?Sized>(
        &mut self,
        module: ModuleRef<'_>,
        init: &T,
        durability: Durability,
    ) -> Result<Address, SendError> {
        let m = module.encode();
        let i = encode(init, false)?;
        let level = match durability {
            Durability::Written => abi::DURABLE_WRITTEN,
            Durability::Synced => abi::DURABLE_SYNCED,
            Durability::Standby => abi::DURABLE_STANDBY,
        };
        // SAFETY: both slices are live for the call.
        let r = unsafe { sys::spawn_durable(m.as_ptr(), m.len(), i.as_ptr(), i.len(), level) };
        if r > 0 { Ok(Address(r as u64)) } else { Err(SendError::from_status(r)) }
    }

    /// Declares how this reactor supervises the children it spawns with
    /// [`Context::spawn_durable`] (one group, in spawn order), replacing
    /// the node's default for them (one-for-one, resumed, the node's
    /// restart intensity). Past the intensity, the group's members stop
    /// and this reactor fails: its own supervisor takes over, and when it
    /// is restarted, so is its group.
    pub fn supervise(&mut self, spec: Supervision) -> Result<(), SendError> {
        let strategy = match spec.strategy {
            Strategy::OneForOne => abi::STRATEGY_ONE_FOR_ONE,
            Strategy::OneForAll => abi::STRATEGY_ONE_FOR_ALL,
            Strategy::RestForOne => abi::STRATEGY_REST_FOR_ONE,
        };
        let restart = match spec.restart {
            Restart::Resume => abi::RESTART_RESUME,
            Restart::Fresh => abi::RESTART_FRESH,
        };
        let ms = |d: core::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let max = i32::try_from(spec.max_restarts).unwrap_or(i32::MAX);
        let attempts = i32::try_from(spec.attempts).unwrap_or(i32::MAX);
        // SAFETY: plain integers.
        status(unsafe { sys::supervise(strategy, restart, max, ms(spec.within), ms(spec.backoff), attempts) })
    }

    /// Be told (with [`Reactor::on_down`]) when `target`, a reactor on any
    /// node, is gone for good: failed and not restarted, or stopped; at
    /// once if it is not alive now, and when its node is declared down
    /// (reason "node N is down").
    pub fn monitor(&mut self, target: Address) -> Result<(), SendError> {
        Self::watch(target, abi::WATCH_MONITOR)
    }

    /// Undoes [`Context::monitor`].
    pub fn demonitor(&mut self, target: Address) -> Result<(), SendError> {
        Self::watch(target, abi::WATCH_DEMONITOR)
    }

    /// Links this reactor and `target` (on any node) both ways: when one
    /// is gone for good (or the other's node is declared down), the other
    /// fails too (and is restarted if it is supervised), unless it traps
    /// exits ([`Context::trap_exits`]).
    pub fn link(&mut self, target: Address) -> Result<(), SendError> {
        Self::watch(target, abi::WATCH_LINK)
    }

    /// Undoes [`Context::link`].
    pub fn unlink(&mut self, target: Address) -> Result<(), SendError> {
        Self::watch(target, abi::WATCH_UNLINK)
    }

    /// Whether the end of a linked reactor comes as a [`Reactor::on_down`]
    /// call (`true`) instead of failing this one (`false`, the start).
    pub fn trap_exits(&mut self, on: bool) {
        // SAFETY: a plain integer.
        let _ = unsafe { sys::trap_exits(i32::from(on)) };
    }

    fn watch(target: Address, op: i32) -> Result<(), SendError> {
        // SAFETY: plain integers.
        status(unsafe { sys::watch(target.0, op) })
    }

    /// Writes a log line (levels: `abi::LOG_*`).
    pub fn log(&self, level: i32, msg: &str) {
        log(level, msg)
    }

    /// Host-supplied wall-clock time (recordable for replay).
    pub fn now(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }

    /// Host-supplied random bytes (recordable for replay).
    pub fn random_bytes(&self, buf: &mut [u8]) {
        // SAFETY: `buf` is a live, writable slice of our own memory.
        let errno = unsafe { sys::random_get(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(errno, 0, "host random_get failed");
    }

    /// A host-supplied random `u64`.
    pub fn random_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        self.random_bytes(&mut b);
        u64::from_le_bytes(b)
    }
}

/// How durable a reactor spawned with [`Context::spawn_durable`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Journal records handed to the host's OS (survive the host process).
    Written,
    /// Journal records on disk before what a call sends leaves it.
    Synced,
    /// Also held by a standby on another node, which takes the reactor
    /// over when its node goes down (a host in a cluster of three nodes or
    /// more; until a standby holds them, what it sends waits).
    Standby,
}

/// A reactor this one monitors or is linked to is gone for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Down {
    /// The reactor that is gone.
    pub address: Address,
    /// Why: its failure, or why it was stopped.
    pub reason: String,
    /// Whether it came through a link (this reactor traps exits), not a
    /// monitor.
    pub linked: bool,
}

/// Which members of a supervised group restart when one fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The one that failed.
    OneForOne,
    /// All of them.
    OneForAll,
    /// The one that failed and the ones spawned after it.
    RestForOne,
}

/// Where a restarted member starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Its last snapshot and journal: the one that failed is back as it was
    /// just before the message that failed it; one that did not fail, as
    /// it was.
    Resume,
    /// Its spawn, with its init argument again: its state starts over (as
    /// an OTP child's does).
    Fresh,
}

/// How a reactor supervises the children it spawns durable
/// ([`Context::supervise`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Supervision {
    pub strategy: Strategy,
    pub restart: Restart,
    /// Restarts allowed in the group within [`Supervision::within`]; one
    /// more escalates.
    pub max_restarts: u32,
    pub within: core::time::Duration,
    /// The wait before a restart that is not the first in the window,
    /// doubled for each further one.
    pub backoff: core::time::Duration,
    /// How many times in all a message that fails a member is given to it
    /// before it is a dead letter (at least 1).
    pub attempts: u32,
}

impl Default for Supervision {
    /// OTP's default: one-for-one, at most 1 restart in 5 s; resumed;
    /// 10 ms backoff; a failing message is a dead letter at once.
    fn default() -> Self {
        Self {
            strategy: Strategy::OneForOne,
            restart: Restart::Resume,
            max_restarts: 1,
            within: core::time::Duration::from_secs(5),
            backoff: core::time::Duration::from_millis(10),
            attempts: 1,
        }
    }
}

/// Why a blob call did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobError {
    /// No live blob has that tag ([`abi::STATUS_NO_SUCH_BLOB`]).
    NoSuchBlob,
    /// Over [`abi::MAX_BLOB_LEN`] bytes, already holding
    /// [`abi::MAX_HELD_BLOBS`] blobs, or the host cannot issue a tag now
    /// ([`abi::STATUS_LIMIT`]).
    Limit,
    /// A read offset past the end ([`abi::STATUS_BAD_ARGUMENT`]).
    BadArgument,
    /// A status this SDK version does not know.
    Unknown(i64),
}

impl BlobError {
    fn from_status(s: i64) -> Self {
        match i32::try_from(s) {
            Ok(abi::STATUS_NO_SUCH_BLOB) => Self::NoSuchBlob,
            Ok(abi::STATUS_LIMIT) => Self::Limit,
            Ok(abi::STATUS_BAD_ARGUMENT) => Self::BadArgument,
            _ => Self::Unknown(s),
        }
    }

    /// The `abi::STATUS_*` code behind this error.
    pub fn status(&self) -> i64 {
        match self {
            Self::NoSuchBlob => abi::STATUS_NO_SUCH_BLOB as i64,
            Self::Limit => abi::STATUS_LIMIT as i64,
            Self::BadArgument => abi::STATUS_BAD_ARGUMENT as i64,
            Self::Unknown(s) => *s,
        }
    }
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

std::thread_local! {
    /// How many [`Blob`] values hold each tag. Lives in linear memory, so it
    /// survives snapshots together with the values it counts.
    static HOLDS: core::cell::RefCell<alloc::collections::BTreeMap<u64, u32>> =
        const { core::cell::RefCell::new(alloc::collections::BTreeMap::new()) };
}

/// A shared immutable blob this reactor holds: bytes in host memory, one copy
/// however many reactors hold them (a model, reference data), named by a
/// [tag](Blob::tag) that can travel in messages.
///
/// Any number of `Blob` values (clones, or several [`Blob::open`]s of one
/// tag) share one hold; the reactor stops holding the blob when the last of
/// them is dropped or [closed](Blob::close). A `Blob` may live in the
/// reactor's state: the tag is its identity, and a snapshot restores what
/// the reactor holds, so the value stays valid after a restore.
///
/// ```ignore
/// let model = Blob::open(tag)?;           // a tag from a message
/// let mut head = [0u8; 16];
/// model.read(0, &mut head)?;
/// let mine = Blob::create(b"shared bytes")?;
/// mine.give(peer)?;                       // the peer may open it now
/// cx.send(peer, &mine.tag())?;           // and learns its tag
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct Blob {
    tag: u64,
    len: u64,
}

impl Blob {
    fn hold(tag: u64, len: u64) -> Self {
        HOLDS.with(|h| *h.borrow_mut().entry(tag).or_insert(0) += 1);
        Blob { tag, len }
    }

    /// Copies `bytes` into a new blob held by this reactor.
    pub fn create(bytes: &[u8]) -> Result<Self, BlobError> {
        // SAFETY: `bytes` is a live slice of our own memory for the call.
        let r = unsafe { sys::blob_create(bytes.as_ptr(), bytes.len()) };
        if r > 0 { Ok(Self::hold(r as u64, bytes.len() as u64)) } else { Err(BlobError::from_status(r)) }
    }

    /// Starts holding the existing blob `tag` (e.g. from a message or the
    /// init argument).
    pub fn open(tag: u64) -> Result<Self, BlobError> {
        let held = HOLDS.with(|h| h.borrow().contains_key(&tag));
        if !held {
            // SAFETY: no pointers.
            let s = unsafe { sys::blob_open(tag) };
            if s != abi::STATUS_OK {
                return Err(BlobError::from_status(s as i64));
            }
        }
        // SAFETY: no pointers.
        let len = unsafe { sys::blob_len(tag) };
        if len < 0 {
            return Err(BlobError::from_status(len));
        }
        Ok(Self::hold(tag, len as u64))
    }

    /// Lets the reactor `to` (on this node) [`Blob::open`] it: blobs are
    /// capabilities, a tag alone opens nothing. Send it the tag too.
    pub fn give(&self, to: Address) -> Result<(), BlobError> {
        // SAFETY: no pointers.
        let s = unsafe { sys::blob_give(self.tag, to.0) };
        if s == abi::STATUS_OK { Ok(()) } else { Err(BlobError::from_status(s as i64)) }
    }

    /// Its tag: [`give`](Blob::give) the blob and send this to let another
    /// reactor [`Blob::open`] it.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies bytes from `offset` into `buf`; returns how many (fewer than
    /// `buf.len()` only at the end, 0 at `offset == len`).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, BlobError> {
        // SAFETY: `buf` is a live, writable slice of our own memory; the host
        // writes at most `buf.len()` bytes and returns how many.
        let r = unsafe { sys::blob_read(self.tag, offset, buf.as_mut_ptr(), buf.len()) };
        if r >= 0 { Ok(r as usize) } else { Err(BlobError::from_status(r)) }
    }

    /// The whole contents, copied into this reactor's memory.
    pub fn read_all(&self) -> Result<Vec<u8>, BlobError> {
        let mut buf = alloc::vec![0u8; self.len as usize];
        let n = self.read(0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Drops this hold now and reports what the host said (dropping does the
    /// same silently).
    pub fn close(self) -> Result<(), BlobError> {
        let s = self.release();
        core::mem::forget(self);
        if s == abi::STATUS_OK { Ok(()) } else { Err(BlobError::from_status(s as i64)) }
    }

    fn release(&self) -> i32 {
        let last = HOLDS.with(|h| {
            let mut h = h.borrow_mut();
            match h.get_mut(&self.tag) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    h.remove(&self.tag);
                    true
                }
            }
        });
        // SAFETY: no pointers.
        if last { unsafe { sys::blob_close(self.tag) } } else { abi::STATUS_OK }
    }
}

impl Clone for Blob {
    /// Another value sharing the same hold.
    fn clone(&self) -> Self {
        Self::hold(self.tag, self.len)
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Writes a log line through the host (levels: `abi::LOG_*`).
pub fn log(level: i32, msg: &str) {
    // SAFETY: `msg` is a live slice of our own memory for the call.
    unsafe { sys::log(level, msg.as_ptr(), msg.len()) }
}

/// Implementation details used by [`export!`]; not a stable API.
#[doc(hidden)]
pub mod __rt {
    use super::*;
    use core::cell::RefCell;

    std::thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    fn with_inbox<R>(len: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        BUF.with(|b| {
            let mut buf = b.take();
            buf.clear();
            buf.reserve(len as usize);
            // SAFETY: the spare capacity holds at least `len` bytes; the host
            // writes at most `len` and returns how many it wrote.
            let n = unsafe { sys::inbox_read(buf.as_mut_ptr(), len as usize) };
            assert!(n <= len as usize, "host wrote more than asked");
            // SAFETY: the host initialised the first `n` bytes.
            unsafe { buf.set_len(n) };
            let r = f(&buf);
            b.replace(buf);
            r
        })
    }

    fn install_panic_hook() {
        std::panic::set_hook(alloc::boxed::Box::new(|info| {
            let msg = alloc::format!("{info}");
            // SAFETY: `msg` is a live slice of our own memory for the call.
            unsafe { sys::fail(msg.as_ptr(), msg.len()) };
        }));
    }

    fn me() -> Address {
        // SAFETY: no arguments.
        Address(unsafe { sys::self_address() })
    }

    /// `reactor_init` body.
    pub fn init<R: Reactor>(slot: &'static std::thread::LocalKey<RefCell<Option<R>>>, len: u32) -> i32 {
        install_panic_hook();
        let me = me();
        with_inbox(len, |input| {
            let (h, arg) = match abi::BatchReader::new(input).next() {
                Some(Ok(env)) => env,
                other => panic!("host delivered a malformed init envelope: {other:?}"),
            };
            let mut r = R::default();
            let text = h.flags & abi::FLAG_TEXT != 0;
            let mut cx = Context { me, from: Address(h.from), kind: abi::KIND_MESSAGE, corr: 0, text };
            r.start(&mut cx, Payload { bytes: arg, text, error: false });
            slot.with(|s| *s.borrow_mut() = Some(r));
        });
        abi::STATUS_OK
    }

    /// `reactor_receive` body.
    pub fn receive<R: Reactor>(slot: &'static std::thread::LocalKey<RefCell<Option<R>>>, len: u32, count: u32) -> i32 {
        let me = me();
        with_inbox(len, |batch| {
            slot.with(|s| {
                let mut guard = s.borrow_mut();
                let Some(r) = guard.as_mut() else { panic!("message before reactor_init") };
                let mut seen = 0u32;
                for env in abi::BatchReader::new(batch) {
                    let (h, payload) = match env {
                        Ok(x) => x,
                        Err(e) => panic!("host delivered a malformed batch: {e:?}"),
                    };
                    seen += 1;
                    let text = h.flags & abi::FLAG_TEXT != 0;
                    let mut cx = Context { me, from: Address(h.from), kind: h.kind, corr: h.corr, text };
                    if h.kind == abi::KIND_REPLY {
                        r.on_reply(&mut cx, RequestId(h.corr), Payload { bytes: payload, text, error: h.flags & abi::FLAG_ERROR != 0 });
                        continue;
                    }
                    if h.kind == abi::KIND_DOWN {
                        let (linked, reason) = match payload.split_first() {
                            Some((k, rest)) => (*k == abi::DOWN_LINK, String::from_utf8_lossy(rest).into_owned()),
                            None => (false, String::new()),
                        };
                        r.on_down(&mut cx, Down { address: Address(h.from), reason, linked });
                        continue;
                    }
                    match decode::<R::Msg>(payload, text) {
                        Ok(m) => r.react(&mut cx, m),
                        Err(e) => {
                            if cx.is_request() {
                                // The caller waits for an answer: tell it why none will come.
                                let _ = cx.reply_error(&alloc::format!("undecodable request: {e}"));
                            }
                            r.on_undecodable(&mut cx, e)
                        }
                    }
                }
                assert_eq!(seen, count, "batch envelope count mismatch");
            })
        });
        abi::STATUS_OK
    }
}

/// Exports a [`Reactor`] type as this module's reactor: generates the Wasm
/// entry points and the ABI version section.
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        ::std::thread_local! {
            static __REACTOR_STATE: ::core::cell::RefCell<::core::option::Option<$ty>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        #[used]
        #[unsafe(link_section = "reactor.abi")]
        static __REACTOR_ABI_VERSION: [u8; 4] = $crate::abi::ABI_VERSION.to_le_bytes();

        #[unsafe(no_mangle)]
        pub extern "C" fn reactor_init(len: u32) -> i32 {
            $crate::__rt::init::<$ty>(&__REACTOR_STATE, len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn reactor_receive(len: u32, count: u32) -> i32 {
            $crate::__rt::receive::<$ty>(&__REACTOR_STATE, len, count)
        }
    };
}
