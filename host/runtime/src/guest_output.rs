//! What a reactor writes to its standard output and error: captured into
//! the host's log, line by line, under a rate limit — never inherited.
//!
//! A guest's `println!` is a WASI `fd_write` on descriptor 1. Had the
//! reactor inherited the host's stdout, a full pipe (a terminal paused, a
//! log collector behind) would block the shard thread inside that call,
//! where no CPU budget fires, and every reactor of the shard with it. Here
//! a write never blocks and never fails: complete lines go to `tracing`
//! (target `guest`, with the reactor's address and the stream), at most
//! [`BURST`] bytes at once and [`RATE`] bytes per second per reactor after
//! that; what the limit drops is counted and reported in one line once
//! output is allowed again. Lines longer than [`MAX_LINE`] are cut.
#![forbid(unsafe_code)]

use reactor_types::Address;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes a reactor may write at once before the rate applies.
pub(crate) const BURST: f64 = 64.0 * 1024.0;
/// Bytes per second a reactor may write in the long run.
pub(crate) const RATE: f64 = 16.0 * 1024.0;
/// Longest line logged; the rest of a longer line is dropped.
pub(crate) const MAX_LINE: usize = 4096;
/// What one write may hand over (the guest splits larger writes).
const WRITE_PERMIT: usize = 64 * 1024;

/// Which of the two streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Where a line goes (the log, or a test's buffer).
pub(crate) type Sink = Arc<dyn Fn(Address, Stream, &str) + Send + Sync>;

/// A token bucket and the partial lines of both streams.
struct State {
    tokens: f64,
    refilled: Instant,
    /// Bytes dropped by the rate limit, not reported yet.
    dropped: u64,
    partial: [Vec<u8>; 2],
}

/// One reactor's output: both streams share its budget.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    address: Address,
    state: Arc<Mutex<State>>,
    sink: Sink,
}

impl std::fmt::Debug for GuestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestOutput").field("address", &self.address).finish()
    }
}

fn log_line(address: Address, stream: Stream, line: &str) {
    match stream {
        Stream::Stdout => tracing::info!(target: "guest", reactor = %address, stream = stream.name(), "{line}"),
        Stream::Stderr => tracing::warn!(target: "guest", reactor = %address, stream = stream.name(), "{line}"),
    }
}

impl GuestOutput {
    /// The output of the reactor at `address`, logged.
    pub(crate) fn new(address: Address) -> Self {
        Self::with_sink(address, Arc::new(log_line))
    }

    /// The output of the reactor at `address`, handed to `sink`.
    pub(crate) fn with_sink(address: Address, sink: Sink) -> Self {
        let state = State { tokens: BURST, refilled: Instant::now(), dropped: 0, partial: [Vec::new(), Vec::new()] };
        Self { address, state: Arc::new(Mutex::new(state)), sink }
    }

    /// The writer for one stream.
    pub(crate) fn stream(&self, stream: Stream) -> StreamWriter {
        StreamWriter { output: self.clone(), stream }
    }

    /// Takes `bytes` written to `stream`: logs its complete lines within
    /// the budget, drops and counts the rest. Never blocks.
    fn write(&self, stream: Stream, bytes: &[u8]) {
        self.write_at(stream, bytes, Instant::now());
    }

    /// [`GuestOutput::write`] at the time `now`.
    fn write_at(&self, stream: Stream, bytes: &[u8], now: Instant) {
        let mut lines = Vec::new();
        let mut dropped_report = None;
        {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
            s.tokens = (s.tokens + elapsed * RATE).min(BURST);
            s.refilled = now;
            let allowed = (s.tokens.max(0.0) as usize).min(bytes.len());
            s.tokens -= allowed as f64;
            let lost = (bytes.len() - allowed) as u64;
            if lost > 0 {
                s.dropped += lost;
            } else if s.dropped > 0 {
                dropped_report = Some(std::mem::take(&mut s.dropped));
            }
            let i = stream as usize;
            for &b in &bytes[..allowed] {
                if b == b'\n' {
                    lines.push(std::mem::take(&mut s.partial[i]));
                } else if s.partial[i].len() < MAX_LINE {
                    s.partial[i].push(b);
                }
            }
        }
        if let Some(n) = dropped_report {
            (self.sink)(
                self.address,
                Stream::Stderr,
                &format!("[{n} bytes of this reactor's output were dropped: over {RATE} bytes/s]"),
            );
        }
        for line in lines {
            (self.sink)(self.address, stream, &String::from_utf8_lossy(&line));
        }
    }
}

/// The writer of one stream of a [`GuestOutput`]: what the WASI context
/// holds as the guest's stdout or stderr.
#[derive(Clone, Debug)]
pub(crate) struct StreamWriter {
    output: GuestOutput,
    stream: Stream,
}

impl IsTerminal for StreamWriter {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StreamWriter {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StreamWriter {
    /// Always writable.
    async fn ready(&mut self) {}
}

impl OutputStream for StreamWriter {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.output.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for StreamWriter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.output.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Lines = Arc<Mutex<Vec<(Stream, String)>>>;

    fn captured() -> (GuestOutput, Lines) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let out = GuestOutput::with_sink(Address(7), Arc::new(move |_, s, line| l.lock().unwrap().push((s, line.into()))));
        (out, lines)
    }

    #[test]
    fn complete_lines_are_logged_per_stream() {
        let (out, lines) = captured();
        out.write(Stream::Stdout, b"hello ");
        out.write(Stream::Stderr, b"oops\n");
        out.write(Stream::Stdout, b"world\nnext");
        assert_eq!(
            *lines.lock().unwrap(),
            vec![(Stream::Stderr, "oops".to_string()), (Stream::Stdout, "hello world".to_string())]
        );
    }

    #[test]
    fn long_lines_are_cut() {
        let (out, lines) = captured();
        out.write(Stream::Stdout, &vec![b'x'; MAX_LINE * 2]);
        out.write(Stream::Stdout, b"\n");
        assert_eq!(lines.lock().unwrap()[0].1.len(), MAX_LINE);
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_and_the_loss_reported() {
        let (out, lines) = captured();
        let line = [b'a'; 1023].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
        let t = out.state.lock().unwrap().refilled;
        for _ in 0..1000 {
            out.write_at(Stream::Stdout, &line, t);
        }
        assert_eq!(lines.lock().unwrap().len(), 64, "the burst is 64 lines of 1 KiB");
        // A second later the rate allows 16 more lines, after a report of
        // what was lost.
        for _ in 0..1000 {
            out.write_at(Stream::Stdout, &line, t + std::time::Duration::from_secs(1));
        }
        {
            let l = lines.lock().unwrap();
            assert_eq!(l.len(), 64 + 1 + 16);
            assert_eq!(l[64], (Stream::Stderr, format!("[{} bytes of this reactor's output were dropped: over {RATE} bytes/s]", 936 * 1024)));
        }
        // Once the bucket has refilled, the next write reports what was lost.
        out.write_at(Stream::Stdout, b"after\n", t + std::time::Duration::from_secs(60));
        let l = lines.lock().unwrap();
        let report = &l[l.len() - 2].1;
        assert!(report.contains("bytes of this reactor's output were dropped"), "{report}");
        assert_eq!(l[l.len() - 1].1, "after");
    }
}
