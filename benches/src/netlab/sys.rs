//! The lab's only calls into the kernel that the standard library and
//! `tun-rs` do not wrap: entering a network namespace from one thread, and
//! tightening a thread's timer slack.

use anyhow::{Context as _, Result};
use std::fs::File;
use std::os::fd::AsRawFd as _;

/// Where `ip netns add NAME` keeps the handle of namespace `NAME`.
pub(crate) fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// Runs `f` on a new thread that has entered the network namespace `name`,
/// and returns its result. Sockets `f` creates belong to that namespace and
/// keep working wherever they are used afterwards; the calling thread's
/// namespace does not change.
pub(crate) fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = netns_path(name);
    let ns = File::open(&path).with_context(|| format!("opening network namespace {path}"))?;
    let thread = std::thread::Builder::new().name(format!("netns-{name}")).spawn(move || -> Result<T> {
        // SAFETY: setns only changes the network namespace of this thread,
        // which is ours alone and ends when `f` returns; `ns` is an open
        // namespace file for the duration of the call.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
        }
        Ok(f())
    })?;
    thread.join().map_err(|_| anyhow::anyhow!("the thread in namespace {name} panicked"))?
}

/// Asks the kernel to wake this thread's sleeps as close to their deadline
/// as it can (timer slack 1 ns instead of the default 50 µs), so the delay
/// line's one-way delay is not rounded up by tens of microseconds.
pub(crate) fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and changes only
    // the calling thread's timer slack; it reads and writes no memory of
    // ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// True when this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}
