//! A key–value store on a `BTreeMap`: put, get, delete, range scans, and bulk
//! fills that grow its state to hundreds of megabytes. Its state is a plain
//! Rust value; no serialization code for it exists anywhere. It can also
//! hold shared immutable blobs (attach by tag, create, read, detach).
use guest_sdk::prelude::*;
use protocols::{KvReply, KvReq};

#[derive(Default)]
struct Kv {
    map: BTreeMap<String, String>,
    bytes: u64,
    /// Shared blobs this reactor holds, by tag.
    blobs: BTreeMap<u64, Blob>,
}

impl Kv {
    fn put(&mut self, key: String, value: String) -> Option<String> {
        let added = (key.len() + value.len()) as u64;
        let klen = key.len() as u64;
        let old = self.map.insert(key, value);
        self.bytes += added;
        if let Some(o) = &old {
            self.bytes -= klen + o.len() as u64;
        }
        old
    }

    fn delete(&mut self, key: &str) -> Option<String> {
        let old = self.map.remove(key);
        if let Some(o) = &old {
            self.bytes -= (key.len() + o.len()) as u64;
        }
        old
    }

    fn fill(&mut self, prefix: &str, count: u64, value_len: u32, seed: u64) {
        // xorshift64*: cheap, deterministic, printable output.
        let mut s = seed | 1;
        for i in 0..count {
            let mut v = String::with_capacity(value_len as usize);
            while v.len() < value_len as usize {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
                for b in r.to_le_bytes() {
                    if v.len() < value_len as usize {
                        v.push((b'a' + b % 26) as char);
                    }
                }
            }
            self.put(format!("{prefix}{i:010}"), v);
        }
    }
}

impl Kv {
    /// Keeps a blob just opened or created; replies what it is.
    fn keep(&mut self, blob: Result<Blob, BlobError>) -> KvReply {
        match blob {
            Ok(b) => {
                let reply = KvReply::Blob { tag: b.tag(), len: b.len() };
                self.blobs.insert(b.tag(), b);
                reply
            }
            Err(e) => KvReply::Refused { status: e.status() },
        }
    }
}

impl Reactor for Kv {
    type Msg = KvReq;

    fn react(&mut self, cx: &mut Context, msg: KvReq) {
        let reply = match msg {
            KvReq::Put { key, value } => KvReply::Value(self.put(key, value)),
            KvReq::Get { key } => KvReply::Value(self.map.get(&key).cloned()),
            KvReq::Delete { key } => KvReply::Value(self.delete(&key)),
            KvReq::Range { start, end, limit } => {
                let it = self.map.range(start..);
                let entries = it
                    .take_while(|(k, _)| end.as_ref().is_none_or(|e| *k < e))
                    .take(limit as usize)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                KvReply::Entries(entries)
            }
            KvReq::Fill { prefix, count, value_len, seed } => {
                self.fill(&prefix, count, value_len, seed);
                KvReply::Done { keys: self.map.len() as u64 }
            }
            KvReq::Stats => KvReply::Stats { keys: self.map.len() as u64, bytes: self.bytes },
            KvReq::AttachBlob { tag } => self.keep(Blob::open(tag)),
            KvReq::PutBlob { bytes } => self.keep(Blob::create(&bytes)),
            KvReq::ReadBlob { tag, offset, len } => match self.blobs.get(&tag) {
                Some(blob) => {
                    let want = blob.len().saturating_sub(offset).min(len as u64) as usize;
                    let mut buf = vec![0u8; want];
                    match blob.read(offset, &mut buf) {
                        Ok(n) => {
                            buf.truncate(n);
                            KvReply::Bytes(buf)
                        }
                        Err(e) => KvReply::Refused { status: e.status() },
                    }
                }
                None => KvReply::Refused { status: BlobError::NoSuchBlob.status() },
            },
            KvReq::DetachBlob { tag } => match self.blobs.remove(&tag) {
                Some(blob) => {
                    let len = blob.len();
                    match blob.close() {
                        Ok(()) => KvReply::Blob { tag, len },
                        Err(e) => KvReply::Refused { status: e.status() },
                    }
                }
                None => KvReply::Refused { status: BlobError::NoSuchBlob.status() },
            },
            KvReq::GiveBlob { tag, to } => match self.blobs.get(&tag) {
                Some(blob) => match blob.give(Address(to)) {
                    Ok(()) => KvReply::Blob { tag, len: blob.len() },
                    Err(e) => KvReply::Refused { status: e.status() },
                },
                None => KvReply::Refused { status: BlobError::NoSuchBlob.status() },
            },
        };
        if cx.is_request() {
            let _ = cx.reply(&reply);
        }
    }
}

guest_sdk::export!(Kv);
