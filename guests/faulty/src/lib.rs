//! A reactor that misbehaves on command, to prove the host survives it:
//! traps, panics, infinite loops, memory exhaustion, stack overflow, garbage
//! pointers handed to host calls, and `proc_exit`.
use guest_sdk::prelude::*;
use protocols::{BlobOp, FaultyCmd};

/// Raw host imports, called with deliberately bad arguments.
mod raw {
    #[link(wasm_import_module = "reactor")]
    unsafe extern "C" {
        pub(crate) fn send(to: u64, ptr: usize, len: usize, flags: u32) -> i32;
        pub(crate) fn reply(to: u64, corr: u64, ptr: usize, len: usize, flags: u32) -> i32;
        pub(crate) fn blob_give(tag: u64, to: u64) -> i32;
        pub(crate) fn inbox_read(ptr: usize, len: usize) -> usize;
        pub(crate) fn log(level: i32, ptr: usize, len: usize);
        pub(crate) fn spawn(mptr: *const u8, mlen: usize, iptr: *const u8, ilen: usize) -> i64;
        pub(crate) fn blob_create(ptr: usize, len: usize) -> i64;
        pub(crate) fn blob_open(tag: u64) -> i32;
        pub(crate) fn blob_len(tag: u64) -> i64;
        pub(crate) fn blob_read(tag: u64, offset: u64, ptr: usize, len: usize) -> i64;
        pub(crate) fn blob_close(tag: u64) -> i32;
    }
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        pub(crate) fn proc_exit(code: u32) -> !;
    }
}

#[derive(Default)]
struct Faulty {
    hoard: Vec<Vec<u8>>,
    zero: u32,
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, sink: &mut [u64; 64]) -> u64 {
    let mut local = [depth; 64];
    local[(depth % 64) as usize] ^= sink[(depth % 64) as usize];
    let r = recurse(depth + 1, &mut local);
    r ^ std::hint::black_box(local[3])
}

impl Reactor for Faulty {
    type Msg = FaultyCmd;

    fn react(&mut self, cx: &mut Context, msg: FaultyCmd) {
        match msg {
            FaultyCmd::Ok(n) => {
                let _ = cx.reply(&(n + 1));
            }
            FaultyCmd::Trap => std::process::abort(),
            FaultyCmd::Panic(m) => panic!("{m}"),
            FaultyCmd::LoopForever => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            FaultyCmd::AllocForever => loop {
                let mut block = vec![0u8; 1 << 20];
                block[4096] = 1;
                self.hoard.push(block);
            },
            FaultyCmd::DivideByZero => {
                let z = std::hint::black_box(self.zero);
                let _ = cx.reply(&(7 / z));
            }
            FaultyCmd::StackOverflow => {
                let mut sink = [1u64; 64];
                let _ = cx.reply(&recurse(0, &mut sink));
            }
            FaultyCmd::BadSendPointer => {
                // SAFETY: deliberately invalid: the host must refuse it.
                let s = unsafe { raw::send(cx.me().0, 0xFFFF_FF00, 4096, 0) };
                let _ = cx.reply(&s);
            }
            FaultyCmd::BadInboxPointer => {
                // SAFETY: deliberately invalid: the host must refuse it.
                let n = unsafe { raw::inbox_read(0xFFFF_FFF0, 64) };
                let _ = cx.reply(&n);
            }
            FaultyCmd::BadLogLength => {
                // SAFETY: deliberately invalid: the host must refuse it.
                unsafe { raw::log(3, 16, usize::MAX - 8) };
            }
            FaultyCmd::BadSpawnRef => {
                let garbage = [7u8, 1, 2, 3];
                // SAFETY: valid pointers, garbage content: the host must refuse it.
                let s = unsafe { raw::spawn(garbage.as_ptr(), garbage.len(), garbage.as_ptr(), 0) };
                let _ = cx.reply(&s);
            }
            FaultyCmd::HugeSend => {
                let big = vec![1u8; (guest_sdk::abi::MAX_PAYLOAD_LEN as usize) + 1];
                // SAFETY: a valid slice that is simply too large.
                let s = unsafe { raw::send(cx.me().0, big.as_ptr() as usize, big.len(), 0) };
                let _ = cx.reply(&s);
            }
            FaultyCmd::Exit(code) => {
                // SAFETY: ends the instance; the host turns it into a failure.
                unsafe { raw::proc_exit(code) }
            }
            FaultyCmd::Blob(op) => {
                // SAFETY: every pointer passed is a live slice of our own
                // memory with its length, except `CreateLen`, whose length
                // the host must refuse before touching memory.
                let r: i64 = unsafe {
                    match op {
                        BlobOp::Create(bytes) => raw::blob_create(bytes.as_ptr() as usize, bytes.len()),
                        BlobOp::CreateLen(len) => raw::blob_create(16, len as usize),
                        BlobOp::Open(tag) => raw::blob_open(tag) as i64,
                        BlobOp::Len(tag) => raw::blob_len(tag),
                        BlobOp::Read { tag, offset, len } => {
                            let mut buf = vec![0u8; (len as usize).min(1 << 20)];
                            raw::blob_read(tag, offset, buf.as_mut_ptr() as usize, buf.len())
                        }
                        BlobOp::Close(tag) => raw::blob_close(tag) as i64,
                    }
                };
                let _ = cx.reply(&r);
            }
            FaultyCmd::BadBlobCreatePointer => {
                // SAFETY: deliberately invalid: the host must refuse it.
                let r = unsafe { raw::blob_create(0xFFFF_FF00, 4096) };
                let _ = cx.reply(&r);
            }
            FaultyCmd::BadBlobReadPointer(tag) => {
                // SAFETY: no pointers, then a deliberately invalid one.
                let r = unsafe {
                    raw::blob_open(tag);
                    raw::blob_read(tag, 0, 0xFFFF_FFF0, 64)
                };
                let _ = cx.reply(&r);
            }
            FaultyCmd::HoardBlobs(n) => {
                let mut created = 0u32;
                let mut status = 0i64;
                for i in 0..n {
                    let byte = [i as u8];
                    // SAFETY: a live one-byte slice of our own memory.
                    let r = unsafe { raw::blob_create(byte.as_ptr() as usize, 1) };
                    if r <= 0 {
                        status = r;
                        break;
                    }
                    created += 1;
                }
                let _ = cx.reply(&(created, status));
            }
            FaultyCmd::Sleep(ms) => {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                let _ = cx.reply(&0u32);
            }
            FaultyCmd::Print { lines, len } => {
                let line = "x".repeat(len as usize);
                for _ in 0..lines {
                    println!("{line}");
                }
                let _ = cx.reply(&0u32);
            }
            FaultyCmd::ForgeReply { to, corr, len, times } => {
                let body = vec![7u8; len as usize];
                let (mut accepted, mut last) = (0u32, 0i32);
                for _ in 0..times {
                    // SAFETY: a live slice of our own memory.
                    last = unsafe { raw::reply(to, corr, body.as_ptr() as usize, body.len(), 0) };
                    if last == 0 {
                        accepted += 1;
                    }
                }
                let _ = cx.reply(&(accepted, last));
            }
            FaultyCmd::SpawnMany(n) => {
                let (mut spawned, mut status) = (0u32, 0i64);
                let own = [guest_sdk::abi::MODULE_REF_SELF];
                for _ in 0..n {
                    // SAFETY: live slices of our own memory (an empty init).
                    let r = unsafe { raw::spawn(own.as_ptr(), own.len(), own.as_ptr(), 0) };
                    if r < 0 {
                        status = r;
                        break;
                    }
                    spawned += 1;
                }
                let _ = cx.reply(&(spawned, status));
            }
            FaultyCmd::BigBlobs { len, max } => {
                let bytes = vec![5u8; len as usize];
                let (mut created, mut status) = (0u32, 0i64);
                for _ in 0..max {
                    // SAFETY: a live slice of our own memory.
                    let r = unsafe { raw::blob_create(bytes.as_ptr() as usize, bytes.len()) };
                    if r <= 0 {
                        status = r;
                        break;
                    }
                    created += 1;
                }
                let _ = cx.reply(&(created, status));
            }
            FaultyCmd::Flood { to, len, times } => {
                let body = vec![9u8; len as usize];
                let (mut accepted, mut last) = (0u32, 0i32);
                for _ in 0..times {
                    // SAFETY: a live slice of our own memory.
                    last = unsafe { raw::send(to, body.as_ptr() as usize, body.len(), 0) };
                    if last == 0 {
                        accepted += 1;
                    }
                }
                let _ = cx.reply(&(accepted, last));
            }
            FaultyCmd::GiveBlob { tag, to } => {
                // SAFETY: no pointers.
                let r = unsafe { raw::blob_give(tag, to) };
                let _ = cx.reply(&r);
            }
            FaultyCmd::BigReply(len) => {
                let _ = cx.reply(&vec![1u8; len as usize]);
            }
        }
    }
}

guest_sdk::export!(Faulty);
