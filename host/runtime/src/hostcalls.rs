//! The `reactor` import namespace: every host function a guest may call.
//!
//! Names and signatures come from `guest_sdk::abi`. Every argument is
//! untrusted: pointers and lengths are checked against the caller's own
//! memory (a bad one fails the *calling* reactor with a [`GuestFault`], never
//! the host), sizes against the ABI limits, flags and module references
//! against what the ABI defines (bad ones get a status code back).
//!
//! The calls reach the runtime only through the [`HostContext`] the shard
//! lends the store for each call, and answer with ABI status codes: typed
//! errors from the runtime become statuses here, and only here.
//!
//! No host call blocks the shard thread: WASI's one blocking call,
//! `poll_oneoff` (what `std::thread::sleep` and every wait use), fails the
//! reactor that makes it ([`restrict_wasi`]); output goes to the log
//! (`guest_output`).
//!
//! The `blob_*` calls give reactors shared immutable blobs
//! ([`refs`](crate::refs)): what a reactor holds is `ReactorData::held`, a
//! map from tag to the shared blob, dropped with the reactor.
#![forbid(unsafe_code)]

use crate::refs::RefsError;
use crate::store::{HostContext, ModuleRef, ReactorData, SpawnRefusal};
use crate::journal::Level;
use crate::tree::{GroupSpec, RestartFrom, Strategy, TreeEvent, WatchOp};
use journal_format::{Call, Entry};
use guest_sdk::abi;
use reactor_types::{Address, Envelope, ModuleHash, SendError};
use wasmtime::{Caller, Linker, Memory};

/// A guest passed the host something it cannot act on: the calling reactor
/// fails with this as its reason.
#[derive(Debug, thiserror::Error)]
#[error("`{call}`: {detail}")]
pub struct GuestFault {
    /// The host call.
    pub call: &'static str,
    /// What was wrong.
    pub detail: String,
}

fn fault(call: &'static str, detail: String) -> wasmtime::Error {
    wasmtime::Error::new(GuestFault { call, detail })
}

/// Longest log line or failure note kept (longer ones are cut).
const MAX_TEXT: usize = 4096;

/// In a replay, the recorded result of `call`, a call whose result is one
/// number; `None` when the reactor is not replayed (the call runs).
fn replayed<H: HostContext>(data: &mut ReactorData<H>, call: Call) -> wasmtime::Result<Option<i64>> {
    let Some(tap) = data.tap() else { return Ok(None) };
    match tap.next(call)? {
        None => Ok(None),
        Some(Entry::Value { value, .. }) => Ok(Some(value)),
        Some(e) => {
            let problem = format!("`{}` has an unreadable recorded result {e:?}", call.name());
            Err(tap.diverge(problem).into())
        }
    }
}

/// Records the result of `call` on a journaled reactor's tape.
#[inline]
fn record<H: HostContext>(data: &mut ReactorData<H>, call: Call, value: i64) {
    if let Some(tap) = data.tap() {
        tap.record(&Entry::Value { call, value });
    }
}

/// Digests what `call` does to the world on a journaled or replayed
/// reactor.
#[inline]
fn output<H: HostContext>(data: &mut ReactorData<H>, call: Call, subject: u64, number: u64, bytes: &[u8]) {
    if let Some(tap) = data.tap() {
        tap.output(call, subject, number, bytes);
    }
}

/// The `[ptr, ptr+len)` range of guest memory, or a fault naming `call`.
fn range(mem_len: usize, call: &'static str, ptr: u32, len: u32) -> wasmtime::Result<std::ops::Range<usize>> {
    let start = ptr as usize;
    match start.checked_add(len as usize) {
        Some(end) if end <= mem_len => Ok(start..end),
        _ => Err(fault(
            call,
            format!("buffer at {ptr:#x} of {len} bytes lies outside linear memory of {mem_len} bytes"),
        )),
    }
}

/// Copies `[ptr, ptr+len)` out of the caller's memory.
fn read_guest<H: HostContext>(
    caller: &mut Caller<'_, ReactorData<H>>,
    call: &'static str,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<Vec<u8>> {
    let memory = memory_of(caller, call)?;
    let data = memory.data(&*caller);
    let r = range(data.len(), call, ptr, len)?;
    Ok(data[r].to_vec())
}

/// The flags of a send or a request: [`abi::FLAG_TEXT`] at most.
fn check_flags(flags: u32) -> Option<u8> {
    u8::try_from(flags).ok().filter(|f| f & !abi::FLAG_TEXT == 0)
}

/// The flags of a reply: [`abi::FLAG_TEXT`] and [`abi::FLAG_ERROR`].
fn check_reply_flags(flags: u32) -> Option<u8> {
    u8::try_from(flags).ok().filter(|f| f & !(abi::FLAG_TEXT | abi::FLAG_ERROR) == 0)
}

/// A send or request over the limit of a message: refused (counted and
/// logged).
fn too_large<H: HostContext>(data: &mut ReactorData<H>, call: &'static str, to: u64, kind: u8) -> wasmtime::Result<()> {
    let from = data.address();
    lent(data, call)?.failed_output(from, Address(to), kind, abi::STATUS_TOO_LARGE);
    Ok(())
}

/// The ABI status of a routing result.
fn send_status(result: Result<(), SendError>) -> i32 {
    match result {
        Ok(()) => abi::STATUS_OK,
        Err(SendError::InboxFull(_)) => abi::STATUS_INBOX_FULL,
        Err(SendError::NoSuchReactor(_)) => abi::STATUS_NO_SUCH_REACTOR,
        Err(SendError::NoSuchRequest(_)) => abi::STATUS_BAD_ARGUMENT,
        Err(SendError::TooLarge(_)) => abi::STATUS_TOO_LARGE,
        Err(SendError::Tags(_) | SendError::TooManyRequests(_)) => abi::STATUS_LIMIT,
        Err(SendError::OverBudget(_)) => abi::STATUS_INBOX_FULL,
        Err(SendError::ShardDown(_)) => abi::STATUS_NO_SUCH_REACTOR,
    }
}

/// A module reference as the ABI encodes it (`abi::MODULE_REF_*`).
fn module_ref(bytes: &[u8]) -> Option<ModuleRef<'_>> {
    match bytes.split_first() {
        Some((&abi::MODULE_REF_SELF, [])) => Some(ModuleRef::Own),
        Some((&abi::MODULE_REF_HASH, h)) => Some(ModuleRef::Hash(ModuleHash(h.try_into().ok()?))),
        Some((&abi::MODULE_REF_NAME, n)) => std::str::from_utf8(n).ok().map(ModuleRef::Name),
        _ => None,
    }
}

/// Copies `[ptr, ptr+len)` out of the caller's memory.
fn memory_of<H: HostContext>(caller: &Caller<'_, ReactorData<H>>, call: &'static str) -> wasmtime::Result<Memory> {
    caller.data().memory().ok_or_else(|| fault(call, "called before the reactor was instantiated".into()))
}

/// The host context lent for this call: every call through which a reactor
/// acts on others goes through it. Refused once a page of its lazily
/// restored memory was found damaged (the call fails the reactor, whose
/// failure then names the page).
fn lent<'a, H: HostContext>(data: &'a mut ReactorData<H>, call: &'static str) -> wasmtime::Result<&'a mut H> {
    intact(data, call)?;
    data.host().ok_or_else(|| fault(call, "called outside a call into the reactor".into()))
}

/// Refuses the call once a page of the reactor's lazily restored memory was
/// found damaged: it may not act on what it read.
#[inline]
fn intact<H: HostContext>(data: &ReactorData<H>, call: &'static str) -> wasmtime::Result<()> {
    match data.damaged() {
        Some((memory_page, _)) => Err(fault(call, format!("refused: its restored memory page {memory_page} is damaged"))),
        None => Ok(()),
    }
}

/// WASI's module name.
const WASI: &str = "wasi_snapshot_preview1";

/// Replaces the WASI calls that could block the shard thread: waiting
/// (`poll_oneoff`, what sleeping and every wait of std use) fails the
/// reactor with a [`GuestFault`] that says why. Must run after WASI is
/// added to `linker`.
pub(crate) fn restrict_wasi<H: HostContext>(linker: &mut Linker<ReactorData<H>>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(WASI, "poll_oneoff", |_: Caller<'_, ReactorData<H>>, _: i32, _: i32, _: i32, _: i32| {
        Err::<i32, _>(fault(
            "poll_oneoff",
            "a reactor may not sleep or wait: it would stall every reactor of its shard (send yourself a \
             message to do something later)"
                .into(),
        ))
    })?;
    linker.func_wrap(WASI, "clock_time_get", |mut caller: Caller<'_, ReactorData<H>>, id: i32, _precision: i64, out: i32| {
        clock_time_get(&mut caller, id as u32, out as u32)
    })?;
    linker.func_wrap(WASI, "random_get", |mut caller: Caller<'_, ReactorData<H>>, buf: i32, len: i32| {
        random_get(&mut caller, buf as u32, len as u32)
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// WASI's errnos the clock and randomness calls return.
const ERRNO_BADF: u16 = 8;
const ERRNO_INVAL: u16 = 28;
const ERRNO_IO: u16 = 29;

/// The largest `random_get` served (WASI's own default limit).
const MAX_RANDOM: u32 = 64 << 20;

/// The process's monotonic clock origin.
fn monotonic_origin() -> std::time::Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// A clock reading: realtime (0) and monotonic (1) in nanoseconds; the CPU
/// time clocks (2, 3) are not offered (`EBADF`, as wasmtime-wasi), other ids
/// are invalid.
fn read_clock(id: u32) -> (u16, u64) {
    match id {
        0 => match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => (0, d.as_nanos().min(u128::from(u64::MAX)) as u64),
            Err(_) => (ERRNO_INVAL, 0),
        },
        // Offset by a second so no reading is zero.
        1 => (0, monotonic_origin().elapsed().as_nanos() as u64 + 1_000_000_000),
        2 | 3 => (ERRNO_BADF, 0),
        _ => (ERRNO_INVAL, 0),
    }
}

/// WASI `clock_time_get`: read from the host's clocks, recorded on a
/// journaled reactor's tape; a replay reads the recording.
fn clock_time_get<H: HostContext>(caller: &mut Caller<'_, ReactorData<H>>, id: u32, out: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "clock_time_get";
    let memory = memory_of(caller, CALL)?;
    let (mem, data) = memory.data_and_store_mut(caller);
    let r = range(mem.len(), CALL, out, 8)?;
    let (errno, time) = match data.tap() {
        Some(tap) if tap.is_replay() => match tap.next(Call::Clock)? {
            Some(Entry::Clock { id: rid, errno, time }) if rid == id => (errno, time),
            e => {
                let problem = format!("the reactor read clock {id} where the recording has {e:?}");
                return Err(tap.diverge(problem).into());
            }
        },
        tap => {
            let (errno, time) = read_clock(id);
            if let Some(tap) = tap {
                tap.record(&Entry::Clock { id, errno, time });
            }
            (errno, time)
        }
    };
    if errno == 0 {
        mem[r].copy_from_slice(&time.to_le_bytes());
    }
    Ok(i32::from(errno))
}

/// WASI `random_get`: the operating system's randomness, recorded on a
/// journaled reactor's tape; a replay gives the recorded bytes.
fn random_get<H: HostContext>(caller: &mut Caller<'_, ReactorData<H>>, buf: u32, len: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "random_get";
    if len > MAX_RANDOM {
        return Err(fault(CALL, format!("asked for {len} random bytes; at most {MAX_RANDOM} are given at once")));
    }
    let memory = memory_of(caller, CALL)?;
    let (mem, data) = memory.data_and_store_mut(caller);
    let r = range(mem.len(), CALL, buf, len)?;
    match data.tap() {
        Some(tap) if tap.is_replay() => match tap.next(Call::Random)? {
            Some(Entry::Random { errno: 0, bytes }) if bytes.len() == r.len() => {
                mem[r].copy_from_slice(bytes);
                Ok(0)
            }
            Some(Entry::Random { errno, bytes }) if errno != 0 && bytes.is_empty() => Ok(i32::from(errno)),
            e => {
                let problem = format!("the reactor asked for {len} random bytes where the recording has {e:?}");
                Err(tap.diverge(problem).into())
            }
        },
        tap => {
            let errno = if getrandom::fill(&mut mem[r.clone()]).is_ok() { 0 } else { ERRNO_IO };
            if let Some(tap) = tap {
                let bytes = if errno == 0 { &mem[r] } else { &[][..] };
                tap.record(&Entry::Random { errno, bytes });
            }
            Ok(i32::from(errno))
        }
    }
}

/// Adds every `reactor::*` function to `linker`, for stores whose host
/// calls reach an `H`.
pub(crate) fn register<H: HostContext>(linker: &mut Linker<ReactorData<H>>) -> wasmtime::Result<()> {
    let m = abi::IMPORT_MODULE;

    linker.func_wrap(m, abi::IMPORT_INBOX_READ, |mut caller: Caller<'_, ReactorData<H>>, ptr: u32, len: u32| {
        let memory = memory_of(&caller, abi::IMPORT_INBOX_READ)?;
        let (mem, data) = memory.data_and_store_mut(&mut caller);
        // A bad buffer fails the reactor: that the input counts as read
        // then does not matter.
        let input = lent(data, abi::IMPORT_INBOX_READ)?.take_input(len as usize);
        let r = range(mem.len(), abi::IMPORT_INBOX_READ, ptr, input.len() as u32)?;
        mem[r].copy_from_slice(input);
        let n = input.len();
        Ok(n as u32)
    })?;

    linker.func_wrap(
        m,
        abi::IMPORT_SEND,
        |mut caller: Caller<'_, ReactorData<H>>, to: u64, ptr: u32, len: u32, flags: u32| {
            let Some(flags) = check_flags(flags) else { return Ok(abi::STATUS_BAD_ARGUMENT) };
            if len > abi::MAX_PAYLOAD_LEN {
                too_large(caller.data_mut(), abi::IMPORT_SEND, to, abi::KIND_MESSAGE)?;
                return Ok(abi::STATUS_TOO_LARGE);
            }
            let payload = read_guest(&mut caller, abi::IMPORT_SEND, ptr, len)?;
            let data = caller.data_mut();
            output(data, Call::Send, to, u64::from(flags), &payload);
            if let Some(v) = replayed(data, Call::Send)? {
                return Ok(v as i32);
            }
            let from = data.address();
            let env = Envelope { kind: abi::KIND_MESSAGE, flags, from, corr: 0, payload };
            let host = lent(data, abi::IMPORT_SEND)?;
            let status = send_status(host.route(Address(to), env));
            if status != abi::STATUS_OK {
                host.failed_output(from, Address(to), abi::KIND_MESSAGE, status);
            }
            record(data, Call::Send, i64::from(status));
            Ok(status)
        },
    )?;

    linker.func_wrap(
        m,
        abi::IMPORT_REQUEST,
        |mut caller: Caller<'_, ReactorData<H>>, to: u64, ptr: u32, len: u32, flags: u32| {
            let Some(flags) = check_flags(flags) else { return Ok(abi::STATUS_BAD_ARGUMENT as i64) };
            if len > abi::MAX_PAYLOAD_LEN {
                too_large(caller.data_mut(), abi::IMPORT_REQUEST, to, abi::KIND_REQUEST)?;
                return Ok(abi::STATUS_TOO_LARGE as i64);
            }
            let payload = read_guest(&mut caller, abi::IMPORT_REQUEST, ptr, len)?;
            let data = caller.data_mut();
            output(data, Call::Request, to, u64::from(flags), &payload);
            let from = data.address();
            if let Some(v) = replayed(data, Call::Request)? {
                if v > 0 {
                    lent(data, abi::IMPORT_REQUEST)?.replayed_request(v as u64, from, Address(to));
                }
                return Ok(v);
            }
            let host = lent(data, abi::IMPORT_REQUEST)?;
            let result = match host.next_corr() {
                Ok(corr) => {
                    let env = Envelope { kind: abi::KIND_REQUEST, flags, from, corr, payload };
                    match host.route(Address(to), env) {
                        Ok(()) => corr as i64,
                        Err(e) => {
                            let status = send_status(Err(e));
                            host.failed_output(from, Address(to), abi::KIND_REQUEST, status);
                            status as i64
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(reactor = %from, "cannot issue a correlation id: {e}");
                    abi::STATUS_LIMIT as i64
                }
            };
            record(data, Call::Request, result);
            Ok(result)
        },
    )?;

    linker.func_wrap(
        m,
        abi::IMPORT_REPLY,
        |mut caller: Caller<'_, ReactorData<H>>, to: u64, corr: u64, ptr: u32, len: u32, flags: u32| {
            let Some(mut flags) = check_reply_flags(flags) else { return Ok(abi::STATUS_BAD_ARGUMENT) };
            let too_large = len > abi::MAX_PAYLOAD_LEN;
            let payload = if too_large {
                // The caller would wait for an answer that never comes: the
                // host answers for the reactor, with an error (the reactor
                // is told its reply was too large all the same).
                flags |= abi::FLAG_ERROR;
                format!("the reply ({len} bytes) is over the limit of a message ({} bytes)", abi::MAX_PAYLOAD_LEN).into_bytes()
            } else {
                read_guest(&mut caller, abi::IMPORT_REPLY, ptr, len)?
            };
            let data = caller.data_mut();
            output(data, Call::Reply, to, corr ^ u64::from(flags) << 56, &payload);
            let from = data.address();
            if let Some(v) = replayed(data, Call::Reply)? {
                let env = Envelope { kind: abi::KIND_REPLY, flags, from, corr, payload };
                if let Some(tap) = data.tap() {
                    tap.replayed_reply(to, env);
                }
                return Ok(v as i32);
            }
            let env = Envelope { kind: abi::KIND_REPLY, flags, from, corr, payload };
            let host = lent(data, abi::IMPORT_REPLY)?;
            if too_large {
                tracing::warn!(reactor = %from, to = %Address(to), "a reply of {len} bytes is over the limit of a message: the caller is answered with an error");
            }
            let status = match host.route(Address(to), env) {
                Ok(()) if too_large => abi::STATUS_TOO_LARGE,
                r => send_status(r),
            };
            if status != abi::STATUS_OK {
                host.failed_output(from, Address(to), abi::KIND_REPLY, status);
            }
            record(data, Call::Reply, i64::from(status));
            Ok(status)
        },
    )?;

    linker.func_wrap(
        m,
        abi::IMPORT_SPAWN,
        |mut caller: Caller<'_, ReactorData<H>>, mptr: u32, mlen: u32, iptr: u32, ilen: u32| {
            spawn(&mut caller, (mptr, mlen), (iptr, ilen), None)
        },
    )?;

    linker.func_wrap(
        m,
        abi::IMPORT_SPAWN_DURABLE,
        |mut caller: Caller<'_, ReactorData<H>>, mptr: u32, mlen: u32, iptr: u32, ilen: u32, level: i32| {
            let level = match level {
                abi::DURABLE_WRITTEN => Level::Written,
                abi::DURABLE_SYNCED => Level::Synced,
                abi::DURABLE_STANDBY => Level::Standby,
                _ => return Ok(abi::STATUS_BAD_ARGUMENT as i64),
            };
            spawn(&mut caller, (mptr, mlen), (iptr, ilen), Some(level))
        },
    )?;

    linker.func_wrap(m, abi::IMPORT_SELF_ADDRESS, |caller: Caller<'_, ReactorData<H>>| caller.data().address().0)?;

    linker.func_wrap(m, abi::IMPORT_SET_AFFINITY, |mut caller: Caller<'_, ReactorData<H>>, key: u64| {
        lent(caller.data_mut(), abi::IMPORT_SET_AFFINITY)?.set_affinity(key);
        Ok(abi::STATUS_OK)
    })?;

    linker.func_wrap(m, abi::IMPORT_MOVE_NEAR, |mut caller: Caller<'_, ReactorData<H>>, peer: u64| {
        let peer = Address(peer);
        if !peer.is_reactor() {
            return Ok(abi::STATUS_BAD_ARGUMENT);
        }
        let me = caller.data().address();
        lent(caller.data_mut(), abi::IMPORT_MOVE_NEAR)?.move_near(me, peer);
        Ok(abi::STATUS_OK)
    })?;

    linker.func_wrap(
        m,
        abi::IMPORT_SUPERVISE,
        |mut caller: Caller<'_, ReactorData<H>>, strategy: i32, restart: i32, max: i32, within: i64, backoff: i64, attempts: i32| {
            let data = caller.data_mut();
            let args = [strategy as i64, restart as i64, max as i64, within, backoff, attempts as i64];
            let bytes: Vec<u8> = args.iter().flat_map(|a| a.to_le_bytes()).collect();
            output(data, Call::Supervise, 0, 0, &bytes);
            if let Some(v) = replayed(data, Call::Supervise)? {
                return Ok(v as i32);
            }
            let status = match group_spec(strategy, restart, max, within, backoff, attempts) {
                None => abi::STATUS_BAD_ARGUMENT,
                Some(spec) => {
                    let parent = data.address();
                    lent(data, abi::IMPORT_SUPERVISE)?.tree(TreeEvent::Supervise { parent, spec })
                }
            };
            record(data, Call::Supervise, i64::from(status));
            Ok(status)
        },
    )?;

    linker.func_wrap(m, abi::IMPORT_WATCH, |mut caller: Caller<'_, ReactorData<H>>, target: u64, op: i32| {
        let data = caller.data_mut();
        output(data, Call::Watch, target, op as u64, &[]);
        if let Some(v) = replayed(data, Call::Watch)? {
            return Ok(v as i32);
        }
        let me = data.address();
        let op = match op {
            abi::WATCH_MONITOR => Some(WatchOp::Monitor),
            abi::WATCH_DEMONITOR => Some(WatchOp::Demonitor),
            abi::WATCH_LINK => Some(WatchOp::Link),
            abi::WATCH_UNLINK => Some(WatchOp::Unlink),
            _ => None,
        };
        let target = Address(target);
        let status = match op {
            Some(op) if target.is_reactor() && target != me => lent(data, abi::IMPORT_WATCH)?.tree(TreeEvent::Watch { me, target, op }),
            _ => abi::STATUS_BAD_ARGUMENT,
        };
        record(data, Call::Watch, i64::from(status));
        Ok(status)
    })?;

    linker.func_wrap(m, abi::IMPORT_TRAP_EXITS, |mut caller: Caller<'_, ReactorData<H>>, on: i32| {
        let data = caller.data_mut();
        output(data, Call::TrapExits, 0, u64::from(on != 0), &[]);
        if let Some(v) = replayed(data, Call::TrapExits)? {
            return Ok(v as i32);
        }
        let me = data.address();
        let status = lent(data, abi::IMPORT_TRAP_EXITS)?.tree(TreeEvent::TrapExits { me, on: on != 0 });
        record(data, Call::TrapExits, i64::from(status));
        Ok(status)
    })?;

    linker.func_wrap(m, abi::IMPORT_LOG, |mut caller: Caller<'_, ReactorData<H>>, level: i32, ptr: u32, len: u32| {
        intact(caller.data(), abi::IMPORT_LOG)?;
        let text = read_guest(&mut caller, abi::IMPORT_LOG, ptr, len.min(MAX_TEXT as u32))?;
        // The full range must still be valid even though only a prefix is kept.
        let memory = memory_of(&caller, abi::IMPORT_LOG)?;
        range(memory.data_size(&caller), abi::IMPORT_LOG, ptr, len)?;
        let text = String::from_utf8_lossy(&text);
        let who = caller.data().address();
        match level {
            abi::LOG_ERROR => tracing::error!(reactor = %who, "{text}"),
            abi::LOG_WARN => tracing::warn!(reactor = %who, "{text}"),
            abi::LOG_INFO => tracing::info!(reactor = %who, "{text}"),
            abi::LOG_DEBUG => tracing::debug!(reactor = %who, "{text}"),
            _ => tracing::trace!(reactor = %who, "{text}"),
        }
        Ok(())
    })?;

    register_blobs(linker)?;

    linker.func_wrap(m, abi::IMPORT_FAIL, |mut caller: Caller<'_, ReactorData<H>>, ptr: u32, len: u32| {
        let text = read_guest(&mut caller, abi::IMPORT_FAIL, ptr, len.min(MAX_TEXT as u32))?;
        caller.data_mut().set_fail_note(String::from_utf8_lossy(&text).into_owned());
        Ok(())
    })?;

    Ok(())
}

/// The arguments of `supervise` as a group's spec, if they make one.
fn group_spec(strategy: i32, restart: i32, max: i32, within_ms: i64, backoff_ms: i64, attempts: i32) -> Option<GroupSpec> {
    let strategy = match strategy {
        abi::STRATEGY_ONE_FOR_ONE => Strategy::OneForOne,
        abi::STRATEGY_ONE_FOR_ALL => Strategy::OneForAll,
        abi::STRATEGY_REST_FOR_ONE => Strategy::RestForOne,
        _ => return None,
    };
    let restart = match restart {
        abi::RESTART_RESUME => RestartFrom::Resume,
        abi::RESTART_FRESH => RestartFrom::Fresh,
        _ => return None,
    };
    let ms = |v: i64| u64::try_from(v).ok().map(std::time::Duration::from_millis);
    Some(GroupSpec {
        strategy,
        restart,
        max_restarts: u32::try_from(max).ok()?,
        within: ms(within_ms)?,
        // Over a minute is no backoff anyone means (doubled per restart).
        backoff: ms(backoff_ms)?.min(std::time::Duration::from_secs(60)),
        attempts: u32::try_from(attempts).ok().filter(|a| *a >= 1)?,
    })
}

/// `spawn` and `spawn_durable`: a module reference and an init payload in
/// the caller's memory; the new reactor's address or a status. Recorded on
/// a journaled caller's tape (a replay spawns nothing).
fn spawn<H: HostContext>(
    caller: &mut Caller<'_, ReactorData<H>>,
    (mptr, mlen): (u32, u32),
    (iptr, ilen): (u32, u32),
    journal: Option<Level>,
) -> wasmtime::Result<i64> {
    if ilen > abi::MAX_PAYLOAD_LEN {
        return Ok(abi::STATUS_TOO_LARGE as i64);
    }
    if mlen > 1 + 4096 {
        return Ok(abi::STATUS_BAD_ARGUMENT as i64);
    }
    let mref = read_guest(caller, abi::IMPORT_SPAWN, mptr, mlen)?;
    let init = read_guest(caller, abi::IMPORT_SPAWN, iptr, ilen)?;
    let Some(module) = module_ref(&mref) else { return Ok(abi::STATUS_BAD_ARGUMENT as i64) };
    let data = caller.data_mut();
    output(data, Call::Spawn, 0, mref.len() as u64, &mref);
    output(data, Call::Spawn, 1 + journal.map_or(0, |l| l as u64 + 1), init.len() as u64, &init);
    if let Some(v) = replayed(data, Call::Spawn)? {
        return Ok(v);
    }
    let parent = data.address();
    let result = match lent(data, abi::IMPORT_SPAWN)?.spawn(parent, module, init, journal) {
        Ok(addr) => addr.0 as i64,
        Err(SpawnRefusal::NoSuchModule) => abi::STATUS_NO_SUCH_MODULE as i64,
        Err(SpawnRefusal::Refused(_)) => abi::STATUS_SPAWN_REFUSED as i64,
    };
    record(data, Call::Spawn, result);
    Ok(result)
}

/// The `blob_*` calls (see `abi`). On a journaled reactor each call's
/// result is recorded (blobs are shared state: what a call finds depends on
/// the world); a replay answers every blob call from the recording and
/// touches no blob.
fn register_blobs<H: HostContext>(linker: &mut Linker<ReactorData<H>>) -> wasmtime::Result<()> {
    let m = abi::IMPORT_MODULE;
    let max_held = abi::MAX_HELD_BLOBS as usize;

    linker.func_wrap(m, abi::IMPORT_BLOB_CREATE, move |mut caller: Caller<'_, ReactorData<H>>, ptr: u32, len: u32| {
        if let Some(v) = replayed(caller.data_mut(), Call::BlobCreate)? {
            return Ok(v);
        }
        let v = blob_create(&mut caller, ptr, len, max_held)?;
        record(caller.data_mut(), Call::BlobCreate, v);
        Ok(v)
    })?;

    linker.func_wrap(m, abi::IMPORT_BLOB_OPEN, move |mut caller: Caller<'_, ReactorData<H>>, tag: u64| {
        let data = caller.data_mut();
        if let Some(v) = replayed(data, Call::BlobOpen)? {
            return Ok(v as i32);
        }
        let v = blob_open(data, tag, max_held)?;
        record(data, Call::BlobOpen, i64::from(v));
        Ok(v)
    })?;

    linker.func_wrap(m, abi::IMPORT_BLOB_LEN, |mut caller: Caller<'_, ReactorData<H>>, tag: u64| {
        let data = caller.data_mut();
        if let Some(v) = replayed(data, Call::BlobLen)? {
            return Ok(v);
        }
        let v = data.held().get(&tag).map_or(abi::STATUS_NO_SUCH_BLOB as i64, |b| b.len() as i64);
        record(data, Call::BlobLen, v);
        Ok(v)
    })?;

    linker.func_wrap(
        m,
        abi::IMPORT_BLOB_READ,
        |mut caller: Caller<'_, ReactorData<H>>, tag: u64, offset: u64, ptr: u32, len: u32| {
            let memory = memory_of(&caller, abi::IMPORT_BLOB_READ)?;
            let (mem, data) = memory.data_and_store_mut(&mut caller);
            let r = range(mem.len(), abi::IMPORT_BLOB_READ, ptr, len)?;
            if let Some(tap) = data.tap() {
                match tap.next(Call::BlobRead)? {
                    None => {}
                    Some(Entry::BlobRead { result, bytes }) if bytes.len() <= r.len() => {
                        mem[r.start..r.start + bytes.len()].copy_from_slice(bytes);
                        return Ok(result);
                    }
                    Some(e) => {
                        let problem = format!("`blob_read` of up to {len} bytes where the recording has {e:?}");
                        return Err(tap.diverge(problem).into());
                    }
                }
            }
            let result = match data.held().get(&tag) {
                None => abi::STATUS_NO_SUCH_BLOB as i64,
                Some(blob) => match usize::try_from(offset).ok().and_then(|o| blob.bytes().get(o..)) {
                    None => abi::STATUS_BAD_ARGUMENT as i64,
                    Some(rest) => {
                        let n = rest.len().min(r.len());
                        mem[r.start..r.start + n].copy_from_slice(&rest[..n]);
                        n as i64
                    }
                },
            };
            if let Some(tap) = data.tap() {
                let bytes = if result >= 0 { &mem[r.start..r.start + result as usize] } else { &[][..] };
                tap.record(&Entry::BlobRead { result, bytes });
            }
            Ok(result)
        },
    )?;

    linker.func_wrap(m, abi::IMPORT_BLOB_GIVE, |mut caller: Caller<'_, ReactorData<H>>, tag: u64, to: u64| {
        intact(caller.data(), abi::IMPORT_BLOB_GIVE)?;
        let data = caller.data_mut();
        output(data, Call::BlobGive, to, tag, &[]);
        if let Some(v) = replayed(data, Call::BlobGive)? {
            return Ok(v as i32);
        }
        let v = match data.held().get(&tag) {
            None => abi::STATUS_NO_SUCH_BLOB,
            Some(blob) if blob.grant(Address(to)) => abi::STATUS_OK,
            Some(_) => abi::STATUS_LIMIT,
        };
        record(data, Call::BlobGive, i64::from(v));
        Ok(v)
    })?;

    linker.func_wrap(m, abi::IMPORT_BLOB_CLOSE, |mut caller: Caller<'_, ReactorData<H>>, tag: u64| {
        let data = caller.data_mut();
        if let Some(v) = replayed(data, Call::BlobClose)? {
            return Ok(v as i32);
        }
        let v = if data.release(tag) { abi::STATUS_OK } else { abi::STATUS_NO_SUCH_BLOB };
        record(data, Call::BlobClose, i64::from(v));
        Ok(v)
    })?;

    Ok(())
}

/// `blob_create` on the live blob table.
fn blob_create<H: HostContext>(caller: &mut Caller<'_, ReactorData<H>>, ptr: u32, len: u32, max_held: usize) -> wasmtime::Result<i64> {
    if len > abi::MAX_BLOB_LEN || caller.data().held().len() >= max_held {
        return Ok(abi::STATUS_LIMIT as i64);
    }
    let memory = memory_of(caller, abi::IMPORT_BLOB_CREATE)?;
    let (mem, data) = memory.data_and_store_mut(caller);
    let r = range(mem.len(), abi::IMPORT_BLOB_CREATE, ptr, len)?;
    let bytes: Box<[u8]> = mem[r].into();
    let creator = data.address();
    let account = data.limiter().account();
    if account.used().saturating_add(bytes.len()) > account.limit() {
        return Ok(abi::STATUS_LIMIT as i64);
    }
    match lent(data, abi::IMPORT_BLOB_CREATE)?.refs().create_blob(bytes) {
        Ok(blob) => {
            blob.grant(creator);
            let tag = blob.tag();
            Ok(if data.hold(blob) { tag as i64 } else { abi::STATUS_LIMIT as i64 })
        }
        Err(RefsError::OverBudget(_)) => Ok(abi::STATUS_LIMIT as i64),
        Err(e) => {
            tracing::error!(reactor = %creator, "cannot create a blob: {e}");
            Ok(abi::STATUS_LIMIT as i64)
        }
    }
}

/// `blob_open` on the live blob table.
fn blob_open<H: HostContext>(data: &mut ReactorData<H>, tag: u64, max_held: usize) -> wasmtime::Result<i32> {
    if data.held().contains_key(&tag) {
        return Ok(abi::STATUS_OK);
    }
    if data.held().len() >= max_held {
        return Ok(abi::STATUS_LIMIT);
    }
    let who = data.address();
    let Some(blob) = lent(data, abi::IMPORT_BLOB_OPEN)?.refs().open_blob(tag, who) else {
        return Ok(abi::STATUS_NO_SUCH_BLOB);
    };
    Ok(if data.hold(blob) { abi::STATUS_OK } else { abi::STATUS_LIMIT })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_rejects_overflow_and_out_of_bounds() {
        assert_eq!(range(100, "t", 10, 90).unwrap(), 10..100);
        assert!(range(100, "t", 10, 91).is_err());
        assert!(range(100, "t", u32::MAX, u32::MAX).is_err());
        assert!(range(0, "t", 0, 0).is_ok());
    }

    #[test]
    fn module_references_decode_as_the_abi_says() {
        assert_eq!(module_ref(&[abi::MODULE_REF_SELF]), Some(ModuleRef::Own));
        assert_eq!(module_ref(&[abi::MODULE_REF_SELF, 0]), None);
        let mut h = vec![abi::MODULE_REF_HASH];
        h.extend([7u8; 32]);
        assert_eq!(module_ref(&h), Some(ModuleRef::Hash(ModuleHash([7; 32]))));
        assert_eq!(module_ref(&h[..20]), None);
        assert_eq!(module_ref(b"\x02kv"), Some(ModuleRef::Name("kv")));
        assert_eq!(module_ref(&[abi::MODULE_REF_NAME, 0xff]), None);
        assert_eq!(module_ref(&[9]), None);
        assert_eq!(module_ref(&[]), None);
    }

    #[test]
    fn routing_errors_become_their_abi_statuses() {
        let a = Address(5);
        assert_eq!(send_status(Ok(())), abi::STATUS_OK);
        assert_eq!(send_status(Err(SendError::InboxFull(a))), abi::STATUS_INBOX_FULL);
        assert_eq!(send_status(Err(SendError::NoSuchReactor(a))), abi::STATUS_NO_SUCH_REACTOR);
        assert_eq!(send_status(Err(SendError::NoSuchRequest(1))), abi::STATUS_BAD_ARGUMENT);
        assert_eq!(send_status(Err(SendError::TooLarge(1))), abi::STATUS_TOO_LARGE);
    }

    #[test]
    fn flags_outside_the_abi_are_refused() {
        assert_eq!(check_flags(0), Some(0));
        assert_eq!(check_flags(abi::FLAG_TEXT as u32), Some(abi::FLAG_TEXT));
        assert_eq!(check_flags(2), None);
        assert_eq!(check_flags(0x100), None);
    }
}
