//! TUN devices as delay-line ports (opened with `tun-rs`).
#![forbid(unsafe_code)]

use super::delay::Port;
use anyhow::{Context as _, Result};
use std::io;
use tun_rs::{DeviceBuilder, InterruptEvent, SyncDevice};

/// An open TUN device (layer 3, no packet-information header) and the event
/// that wakes its reader.
pub(crate) struct TunPort {
    dev: SyncDevice,
    wake: InterruptEvent,
}

impl std::fmt::Debug for TunPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunPort").finish_non_exhaustive()
    }
}

impl TunPort {
    /// Creates the TUN device `name` in the current network namespace, down
    /// and without addresses. With `offload`, the device carries a
    /// virtio-net header and passes TCP segments of up to 64 KiB whole
    /// (TSO/GSO), which the delay line forwards as they are.
    pub(crate) fn create(name: &str, mtu: u16, offload: bool) -> Result<Self> {
        let dev = DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload)
            .build_sync()
            .with_context(|| format!("creating TUN device {name} (needs root and /dev/net/tun)"))?;
        dev.set_nonblocking(true).context("making the TUN device non-blocking")?;
        let wake = InterruptEvent::new().context("creating the TUN reader's wake-up event")?;
        Ok(Self { dev, wake })
    }
}

impl Port for TunPort {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv_intr(buf, &self.wake)
    }

    fn send(&self, packet: &[u8]) -> io::Result<usize> {
        loop {
            match self.dev.send(packet) {
                // The device queue is full (non-blocking fd): wait a little.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_micros(20))
                }
                r => return r,
            }
        }
    }

    fn interrupt(&self) {
        let _ = self.wake.trigger();
    }
}
