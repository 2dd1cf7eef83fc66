//! A reactor that writes memory pages on request: a buffer of the size its
//! init says (MiB, a `u32`), whose pages the host has it write in patterns.
//! The tests use it to attack page protection (writes that split a tracked
//! memory's mapping page by page) and to check restored memory.
//!
//! Messages are `(op, a, b)`:
//! - `(0, stride, value)`: writes `value` to the first byte of every
//!   `stride`-th page of the buffer; replies the number of pages written;
//! - `(1, page, _)`: replies the first byte of that page;
//! - `(2, _, _)`: replies the sum of the first bytes of all pages.
use guest_sdk::prelude::*;

const PAGE: usize = 4096;

#[derive(Default)]
struct Pager {
    buf: Vec<u8>,
}

impl Reactor for Pager {
    type Msg = (u8, u64, u64);

    fn start(&mut self, _cx: &mut Context, init: Payload<'_>) {
        let mib = init.decode::<u32>().unwrap_or(1) as usize;
        self.buf = vec![0; mib << 20];
    }

    fn react(&mut self, cx: &mut Context, (op, a, b): (u8, u64, u64)) {
        let pages = self.buf.len() / PAGE;
        let answer: u64 = match op {
            0 => {
                let stride = (a as usize).max(1);
                let mut n = 0u64;
                for p in (0..pages).step_by(stride) {
                    self.buf[p * PAGE] = b as u8;
                    n += 1;
                }
                n
            }
            1 => self.buf.get(a as usize * PAGE).map_or(u64::MAX, |&v| u64::from(v)),
            _ => (0..pages).map(|p| u64::from(self.buf[p * PAGE])).sum(),
        };
        let _ = cx.reply(&answer);
    }
}

guest_sdk::export!(Pager);
