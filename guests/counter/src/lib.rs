//! The smallest reactor: a number that messages add to.
use guest_sdk::prelude::*;
use protocols::CounterMsg;

#[derive(Default)]
struct Counter {
    n: u64,
}

impl Reactor for Counter {
    type Msg = CounterMsg;

    fn start(&mut self, _cx: &mut Context, init: Payload<'_>) {
        self.n = init.decode::<u64>().unwrap_or(0);
    }

    fn react(&mut self, cx: &mut Context, msg: CounterMsg) {
        match msg {
            CounterMsg::Add(k) => {
                self.n = self.n.wrapping_add(k);
                let _ = cx.reply(&self.n);
            }
            CounterMsg::Get => {
                let _ = cx.reply(&self.n);
            }
            CounterMsg::MoveNear(peer) => {
                let asked = cx.move_near(Address(peer));
                let _ = cx.reply(&asked);
            }
        }
    }
}

guest_sdk::export!(Counter);
