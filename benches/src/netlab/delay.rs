//! The delay line: two threads per direction move every packet from one
//! port to the other a fixed one-way delay after it was read, in order.
//!
//! A reader blocks on its port, stamps each packet with `now + delay` and
//! queues it; a writer takes packets in order, sleeps until each is due and
//! writes it out. The delay is read when a packet arrives, so a change
//! applies to the packets read after it (a shorter delay never reorders:
//! the writer keeps queue order and writes a packet that is already due at
//! once). Nothing is dropped here; the kernel may drop at a device queue
//! when a writer falls behind, as a real link would.
#![forbid(unsafe_code)]

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest packet a port may hand over: 64 KiB plus a virtio-net header
/// (TUN devices with offloads pass whole TCP segments of up to 64 KiB).
pub(crate) const MAX_PACKET: usize = 65_535 + 12;

/// One end of the line: a device packets are read from and written to.
pub(crate) trait Port: Send + Sync + 'static {
    /// Reads one packet; `ErrorKind::Interrupted` or `TimedOut` when woken
    /// by [`Port::interrupt`] or a periodic timeout, so the reader can look
    /// at its stop flag.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one packet.
    fn send(&self, packet: &[u8]) -> io::Result<usize>;
    /// Wakes a reader blocked in [`Port::recv`].
    fn interrupt(&self);
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub(crate) struct DirectionStats {
    pub(crate) packets: AtomicU64,
    pub(crate) bytes: AtomicU64,
    /// Sum and maximum of how late packets were written after they were
    /// due, in ns (the writer's wake-up error plus any backlog).
    pub(crate) late_ns_sum: AtomicU64,
    pub(crate) late_ns_max: AtomicU64,
    /// Writes the device refused (counted, then the packet is dropped).
    pub(crate) send_errors: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DirectionFigures {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) mean_late: Duration,
    pub(crate) max_late: Duration,
    pub(crate) send_errors: u64,
}

impl DirectionStats {
    fn figures(&self) -> DirectionFigures {
        let packets = self.packets.load(Ordering::Relaxed);
        DirectionFigures {
            packets,
            bytes: self.bytes.load(Ordering::Relaxed),
            mean_late: Duration::from_nanos(self.late_ns_sum.load(Ordering::Relaxed) / packets.max(1)),
            max_late: Duration::from_nanos(self.late_ns_max.load(Ordering::Relaxed)),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for c in [&self.packets, &self.bytes, &self.late_ns_sum, &self.late_ns_max, &self.send_errors] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A running delay line between ports `a` and `b`. Dropping it stops and
/// joins its threads.
pub(crate) struct DelayLine {
    one_way_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ports: [Arc<dyn Port>; 2],
    /// `[a → b, b → a]`.
    stats: [Arc<DirectionStats>; 2],
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DelayLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayLine").field("one_way", &self.one_way()).finish_non_exhaustive()
    }
}

impl DelayLine {
    /// Starts forwarding between `a` and `b` with `one_way` delay each way.
    pub(crate) fn start(a: Arc<dyn Port>, b: Arc<dyn Port>, one_way: Duration) -> io::Result<Self> {
        let one_way_ns = Arc::new(AtomicU64::new(one_way.as_nanos() as u64));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = [Arc::new(DirectionStats::default()), Arc::new(DirectionStats::default())];
        let mut line = Self { one_way_ns, stop, ports: [a.clone(), b.clone()], stats, threads: Vec::new() };
        for (dir, (from, to)) in [(a.clone(), b.clone()), (b, a)].into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded::<(Instant, Vec<u8>)>();
            let (delay, stop, stats) = (line.one_way_ns.clone(), line.stop.clone(), line.stats[dir].clone());
            let name = if dir == 0 { "a->b" } else { "b->a" };
            line.threads.push(
                std::thread::Builder::new()
                    .name(format!("delay-read {name}"))
                    .spawn(move || read_loop(&*from, &delay, &stop, &tx))?,
            );
            let stop = line.stop.clone();
            line.threads.push(
                std::thread::Builder::new()
                    .name(format!("delay-write {name}"))
                    .spawn(move || write_loop(&*to, &stop, &rx, &stats))?,
            );
        }
        Ok(line)
    }

    /// Sets the one-way delay for packets read from now on.
    pub(crate) fn set_one_way(&self, d: Duration) {
        self.one_way_ns.store(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn one_way(&self) -> Duration {
        Duration::from_nanos(self.one_way_ns.load(Ordering::Relaxed))
    }

    /// Counters `[a → b, b → a]` since the start or the last reset.
    pub(crate) fn figures(&self) -> [DirectionFigures; 2] {
        [self.stats[0].figures(), self.stats[1].figures()]
    }

    pub(crate) fn reset_figures(&self) {
        self.stats.iter().for_each(|s| s.reset());
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for p in &self.ports {
            p.interrupt();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn read_loop(from: &dyn Port, delay: &AtomicU64, stop: &AtomicBool, tx: &Sender<(Instant, Vec<u8>)>) {
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        match from.recv(&mut buf) {
            Ok(n) => {
                let due = Instant::now() + Duration::from_nanos(delay.load(Ordering::Relaxed));
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                eprintln!("delay line: reading a packet: {e}");
                return;
            }
        }
    }
}

fn write_loop(to: &dyn Port, stop: &AtomicBool, rx: &Receiver<(Instant, Vec<u8>)>, stats: &DirectionStats) {
    super::sys::tight_timer_slack();
    while !stop.load(Ordering::Relaxed) {
        let (due, packet) = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(p) => p,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep(due - now);
        }
        let late = Instant::now().saturating_duration_since(due).as_nanos() as u64;
        stats.late_ns_sum.fetch_add(late, Ordering::Relaxed);
        stats.late_ns_max.fetch_max(late, Ordering::Relaxed);
        match to.send(&packet) {
            Ok(_) => {
                stats.packets.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Receiver, Sender, unbounded};
    use std::sync::Mutex;

    /// A port fed by a channel, recording what is written to it and when.
    struct FakePort {
        inbound: Receiver<Vec<u8>>,
        written: Mutex<Vec<(Instant, Vec<u8>)>>,
    }

    impl Port for FakePort {
        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            match self.inbound.recv_timeout(Duration::from_millis(10)) {
                Ok(p) => {
                    buf[..p.len()].copy_from_slice(&p);
                    Ok(p.len())
                }
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            }
        }
        fn send(&self, packet: &[u8]) -> io::Result<usize> {
            self.written.lock().unwrap().push((Instant::now(), packet.to_vec()));
            Ok(packet.len())
        }
        fn interrupt(&self) {}
    }

    fn port() -> (Sender<Vec<u8>>, Arc<FakePort>) {
        let (tx, rx) = unbounded();
        (tx, Arc::new(FakePort { inbound: rx, written: Mutex::new(Vec::new()) }))
    }

    #[test]
    fn packets_arrive_in_order_after_the_delay_each_way() {
        let (to_a, a) = port();
        let (to_b, b) = port();
        let delay = Duration::from_millis(5);
        let line = DelayLine::start(a.clone(), b.clone(), delay).unwrap();
        let start = Instant::now();
        for i in 0..200u32 {
            to_a.send(i.to_le_bytes().to_vec()).unwrap();
            to_b.send((1000 + i).to_le_bytes().to_vec()).unwrap();
        }
        // Once the first burst is through, halve the delay midway through a
        // second burst: order must hold.
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.written.lock().unwrap().len() < 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 200..400u32 {
            if i == 300 {
                line.set_one_way(delay / 2);
            }
            to_a.send(i.to_le_bytes().to_vec()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while (b.written.lock().unwrap().len() < 400 || a.written.lock().unwrap().len() < 200)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let figures = line.figures();
        drop(line);
        let at_b = b.written.lock().unwrap();
        let seq: Vec<u32> = at_b.iter().map(|(_, p)| u32::from_le_bytes(p[..4].try_into().unwrap())).collect();
        assert_eq!(seq, (0..400).collect::<Vec<_>>(), "a → b keeps order");
        let at_a = a.written.lock().unwrap();
        let seq: Vec<u32> = at_a.iter().map(|(_, p)| u32::from_le_bytes(p[..4].try_into().unwrap())).collect();
        assert_eq!(seq, (1000..1200).collect::<Vec<_>>(), "b → a keeps order");
        // The first packet cannot arrive before its delay.
        assert!(at_b[0].0 - start >= delay);
        assert_eq!(figures[0].packets, 400);
        assert_eq!(figures[1].packets, 200);
    }
}
