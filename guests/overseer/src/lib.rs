//! A supervisor and its workers in one module: as a supervisor it declares
//! a group policy and spawns durable children of its own module; each
//! child is a counter that fails on command. Any of them monitors and
//! links on command and keeps the `Down`s it gets.
use guest_sdk::prelude::*;
use protocols::OverseerMsg;

#[derive(Default)]
struct Overseer {
    value: u64,
    children: Vec<u64>,
    downs: Vec<(u64, String, bool)>,
}

fn answer(r: Result<(), SendError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("{e}"),
    }
}

impl Reactor for Overseer {
    type Msg = OverseerMsg;

    fn start(&mut self, _cx: &mut Context, init: Payload<'_>) {
        self.value = init.decode::<u64>().unwrap_or(0);
    }

    fn react(&mut self, cx: &mut Context, msg: OverseerMsg) {
        match msg {
            OverseerMsg::Supervise { strategy, restart, max_restarts, within_ms, attempts, backoff_ms } => {
                let strategy = match strategy.as_str() {
                    "one_for_all" => Strategy::OneForAll,
                    "rest_for_one" => Strategy::RestForOne,
                    _ => Strategy::OneForOne,
                };
                let restart = if restart == "fresh" { Restart::Fresh } else { Restart::Resume };
                let spec = Supervision {
                    strategy,
                    restart,
                    max_restarts,
                    within: core::time::Duration::from_millis(within_ms),
                    attempts,
                    backoff: backoff_ms.map_or(Supervision::default().backoff, core::time::Duration::from_millis),
                };
                let r = cx.supervise(spec);
                let _ = cx.reply(&answer(r));
            }
            OverseerMsg::Spawn { n } => {
                let child = cx.spawn_durable(ModuleRef::Own, &n, Durability::Synced).map_or(0, |a| a.0);
                self.children.push(child);
                let _ = cx.reply(&child);
            }
            OverseerMsg::SpawnPlain { n } => {
                let child = cx.spawn(ModuleRef::Own, &n).map_or(0, |a| a.0);
                self.children.push(child);
                let _ = cx.reply(&child);
            }
            OverseerMsg::Add(k) => {
                self.value += k;
                let _ = cx.reply(&self.value);
            }
            OverseerMsg::Get => {
                let _ = cx.reply(&self.value);
            }
            OverseerMsg::Crash => panic!("crashed on command at value {}", self.value),
            OverseerMsg::Monitor(a) => {
                let r = cx.monitor(Address(a));
                let _ = cx.reply(&answer(r));
            }
            OverseerMsg::Demonitor(a) => {
                let r = cx.demonitor(Address(a));
                let _ = cx.reply(&answer(r));
            }
            OverseerMsg::Link(a) => {
                let r = cx.link(Address(a));
                let _ = cx.reply(&answer(r));
            }
            OverseerMsg::Unlink(a) => {
                let r = cx.unlink(Address(a));
                let _ = cx.reply(&answer(r));
            }
            OverseerMsg::TrapExits(on) => {
                cx.trap_exits(on);
                let _ = cx.reply(&"ok");
            }
            OverseerMsg::Downs => {
                let _ = cx.reply(&self.downs);
            }
            OverseerMsg::MonitorMany { target, n } => {
                let (mut ok, mut refused) = (0u32, None);
                for _ in 0..n {
                    match cx.monitor(Address(target)) {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            refused.get_or_insert(format!("{e}"));
                        }
                    }
                }
                let _ = cx.reply(&(ok, refused));
            }
        }
    }

    fn on_down(&mut self, _cx: &mut Context, down: Down) {
        self.downs.push((down.address.0, down.reason, down.linked));
    }
}

guest_sdk::export!(Overseer);
