//! A bank of accounts whose every answer depends on what a journal must
//! record to replay it: account numbers from host randomness, timestamps
//! from the host's clocks, a std `HashMap` whose iteration order comes from
//! a random seed, replies from another reactor, a spawned child's address.
//! A withdrawal past the balance panics: the production failure the
//! post-mortem replay reproduces.
use guest_sdk::prelude::*;
use protocols::{CounterMsg, LedgerReq};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Account {
    owner: String,
    balance: u64,
    opened_ns: u64,
}

struct Ledger {
    accounts: HashMap<u64, Account>,
    audits: Vec<u64>,
    children: Vec<u64>,
    started: Instant,
    keep: Vec<Vec<u8>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self { accounts: HashMap::new(), audits: Vec::new(), children: Vec::new(), started: Instant::now(), keep: Vec::new() }
    }
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Reactor for Ledger {
    type Msg = LedgerReq;

    fn start(&mut self, _cx: &mut Context, _init: Payload<'_>) {
        self.started = Instant::now();
    }

    fn react(&mut self, cx: &mut Context, msg: LedgerReq) {
        match msg {
            LedgerReq::Open { owner } => {
                let account = cx.random_u64();
                self.accounts.insert(account, Account { owner, balance: 0, opened_ns: wall_ns() });
                let _ = cx.reply(&account);
            }
            LedgerReq::Deposit { account, amount } => {
                let balance = self.accounts.get_mut(&account).map(|a| {
                    a.balance += amount;
                    a.balance
                });
                let _ = cx.reply(&balance);
            }
            LedgerReq::Withdraw { account, amount } => {
                let Some(a) = self.accounts.get_mut(&account) else {
                    let _ = cx.reply(&None::<u64>);
                    return;
                };
                // The bug: no check before the subtraction.
                a.balance = a.balance.checked_sub(amount).unwrap_or_else(|| {
                    panic!("account {account:016x} of {} would be overdrawn: balance {}, withdrawal {amount}", a.owner, a.balance)
                });
                let _ = cx.reply(&Some(a.balance));
            }
            LedgerReq::Accounts => {
                let list: Vec<(u64, String, u64)> =
                    self.accounts.iter().map(|(k, a)| (*k, a.owner.clone(), a.balance)).collect();
                let _ = cx.reply(&list);
            }
            LedgerReq::Stamp => {
                let _ = cx.reply(&(wall_ns(), self.started.elapsed().as_nanos() as u64));
            }
            LedgerReq::Audit { at, n } => {
                let _ = cx.request(Address(at), &CounterMsg::Add(n));
                let _ = cx.reply(&self.audits.len());
            }
            LedgerReq::DurableChild { n } => {
                let child = cx.spawn_durable(ModuleRef::Name("counter"), &n, Durability::Synced).map_or(0, |a| a.0);
                self.children.push(child);
                let _ = cx.reply(&child);
            }
            LedgerReq::StandbyChild { n } => {
                let child = cx.spawn_durable(ModuleRef::Name("counter"), &n, Durability::Standby).map_or(0, |a| a.0);
                self.children.push(child);
                let _ = cx.reply(&child);
            }
            LedgerReq::Child { n } => {
                let child = cx.spawn(ModuleRef::Name("counter"), &n).map_or(0, |a| a.0);
                self.children.push(child);
                let _ = cx.reply(&child);
            }
            LedgerReq::Digest => {
                let mut h = self.accounts.hasher().build_hasher();
                let mut keys: Vec<&u64> = self.accounts.keys().collect();
                keys.sort();
                for k in keys {
                    let a = &self.accounts[k];
                    (k, &a.owner, a.balance, a.opened_ns).hash(&mut h);
                }
                (&self.audits, &self.children, self.keep.len()).hash(&mut h);
                let _ = cx.reply(&h.finish());
            }
            LedgerReq::Grow { mib } => {
                let mut block = vec![0u8; (mib as usize) << 20];
                for i in (0..block.len()).step_by(4096) {
                    block[i] = 1;
                }
                self.keep.push(block);
                let _ = cx.reply(&self.keep.len());
            }
        }
    }

    fn on_reply(&mut self, _cx: &mut Context, _id: RequestId, reply: Payload<'_>) {
        if let Ok(v) = reply.decode::<u64>() {
            self.audits.push(v);
        }
    }
}

guest_sdk::export!(Ledger);
