//! Two reactors exchanging messages, for latency and throughput: one-way
//! ping/pong, request–response echoes between reactors, and echo requests
//! from the outside world.
use guest_sdk::prelude::*;
use protocols::{PingInit, PingMsg, PingReport};

struct Play {
    peer: Address,
    rounds: u64,
    sent: u64,
    done: u64,
    requests: bool,
    waiter: Option<PendingReply>,
}

#[derive(Default)]
struct PingPong {
    report: PingReport,
    play: Option<Play>,
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

    fn on_reply(&mut self, cx: &mut Context, _id: RequestId, _reply: Payload<'_>) {
        self.report.echoes += 1;
        self.one_done(cx);
    }
}

guest_sdk::export!(PingPong);
