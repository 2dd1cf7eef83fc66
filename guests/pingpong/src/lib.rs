//! Two reactors exchanging messages, for latency and throughput: one-way
//! ping/pong, request–response echoes between reactors, echo requests
//! from the outside world, and bulk games (byte payloads echoed, or values
//! put into a `kv` reactor) that time each round.
use guest_sdk::prelude::*;
use protocols::{BulkReport, Bytes, KvReq, PingInit, PingMsg, PingReport};
use std::time::Instant;

struct Play {
    peer: Address,
    rounds: u64,
    sent: u64,
    done: u64,
    requests: bool,
    waiter: Option<PendingReply>,
}

/// A `PlayBulk` or `PlayKv` in progress.
struct Bulk {
    peer: Address,
    rounds: u64,
    sent: u64,
    /// What every round sends: echoed bytes for `PlayBulk`, the value for
    /// `PlayKv` (printable, so it is a valid `String`).
    data: Vec<u8>,
    /// `PlayKv`: the key prefix (`None` for `PlayBulk`).
    kv_prefix: Option<String>,
    /// Rounds in flight: request id and when it was sent.
    in_flight: Vec<(RequestId, Instant)>,
    started: Instant,
    report: BulkReport,
    waiter: Option<PendingReply>,
}

/// Most round times a `BulkReport` carries.
const MAX_ROUND_TIMES: usize = 100_000;

impl Bulk {
    fn send_next(&mut self, cx: &mut Context) {
        if self.sent >= self.rounds {
            return;
        }
        let n = self.sent;
        let sent = match &self.kv_prefix {
            None => cx.request(self.peer, &PingMsg::BulkEcho { n, data: Bytes(self.data.clone()) }),
            Some(prefix) => {
                let value = String::from_utf8(self.data.clone()).expect("the value is ASCII");
                cx.request(self.peer, &KvReq::Put { key: format!("{prefix}{n}"), value })
            }
        };
        match sent {
            Ok(id) => {
                self.sent += 1;
                self.report.bytes_sent += self.data.len() as u64;
                self.in_flight.push((id, Instant::now()));
            }
            Err(e) => cx.log(guest_sdk::abi::LOG_WARN, &format!("bulk round {n} to {} failed: {e}", self.peer)),
        }
    }

    /// Takes the answer to `id`; false if it is not one of this game's.
    fn handle_reply(&mut self, id: RequestId, reply: &Payload<'_>) -> bool {
        let Some(i) = self.in_flight.iter().position(|(r, _)| *r == id) else { return false };
        let (_, sent_at) = self.in_flight.swap_remove(i);
        let us = sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32;
        self.report.rounds += 1;
        self.report.bytes_received += reply.bytes().len() as u64;
        if self.report.round_us.len() < MAX_ROUND_TIMES {
            self.report.round_us.push(us);
        }
        let good = match &self.kv_prefix {
            None => reply.decode::<Bytes>().is_ok_and(|b| b.0 == self.data),
            Some(_) => reply.decode::<protocols::KvReply>().is_ok(),
        };
        if !good {
            self.report.mismatches += 1;
        }
        true
    }
}

/// `len` bytes that depend on `seed`, all printable ASCII.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            b'!' + (s % 94) as u8
        })
        .collect()
}

#[derive(Default)]
struct PingPong {
    report: PingReport,
    play: Option<Play>,
    bulk: Option<Bulk>,
}

impl PingPong {
    fn send_next(&mut self, cx: &mut Context) {
        let Some(p) = self.play.as_mut() else { return };
        if p.sent >= p.rounds {
            return;
        }
        p.sent += 1;
        let sent = if p.requests {
            cx.request(p.peer, &PingMsg::Echo(p.sent)).map(|_| ())
        } else {
            cx.send(p.peer, &PingMsg::Ping { n: p.sent })
        };
        if let Err(e) = sent {
            cx.log(guest_sdk::abi::LOG_WARN, &format!("ping {} to {} failed: {e}", p.sent, p.peer));
            p.sent -= 1;
        }
    }

    fn one_done(&mut self, cx: &mut Context) {
        let Some(p) = self.play.as_mut() else { return };
        p.done += 1;
        if p.done >= p.rounds {
            let p = self.play.take().expect("checked above");
            if let Some(w) = p.waiter {
                let _ = cx.reply_later(w, &self.report);
            }
        } else {
            self.send_next(cx);
        }
    }
}

impl PingPong {
    fn play_bulk(
        &mut self,
        cx: &mut Context,
        peer: Address,
        rounds: u64,
        window: u32,
        bytes: u32,
        kv_prefix: Option<String>,
    ) {
        let waiter = cx.defer_reply();
        if self.bulk.is_some() {
            if let Some(w) = waiter {
                let _ = cx.reply_later(w, &"error: a bulk game is already in progress");
            }
            return;
        }
        let mut b = Bulk {
            peer,
            rounds,
            sent: 0,
            data: pattern(cx.me().0 ^ u64::from(bytes), bytes as usize),
            kv_prefix,
            in_flight: Vec::new(),
            started: Instant::now(),
            report: BulkReport::default(),
            waiter,
        };
        if rounds == 0 {
            if let Some(w) = b.waiter {
                let _ = cx.reply_later(w, &b.report);
            }
            return;
        }
        for _ in 0..window.max(1) {
            b.send_next(cx);
        }
        if b.in_flight.is_empty() {
            // Every send failed (logged): answer now rather than never.
            if let Some(w) = b.waiter.take() {
                let _ = cx.reply_later(w, &b.report);
            }
            return;
        }
        self.bulk = Some(b);
    }
}

impl Reactor for PingPong {
    type Msg = PingMsg;

    fn start(&mut self, _cx: &mut Context, init: Payload<'_>) {
        if let Ok(PingInit { peer: Some(p) }) = init.decode::<PingInit>() {
            self.report.peer = p;
        }
    }

    fn react(&mut self, cx: &mut Context, msg: PingMsg) {
        match msg {
            PingMsg::Ping { n } => {
                self.report.pings += 1;
                let _ = cx.send(cx.sender(), &PingMsg::Pong { n });
            }
            PingMsg::Pong { .. } => {
                self.report.pongs += 1;
                self.one_done(cx);
            }
            PingMsg::Echo(n) => {
                let _ = cx.reply(&n);
            }
            PingMsg::Report => {
                let _ = cx.reply(&self.report);
            }
            PingMsg::BulkEcho { data, .. } => {
                let _ = cx.reply(&data);
            }
            PingMsg::PlayBulk { peer, rounds, window, bytes } => {
                self.play_bulk(cx, Address(peer), rounds, window, bytes, None);
            }
            PingMsg::Scatter { peers, key } => {
                cx.set_affinity(key);
                let sent = peers.iter().filter(|&&p| cx.send(Address(p), &PingMsg::Ping { n: 0 }).is_ok()).count() as u64;
                let _ = cx.reply(&sent);
            }
            PingMsg::PlayKv { kv, rounds, window, bytes, prefix } => {
                self.play_bulk(cx, Address(kv), rounds, window, bytes, Some(prefix));
            }
            PingMsg::Play { peer, rounds, window, requests } => {
                let peer = match peer {
                    Some(p) => Address(p),
                    None => match cx.spawn(ModuleRef::Own, &PingInit { peer: Some(cx.me().0) }) {
                        Ok(a) => a,
                        Err(e) => {
                            let _ = cx.reply(&format!("error: cannot spawn a partner: {e}"));
                            return;
                        }
                    },
                };
                self.report.peer = peer.0;
                let waiter = cx.defer_reply();
                if rounds == 0 {
                    if let Some(w) = waiter {
                        let _ = cx.reply_later(w, &self.report);
                    }
                    return;
                }
                self.play = Some(Play { peer, rounds, sent: 0, done: 0, requests, waiter });
                for _ in 0..window.max(1) {
                    self.send_next(cx);
                }
            }
        }
    }

    fn on_reply(&mut self, cx: &mut Context, id: RequestId, reply: Payload<'_>) {
        if let Some(b) = self.bulk.as_mut()
            && b.handle_reply(id, &reply)
        {
            if b.report.rounds < b.rounds {
                b.send_next(cx);
            }
            // Done, or stuck (a send failed and nothing is in flight): the
            // report's `rounds` tells which.
            if b.in_flight.is_empty() {
                let mut b = self.bulk.take().expect("checked above");
                b.report.elapsed_us = b.started.elapsed().as_micros() as u64;
                if let Some(w) = b.waiter {
                    let _ = cx.reply_later(w, &b.report);
                }
            }
            return;
        }
        self.report.echoes += 1;
        self.one_done(cx);
    }
}

guest_sdk::export!(PingPong);
