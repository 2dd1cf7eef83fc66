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
