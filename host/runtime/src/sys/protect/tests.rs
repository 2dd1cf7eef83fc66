//! The capture protocol under real page faults: captures equal the memory
//! at their boundary however the writes race the copier.

use super::*;
use crate::sys::pages::{Mapping, page_is_zero, page_size};
use std::ptr;
fn fill(m: &mut Mapping, seed: u8) {
    let ps = page_size();
    for (p, page) in m.as_mut_slice().chunks_mut(ps).enumerate() {
        if p % 3 != 2 {
            page.fill(seed.wrapping_add(p as u8) | 1);
        }
    }
}

#[test]
fn zero_pages_are_detected() {
    let ps = page_size();
    let mut page = vec![0u8; ps];
    assert!(page_is_zero(&page));
    page[ps - 1] = 1;
    assert!(!page_is_zero(&page));
}

#[test]
fn capture_equals_boundary_state_despite_concurrent_writes() {
    let ps = page_size();
    let pages = 512;
    let mut mem = Mapping::new(pages * ps).unwrap();
    fill(&mut mem, 7);
    let before = mem.as_slice().to_vec();
    let mut t = Tracker::default();
    // SAFETY: `mem` outlives the tracker's use (released below) and only
    // this thread writes it.
    let cap = unsafe { t.arm(mem.as_mut_ptr(), mem.len(), Cover::All, true) }.unwrap();
    // Write every page while the copier runs: each write faults first.
    for p in (0..pages).rev() {
        // SAFETY: inside the mapping; the handler makes it writable.
        unsafe { mem.as_mut_ptr().add(p * ps + 5).write_volatile(0xEE) };
    }
    let img = cap.image();
    for p in 0..pages {
        let want = &before[p * ps..(p + 1) * ps];
        if page_is_zero(want) {
            assert!(!img.is_nonzero(p), "page {p} was zero");
        } else {
            assert!(img.is_nonzero(p));
            assert_eq!(&img.bytes[p * ps..(p + 1) * ps], want, "page {p}");
        }
    }
    // Dirty tracking: exactly the written pages are in the next delta.
    t.settle();
    let half: Vec<usize> = (0..pages).step_by(2).collect();
    // SAFETY: as above.
    let cap2 = unsafe { t.arm(mem.as_mut_ptr(), mem.len(), Cover::Dirty, true) }.unwrap();
    for &p in &half {
        // SAFETY: as above.
        unsafe { mem.as_mut_ptr().add(p * ps).write_volatile(1) };
    }
    let img2 = cap2.image();
    // Every page was written after the first arm, so all are covered.
    assert!((0..pages).all(|p| img2.covers(p)));
    drop(img2);
    t.settle();
    // SAFETY: as above.
    let cap3 = unsafe { t.arm(mem.as_mut_ptr(), mem.len(), Cover::Dirty, false) }.unwrap();
    let img3 = cap3.image();
    for p in 0..pages {
        assert_eq!(img3.covers(p), p % 2 == 0, "page {p}");
    }
    drop(img3);
    t.release();
    // Writable again without faults.
    mem.as_mut_slice().fill(3);
}

use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Write `value` at byte `offset` of page `page`.
    Write { page: usize, offset: usize, value: u8 },
    /// Arm a capture (then the next writes race its copier).
    Arm { dirty: bool, keep: bool },
    /// A message boundary.
    Settle,
}

fn op(pages: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..pages, 0..4096usize, any::<u8>()).prop_map(|(page, offset, value)| Op::Write { page, offset, value }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(dirty, keep)| Op::Arm { dirty, keep }),
        1 => Just(Op::Settle),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the order of writes, arms and boundaries, every capture
    /// holds exactly the memory as it was when it was armed (for a
    /// delta: every page written since the previous capture, and the
    /// pages it does not cover are unchanged since then).
    #[test]
    fn every_capture_equals_memory_at_its_arm(ops in proptest::collection::vec(op(64), 1..200)) {
        let ps = page_size();
        let pages = 64;
        let mut mem = Mapping::new(pages * ps).unwrap();
        let mut t = Tracker::default();
        // (capture, memory at arm, memory at the previous capture)
        let mut taken = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        for op in ops {
            match op {
                Op::Write { page, offset, value } => {
                    // SAFETY: inside the mapping; the handler makes
                    // protected pages writable first.
                    unsafe { mem.as_mut_ptr().add(page * ps + offset).write_volatile(value) };
                }
                Op::Arm { dirty, keep } => {
                    let cover = if dirty { Cover::Dirty } else { Cover::All };
                    // SAFETY: `mem` outlives the tracker (released
                    // below) and only this thread writes it.
                    match unsafe { t.arm(mem.as_mut_ptr(), mem.len(), cover, keep) } {
                        Ok(c) => {
                            let now = mem.as_slice().to_vec();
                            taken.push((c, now.clone(), if dirty { last.clone() } else { None }));
                            last = keep.then_some(now);
                        }
                        Err(ArmError::NoBase) => {
                            prop_assert!(dirty);
                            last = None;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                Op::Settle => t.settle(),
            }
        }
        for (c, at_arm, before) in &taken {
            let img = c.image();
            for p in 0..pages {
                let want = &at_arm[p * ps..(p + 1) * ps];
                if img.covers(p) {
                    if img.is_nonzero(p) {
                        prop_assert_eq!(&img.bytes[p * ps..(p + 1) * ps], want, "page {}", p);
                    } else {
                        prop_assert!(page_is_zero(want), "page {} captured as zero", p);
                    }
                } else {
                    let before = before.as_ref().expect("only deltas leave pages out");
                    prop_assert_eq!(&before[p * ps..(p + 1) * ps], want, "uncovered page {} changed", p);
                }
            }
        }
        drop(taken);
        t.release();
        // Writable again everywhere.
        mem.as_mut_slice().fill(1);
    }
}

#[test]
fn incremental_needs_a_base() {
    let mem = Mapping::new(16 * page_size()).unwrap();
    let mut t = Tracker::default();
    // SAFETY: as in the test above.
    let r = unsafe { t.arm(mem.as_mut_ptr(), mem.len(), Cover::Dirty, true) };
    assert!(matches!(r, Err(ArmError::NoBase)));
}

#[test]
fn faults_outside_tracked_memory_still_reach_the_previous_handler() {
    // A tracked region exists; an unrelated read of a PROT_NONE page in
    // a child process must still kill it with SIGSEGV (the chain ends in
    // the default action), not loop or be swallowed.
    install_handler();
    // SAFETY: fork in a test: the child only touches memory and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: a fresh PROT_NONE page, then a read of it.
        unsafe {
            let p = libc::mmap(ptr::null_mut(), 4096, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            std::ptr::read_volatile(p.cast::<u8>());
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child we forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFSIGNALED(status), "child exited normally: status {status}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSEGV);
}

/// Runs the ignored test `name` alone in a child process of this test
/// binary: hitting the process's map limit on purpose would make other
/// tests' mappings fail meanwhile.
fn run_alone(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child did not run the test:\n{text}");
}

#[test]
fn writing_every_other_page_past_the_map_limit_finishes_the_capture_by_copying() {
    run_alone("sys::protect::tests::every_other_page_past_the_map_limit_alone");
}

#[test]
#[ignore = "run alone in a child process by writing_every_other_page_past_the_map_limit_finishes_the_capture_by_\
            copying"]
fn every_other_page_past_the_map_limit_alone() {
    // 512 MiB: unprotecting every other page would split the mapping into
    // 131,072 pieces, past the default vm.max_map_count (65,530).
    let ps = page_size();
    let pages = (512 << 20) / ps;
    let mut mem = Mapping::new(pages * ps).unwrap();
    for p in (0..pages).step_by(1000) {
        mem.as_mut_slice()[p * ps..(p + 1) * ps].fill(p as u8 | 1);
    }
    let before: Vec<(usize, u8)> = (0..pages).step_by(1000).map(|p| (p, p as u8 | 1)).collect();
    let mut t = Tracker::default();
    // SAFETY: `mem` outlives the tracker's use (released below) and only
    // this thread writes it.
    let cap = unsafe { t.arm(mem.as_mut_ptr(), mem.len(), Cover::All, true) }.unwrap();
    for p in (0..pages).step_by(2) {
        // SAFETY: inside the mapping; the handler makes it writable (or
        // gives the region up and makes all of it writable).
        unsafe { mem.as_mut_ptr().add(p * ps + 1).write_volatile(0xEE) };
    }
    let limit = crate::sys::mappings().map_or(usize::MAX, |(_, l)| l);
    let img = cap.image();
    for &(p, v) in &before {
        assert!(img.is_nonzero(p), "page {p}");
        assert!(img.bytes[p * ps..(p + 1) * ps].iter().all(|&b| b == v), "page {p} changed in the capture");
    }
    for p in (1..pages).step_by(1000) {
        if p % 1000 != 0 {
            assert!(!img.is_nonzero(p) || before.iter().any(|&(q, _)| q == p), "page {p}");
        }
    }
    drop(img);
    if limit < pages / 2 {
        assert!(cap.degraded(), "the kernel's map limit ({limit}) should have been hit");
        // Tracking stopped: no dirty-page record to take a delta on.
        assert!(!t.tracking());
        t.settle();
        // SAFETY: as above.
        let r = unsafe { t.arm(mem.as_mut_ptr(), mem.len(), Cover::Dirty, true) };
        assert!(matches!(r, Err(ArmError::NoBase)), "{r:?}");
    }
    // The mappings merged again, and the memory is writable everywhere.
    let (now, limit) = crate::sys::mappings().unwrap();
    assert!(now < limit / 2, "{now} mappings of {limit}");
    t.release();
    mem.as_mut_slice()[..ps * 4].fill(9);
}

#[test]
fn faults_find_their_region_among_many() {
    let ps = page_size();
    let mut mems: Vec<Mapping> = (0..64).map(|_| Mapping::new(8 * ps).unwrap()).collect();
    let mut trackers: Vec<Tracker> = (0..64).map(|_| Tracker::default()).collect();
    let mut caps = Vec::new();
    for (i, (m, t)) in mems.iter_mut().zip(&mut trackers).enumerate() {
        m.as_mut_slice().fill(i as u8 + 1);
        // SAFETY: each mapping outlives its tracker's use; only this thread
        // writes them.
        caps.push(unsafe { t.arm(m.as_mut_ptr(), m.len(), Cover::All, true) }.unwrap());
    }
    // Write every page of every region, in an order unrelated to addresses.
    for k in 0..64 * 8 {
        let (i, p) = ((k * 37) % 64, (k * 11) % 8);
        // SAFETY: inside the mapping; the handler makes it writable.
        unsafe { mems[i].as_mut_ptr().add(p * ps).write_volatile(0) };
    }
    for (i, c) in caps.iter().enumerate() {
        let img = c.image();
        assert!(img.bytes.iter().all(|&b| b == i as u8 + 1), "region {i}");
    }
    drop(caps);
    for t in &mut trackers {
        t.release();
    }
}

// ---------------------------------------------------------------------------
// Lazily restored pages, checked on first touch.

fn test_hash(index: u64, page: &[u8]) -> u64 {
    snapshot_format::page_hash(index, page)
}

/// A mapping of `pages` pages, each filled with a distinct byte, and the
/// expected hash of each (as page `first_data + i` of a data section).
fn lazy_memory(pages: usize, first_data: u64) -> (Mapping, Vec<u64>) {
    let ps = page_size();
    let mut m = Mapping::new(pages * ps).unwrap();
    for (p, page) in m.as_mut_slice().chunks_mut(ps).enumerate() {
        page.fill(p as u8 ^ 0x5A);
    }
    let expected = m.as_slice().chunks(ps).enumerate().map(|(i, p)| test_hash(first_data + i as u64, p)).collect();
    (m, expected)
}

fn expect(first_data_page: u64, hashes: Vec<u64>, skip: Vec<u64>) -> lazy::Expected {
    lazy::Expected { first_data_page, hashes, skip, hash: test_hash }
}

fn read_byte(m: &Mapping, offset: usize) -> u8 {
    // SAFETY: inside the mapping; a guarded page faults and the handler
    // checks and opens it.
    unsafe { m.as_mut_ptr().add(offset).read_volatile() }
}

#[test]
fn lazily_restored_pages_are_checked_on_first_touch_only_where_touched() {
    let ps = page_size();
    let pages = 64;
    let (mem, mut expected) = lazy_memory(pages, 100);
    // Page 40 does not match its checksum; page 3 does not either but a
    // later layer wrote it (skipped).
    expected[40] ^= 1;
    expected[3] ^= 1;
    let mut skip = vec![0u64; 1];
    skip[0] |= 1 << 3;
    let mut lazy = lazy::LazyPages::default();
    // SAFETY: `mem` is ours, only this thread touches it, and `lazy` is
    // dropped (unregistering) before `mem`.
    let guarded = unsafe { lazy.guard(mem.as_mut_ptr() as usize, mem.as_mut_ptr() as usize, pages, expect(100, expected, skip)) };
    assert!(guarded.unwrap());
    // Chunks are 16 pages: touching page 5 checks pages 0..16 (3 skipped).
    assert_eq!(read_byte(&mem, 5 * ps + 9), 5 ^ 0x5A);
    assert_eq!(lazy.damage().found(), None);
    // A write into an unchecked chunk is checked first, then goes through.
    // SAFETY: as above.
    unsafe { mem.as_mut_ptr().add(20 * ps).write_volatile(7) };
    assert_eq!(read_byte(&mem, 20 * ps), 7);
    assert_eq!(lazy.damage().found(), None, "pages 16..32 match");
    // The damaged page's chunk: found on first touch, with both numbers.
    assert_eq!(read_byte(&mem, 47 * ps), 47 ^ 0x5A);
    assert_eq!(lazy.damage().found(), Some((40, 140)));
    lazy.settle();
    assert!(!lazy.is_empty(), "chunk 48..64 is not checked yet");
    lazy.check_all();
    assert!(lazy.is_empty());
}

#[test]
fn check_all_checks_untouched_chunks_and_unregisters() {
    let pages = 40;
    let (mem, mut expected) = lazy_memory(pages, 0);
    expected[39] ^= 1;
    let mut lazy = lazy::LazyPages::default();
    // SAFETY: as in the test above.
    assert!(unsafe { lazy.guard(mem.as_mut_ptr() as usize, mem.as_mut_ptr() as usize, pages, expect(0, expected, vec![0])) }.unwrap());
    assert_eq!(lazy.damage().found(), None, "nothing touched, nothing checked");
    lazy.check_all();
    assert_eq!(lazy.damage().found(), Some((39, 39)));
    assert!(lazy.is_empty());
    // Unregistered and open: reads need no handler.
    assert_eq!(mem.as_slice()[0], 0x5A);
}

#[test]
fn pages_touched_from_many_threads_are_checked_once_and_read_whole() {
    let ps = page_size();
    let pages = 256;
    let (mem, expected) = lazy_memory(pages, 7);
    let mut lazy = lazy::LazyPages::default();
    // SAFETY: as above; the threads below only read, and are joined before
    // `lazy` and `mem` drop.
    assert!(unsafe { lazy.guard(mem.as_mut_ptr() as usize, mem.as_mut_ptr() as usize, pages, expect(7, expected, vec![0; 4])) }.unwrap());
    let base = mem.as_mut_ptr() as usize;
    std::thread::scope(|s| {
        for t in 0..4usize {
            s.spawn(move || {
                for p in (0..pages).map(|p| (p * 7 + t * 13) % pages) {
                    // SAFETY: inside the guarded mapping, alive for the scope.
                    let b = unsafe { ((base + p * ps + t) as *const u8).read_volatile() };
                    assert_eq!(b, p as u8 ^ 0x5A, "page {p}");
                }
            });
        }
    });
    assert_eq!(lazy.damage().found(), None);
    lazy.settle();
    assert!(lazy.is_empty(), "every chunk was checked");
}

#[test]
fn a_freed_memory_forgets_its_guarded_runs() {
    let ps = page_size();
    let pages = 32;
    let (mem, expected) = lazy_memory(pages, 0);
    let mut lazy = lazy::LazyPages::default();
    // SAFETY: as above.
    assert!(unsafe { lazy.guard(mem.as_mut_ptr() as usize, mem.as_mut_ptr() as usize, pages, expect(0, expected, vec![0])) }.unwrap());
    lazy::forget(mem.as_mut_ptr() as usize, pages * ps);
    // The run is no longer the handler's: dropping the owner is harmless,
    // and the pages stay as the forgotten run left them (inaccessible:
    // the memory was about to go). Unmap it through its owner.
    drop(lazy);
    drop(mem);
}
