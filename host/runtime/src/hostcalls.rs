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

fn check_flags(flags: u32) -> Option<u8> {
    u8::try_from(flags).ok().filter(|f| f & !abi::FLAG_TEXT == 0)
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
    linker.allow_shadowing(false);
    Ok(())
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
                return Ok(abi::STATUS_TOO_LARGE);
            }
            let payload = read_guest(&mut caller, abi::IMPORT_SEND, ptr, len)?;
            let from = caller.data().address();
            let env = Envelope { kind: abi::KIND_MESSAGE, flags, from, corr: 0, payload };
            Ok(send_status(lent(caller.data_mut(), abi::IMPORT_SEND)?.route(Address(to), env)))
        },
    )?;

    linker.func_wrap(
        m,
        abi::IMPORT_REQUEST,
        |mut caller: Caller<'_, ReactorData<H>>, to: u64, ptr: u32, len: u32, flags: u32| {
            let Some(flags) = check_flags(flags) else { return Ok(abi::STATUS_BAD_ARGUMENT as i64) };
            if len > abi::MAX_PAYLOAD_LEN {
                return Ok(abi::STATUS_TOO_LARGE as i64);
            }
            let payload = read_guest(&mut caller, abi::IMPORT_REQUEST, ptr, len)?;
            let from = caller.data().address();
            let host = lent(caller.data_mut(), abi::IMPORT_REQUEST)?;
            let corr = match host.next_corr() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(reactor = %from, "cannot issue a correlation id: {e}");
                    return Ok(abi::STATUS_LIMIT as i64);
                }
            };
            let env = Envelope { kind: abi::KIND_REQUEST, flags, from, corr, payload };
            Ok(match host.route(Address(to), env) {
                Ok(()) => corr as i64,
                Err(e) => send_status(Err(e)) as i64,
            })
        },
    )?;

    linker.func_wrap(
        m,
        abi::IMPORT_REPLY,
        |mut caller: Caller<'_, ReactorData<H>>, to: u64, corr: u64, ptr: u32, len: u32, flags: u32| {
            let Some(flags) = check_flags(flags) else { return Ok(abi::STATUS_BAD_ARGUMENT) };
            if len > abi::MAX_PAYLOAD_LEN {
                return Ok(abi::STATUS_TOO_LARGE);
            }
            let payload = read_guest(&mut caller, abi::IMPORT_REPLY, ptr, len)?;
            let from = caller.data().address();
            let env = Envelope { kind: abi::KIND_REPLY, flags, from, corr, payload };
            Ok(send_status(lent(caller.data_mut(), abi::IMPORT_REPLY)?.route(Address(to), env)))
        },
    )?;

    linker.func_wrap(
        m,
        abi::IMPORT_SPAWN,
        |mut caller: Caller<'_, ReactorData<H>>, mptr: u32, mlen: u32, iptr: u32, ilen: u32| {
            if ilen > abi::MAX_PAYLOAD_LEN {
                return Ok(abi::STATUS_TOO_LARGE as i64);
            }
            if mlen > 1 + 4096 {
                return Ok(abi::STATUS_BAD_ARGUMENT as i64);
            }
            let mref = read_guest(&mut caller, abi::IMPORT_SPAWN, mptr, mlen)?;
            let init = read_guest(&mut caller, abi::IMPORT_SPAWN, iptr, ilen)?;
            let Some(module) = module_ref(&mref) else { return Ok(abi::STATUS_BAD_ARGUMENT as i64) };
            let parent = caller.data().address();
            Ok(match lent(caller.data_mut(), abi::IMPORT_SPAWN)?.spawn(parent, module, init) {
                Ok(addr) => addr.0 as i64,
                Err(SpawnRefusal::NoSuchModule) => abi::STATUS_NO_SUCH_MODULE as i64,
                Err(SpawnRefusal::Refused(_)) => abi::STATUS_SPAWN_REFUSED as i64,
            })
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

/// The `blob_*` calls (see `abi`).
fn register_blobs<H: HostContext>(linker: &mut Linker<ReactorData<H>>) -> wasmtime::Result<()> {
    let m = abi::IMPORT_MODULE;
    let max_held = abi::MAX_HELD_BLOBS as usize;

    linker.func_wrap(m, abi::IMPORT_BLOB_CREATE, move |mut caller: Caller<'_, ReactorData<H>>, ptr: u32, len: u32| {
        if len > abi::MAX_BLOB_LEN || caller.data().held().len() >= max_held {
            return Ok(abi::STATUS_LIMIT as i64);
        }
        let memory = memory_of(&caller, abi::IMPORT_BLOB_CREATE)?;
        let (mem, data) = memory.data_and_store_mut(&mut caller);
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
    })?;

    linker.func_wrap(m, abi::IMPORT_BLOB_OPEN, move |mut caller: Caller<'_, ReactorData<H>>, tag: u64| {
        let data = caller.data_mut();
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
    })?;

    linker.func_wrap(m, abi::IMPORT_BLOB_LEN, |caller: Caller<'_, ReactorData<H>>, tag: u64| {
        Ok(caller.data().held().get(&tag).map_or(abi::STATUS_NO_SUCH_BLOB as i64, |b| b.len() as i64))
    })?;

    linker.func_wrap(
        m,
        abi::IMPORT_BLOB_READ,
        |mut caller: Caller<'_, ReactorData<H>>, tag: u64, offset: u64, ptr: u32, len: u32| {
            let memory = memory_of(&caller, abi::IMPORT_BLOB_READ)?;
            let (mem, data) = memory.data_and_store_mut(&mut caller);
            let r = range(mem.len(), abi::IMPORT_BLOB_READ, ptr, len)?;
            let Some(blob) = data.held().get(&tag) else { return Ok(abi::STATUS_NO_SUCH_BLOB as i64) };
            let bytes = blob.bytes();
            let Some(rest) = usize::try_from(offset).ok().and_then(|o| bytes.get(o..)) else {
                return Ok(abi::STATUS_BAD_ARGUMENT as i64);
            };
            let n = rest.len().min(r.len());
            mem[r.start..r.start + n].copy_from_slice(&rest[..n]);
            Ok(n as i64)
        },
    )?;

    linker.func_wrap(m, abi::IMPORT_BLOB_GIVE, |caller: Caller<'_, ReactorData<H>>, tag: u64, to: u64| {
        intact(caller.data(), abi::IMPORT_BLOB_GIVE)?;
        let Some(blob) = caller.data().held().get(&tag) else { return Ok(abi::STATUS_NO_SUCH_BLOB) };
        Ok(if blob.grant(Address(to)) { abi::STATUS_OK } else { abi::STATUS_LIMIT })
    })?;

    linker.func_wrap(m, abi::IMPORT_BLOB_CLOSE, |mut caller: Caller<'_, ReactorData<H>>, tag: u64| {
        Ok(if caller.data_mut().release(tag) { abi::STATUS_OK } else { abi::STATUS_NO_SUCH_BLOB })
    })?;

    Ok(())
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
