//! Frames over async byte streams: [`FrameReader`] (frames out of a
//! stream, refusing an oversized length prefix before buffering the body:
//! [`MAX_PREAUTH_FRAME_LEN`] until the peer is authenticated, then
//! [`MAX_FRAME_LEN`]; after an encrypted handshake, out of records),
//! [`FrameWriter`] (frames into a stream, sealed into records once the
//! connection is encrypted), [`write_live`] (a write that fails when the
//! peer stops taking bytes), and the plain [`write_frame`] and
//! [`read_frame`] of the handshake and the tests. Knows nothing of nodes or
//! lanes; uses only `error`.

use crate::error::ConnError;
use reactor_net::frame::{Frame, MAX_FRAME_LEN, MAX_PREAUTH_FRAME_LEN};
use reactor_net::secure::{Opener, Sealer};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Encodes `frame` into `buf` and writes it all (the tests' writer;
/// connections use [`FrameWriter`]).
#[cfg(test)]
pub(crate) async fn write_frame(stream: &mut (impl AsyncWriteExt + Unpin), frame: &Frame, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    frame.encode(buf);
    stream.write_all(buf).await
}

/// Writes `bytes`, failing if the peer takes nothing for `stall` (a frame
/// of megabytes on a slow link may take longer than that in all, which is
/// fine as long as it moves).
pub(crate) async fn write_live(wr: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8], stall: Duration) -> Result<(), ConnError> {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + (256 << 10)).min(bytes.len());
        match tokio::time::timeout(stall, wr.write(&bytes[at..end])).await {
            Ok(Ok(0)) => return Err(ConnError::Closed("the peer stopped reading".into())),
            Ok(Ok(n)) => at += n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ConnError::Timeout("writing: the peer took nothing")),
        }
    }
    Ok(())
}

/// Reads one plaintext frame of at most `MAX_FRAME_LEN` bytes; `buf` keeps
/// bytes read past it (the tests' reader; connections use [`FrameReader`]).
#[cfg(test)]
pub(crate) async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Result<Frame, ConnError> {
    let mut r = FrameReader::authenticated();
    r.plain = std::mem::take(buf);
    let f = r.read(stream).await;
    *buf = std::mem::take(&mut r.plain);
    f
}

/// The reading half of a connection: frames out of a byte stream, or out
/// of records once the connection is encrypted. Cancel-safe (it is used in
/// `select!`): bytes are only ever appended to its buffers by `read_buf`,
/// and everything else happens between awaits.
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// Ciphertext not yet opened (encrypted connections).
    wire: Vec<u8>,
    /// Plaintext frames not yet decoded.
    plain: Vec<u8>,
    opener: Option<Opener>,
    limit: usize,
}

impl FrameReader {
    /// A reader for a connection whose peer is not authenticated yet:
    /// plaintext frames of at most [`MAX_PREAUTH_FRAME_LEN`] bytes.
    pub(crate) fn new() -> Self {
        Self { wire: Vec::new(), plain: Vec::new(), opener: None, limit: MAX_PREAUTH_FRAME_LEN }
    }

    #[cfg(test)]
    fn authenticated() -> Self {
        Self { limit: MAX_FRAME_LEN, ..Self::new() }
    }

    /// The peer is authenticated: frames up to [`MAX_FRAME_LEN`], out of
    /// records if `opener` is given. Bytes already read past the handshake
    /// are the first records.
    pub(crate) fn authenticate(&mut self, opener: Option<Opener>) {
        self.limit = MAX_FRAME_LEN;
        if opener.is_some() {
            self.wire = std::mem::take(&mut self.plain);
            self.opener = opener;
        }
    }

    /// Bytes buffered (progress inside a frame shows as growth).
    pub(crate) fn buffered(&self) -> usize {
        self.wire.len() + self.plain.len()
    }

    /// Reads one frame.
    pub(crate) async fn read(&mut self, stream: &mut (impl AsyncReadExt + Unpin)) -> Result<Frame, ConnError> {
        loop {
            if let Some((f, n)) = Frame::decode_with_limit(&self.plain, self.limit)? {
                self.plain.drain(..n);
                return Ok(f);
            }
            let Some(opener) = self.opener.as_mut() else {
                // Room for the rest of the frame when its length is known
                // (up to the limit the decoder checked), else for a good read.
                let want = match self.plain.get(..4) {
                    Some(p) => (u32::from_le_bytes(p.try_into().expect("4 bytes")) as usize + 4).saturating_sub(self.plain.len()),
                    None => 0,
                };
                self.plain.reserve(want.clamp(4 * 1024, 16 << 20));
                if stream.read_buf(&mut self.plain).await? == 0 {
                    return Err(ConnError::Closed("end of stream".into()));
                }
                continue;
            };
            let used = opener.open(&self.wire, &mut self.plain)?;
            if used > 0 {
                self.wire.drain(..used);
                continue;
            }
            self.wire.reserve(64 * 1024);
            if stream.read_buf(&mut self.wire).await? == 0 {
                return Err(ConnError::Closed("end of stream".into()));
            }
        }
    }
}

/// The writing half of a connection: frames encoded, and sealed into
/// records once the connection is encrypted.
#[derive(Debug, Default)]
pub(crate) struct FrameWriter {
    sealer: Option<Sealer>,
    plain: Vec<u8>,
    wire: Vec<u8>,
}

impl FrameWriter {
    /// A writer of plaintext frames (the handshake, or a plaintext
    /// connection).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// From now on, frames are sealed.
    pub(crate) fn encrypt(&mut self, sealer: Sealer) {
        self.sealer = Some(sealer);
    }

    /// The bytes that carry `frame` on the wire, after `damage` (fault
    /// injection) has been applied to its encoding.
    pub(crate) fn encode(&mut self, frame: &Frame, damage: impl FnOnce(&mut Vec<u8>)) -> Result<&[u8], ConnError> {
        self.plain.clear();
        frame.encode(&mut self.plain);
        damage(&mut self.plain);
        let Some(sealer) = self.sealer.as_mut() else { return Ok(&self.plain) };
        self.wire.clear();
        sealer.seal(&self.plain, &mut self.wire)?;
        Ok(&self.wire)
    }

    /// Writes `frame` all; returns the bytes written.
    pub(crate) async fn write(&mut self, wr: &mut (impl AsyncWriteExt + Unpin), frame: &Frame) -> Result<usize, ConnError> {
        let bytes = self.encode(frame, |_| {})?;
        let n = bytes.len();
        wr.write_all(bytes).await?;
        Ok(n)
    }

    /// Writes `frame`, failing if the peer takes nothing for `stall`;
    /// returns the bytes written.
    pub(crate) async fn write_live(&mut self, wr: &mut (impl AsyncWriteExt + Unpin), frame: &Frame, stall: Duration) -> Result<usize, ConnError> {
        let bytes = self.encode(frame, |_| {})?;
        let n = bytes.len();
        write_live(wr, bytes, stall).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reactor_net::frame::{Data, FrameError, MAX_FRAME_LEN};
    use tokio::io::duplex;

    fn data(payload: Vec<u8>) -> Frame {
        Frame::Data(Data {
            seq: 7,
            ack: 0,
            to: (1 << 48) | 5,
            from: (2 << 48) | 9,
            corr: 42,
            channel: 1,
            hops: 1,
            msg_kind: guest_sdk::abi::KIND_MESSAGE,
            flags: 0,
            meta: vec![1, 2, 3],
            payload,
        })
    }

    #[tokio::test]
    async fn frames_round_trip_and_bytes_past_a_frame_are_kept() {
        let (mut a, mut b) = duplex(1 << 20);
        let frames = vec![
            data(b"hello".to_vec()),
            Frame::Ping { nonce: 3 },
            Frame::Control { payload: vec![9; 1000] },
            data(vec![0xab; 300 << 10]),
            Frame::Close { reason: "bye".into() },
        ];
        // All frames in one write: the reader must split them itself.
        let mut all = Vec::new();
        for f in &frames {
            f.encode(&mut all);
        }
        write_live(&mut a, &all, Duration::from_secs(5)).await.unwrap();
        drop(a);
        let mut buf = Vec::new();
        for f in &frames {
            assert_eq!(&read_frame(&mut b, &mut buf).await.unwrap(), f);
        }
        assert!(buf.is_empty());
        // Then the end of the stream, reported as the peer closing.
        assert!(matches!(read_frame(&mut b, &mut buf).await, Err(ConnError::Closed(_))));
    }

    #[tokio::test]
    async fn write_frame_writes_what_read_frame_reads() {
        let (mut a, mut b) = duplex(64);
        let f = data(vec![7; 10_000]);
        let writer = async {
            let mut out = Vec::new();
            write_frame(&mut a, &f, &mut out).await.unwrap();
            write_frame(&mut a, &Frame::Pong { nonce: 1 }, &mut out).await.unwrap();
        };
        let reader = async {
            let mut buf = Vec::new();
            (read_frame(&mut b, &mut buf).await.unwrap(), read_frame(&mut b, &mut buf).await.unwrap())
        };
        let ((), (first, second)) = tokio::join!(writer, reader);
        assert_eq!(first, f);
        assert_eq!(second, Frame::Pong { nonce: 1 });
    }

    #[tokio::test]
    async fn hostile_bytes_are_an_error_not_a_frame() {
        // Version 9, a kind that does not exist, a length too short for a
        // version and a kind, and a ping with a trailing byte.
        let mut ping = Vec::new();
        Frame::Ping { nonce: 1 }.encode(&mut ping);
        let len = u32::from_le_bytes(ping[..4].try_into().unwrap()) + 1;
        ping[..4].copy_from_slice(&len.to_le_bytes());
        ping.push(0);
        type Expect = fn(&FrameError) -> bool;
        let cases: Vec<(Vec<u8>, Expect)> = vec![
            (vec![2, 0, 0, 0, 9, 1], |e| matches!(e, FrameError::Version { found: 9 })),
            (vec![2, 0, 0, 0, 1, 200], |e| matches!(e, FrameError::UnknownKind(200))),
            (vec![1, 0, 0, 0, 1], |e| matches!(e, FrameError::TooShort(1))),
            (ping, |e| matches!(e, FrameError::Trailing { .. })),
        ];
        for (bytes, expected) in cases {
            // The writer stays open: the error must come from the bytes,
            // not from the end of the stream.
            let (mut a, mut b) = duplex(1024);
            a.write_all(&bytes).await.unwrap();
            match read_frame(&mut b, &mut Vec::new()).await {
                Err(ConnError::Frame(e)) => assert!(expected(&e), "{bytes:?}: {e}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_frame_cut_short_by_the_end_of_the_stream_is_not_delivered() {
        let (mut a, mut b) = duplex(1024);
        let mut bytes = Vec::new();
        data(b"partial".to_vec()).encode(&mut bytes);
        a.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        drop(a);
        assert!(matches!(read_frame(&mut b, &mut Vec::new()).await, Err(ConnError::Closed(_))));
    }

    // Paused time: if `read_frame` waited for the body, the runtime would
    // jump to the guard's deadline at once and the test would fail.
    #[tokio::test(start_paused = true)]
    async fn an_oversized_length_prefix_is_refused_before_its_body_is_buffered() {
        for len in [MAX_FRAME_LEN as u32 + 1, u32::MAX] {
            let (mut a, mut b) = duplex(1024);
            // Only the prefix, and the writer stays open.
            a.write_all(&len.to_le_bytes()).await.unwrap();
            let mut buf = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut b, &mut buf)).await;
            match r {
                Ok(Err(ConnError::Frame(FrameError::TooLarge { len: l, max }))) => {
                    assert_eq!((l, max), (len as usize, MAX_FRAME_LEN));
                }
                other => panic!("length {len}: {other:?}"),
            }
            assert!(buf.capacity() <= 1 << 20, "{} bytes reserved for a refused frame", buf.capacity());
            drop(a);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_times_out() {
        let (mut a, _b) = duplex(4096);
        let bytes = vec![0u8; 1 << 20];
        // The guard (virtual time, like the stall) turns a write that waits
        // forever into a failure rather than a hang.
        let r = tokio::time::timeout(Duration::from_secs(3600), write_live(&mut a, &bytes, Duration::from_millis(200))).await;
        assert!(matches!(r, Ok(Err(ConnError::Timeout(_)))), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_does_not_time_out() {
        // In all the write takes far longer than `stall`, but the reader
        // takes something more often than that.
        let (mut a, mut b) = duplex(1024);
        let bytes = vec![5u8; 64 << 10];
        let stall = Duration::from_millis(100);
        let reader = async {
            let mut got = Vec::new();
            let mut chunk = [0u8; 2048];
            while got.len() < bytes.len() {
                tokio::time::sleep(stall / 2).await;
                let n = b.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            got
        };
        let (w, got) = tokio::join!(write_live(&mut a, &bytes, stall), reader);
        w.unwrap();
        assert_eq!(got, bytes);
    }

    #[tokio::test]
    async fn a_write_to_a_gone_peer_fails() {
        let (mut a, b) = duplex(1024);
        drop(b);
        let r = write_live(&mut a, &[1; 10_000], Duration::from_secs(60)).await;
        assert!(matches!(r, Err(ConnError::Io(_) | ConnError::Closed(_))), "{r:?}");
    }
}
