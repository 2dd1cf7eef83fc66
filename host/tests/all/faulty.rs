//! A misbehaving guest fails alone, with a readable reason; the host and
//! every other reactor keep running.
use crate::util::*;
use protocols::{CounterMsg, FaultyCmd};
use reactor_runtime::{Address, CallError, FailureReason, Limits, ReactorState, Shard, ShardConfig, abi};
use std::time::Duration;

fn setup(limits: Limits) -> (Shard, Address, Address) {
    let mut rt = shard_with(ShardConfig { limits, ..ShardConfig::default() });
    let bystander = rt.spawn_with(&module("counter"), &40u64).unwrap();
    let faulty = rt.spawn(&module("faulty"), &[]).unwrap();
    (rt, bystander, faulty)
}

/// Sends `cmd`, expects the faulty reactor to fail, checks the bystander
/// still works, and returns the failure reason.
fn fail_with(cmd: FaultyCmd, limits: Limits) -> (FailureReason, Option<String>) {
    let (mut rt, bystander, faulty) = setup(limits);
    let outcome = rt.call_typed::<_, u64>(faulty, &cmd);
    let Err(CallError::Failed(addr, failure)) = outcome else { panic!("{cmd:?}: expected failure, got {outcome:?}") };
    assert_eq!(addr, faulty);
    assert_eq!(rt.state(faulty), Some(ReactorState::Failed(failure.clone())));
    assert_eq!(rt.stats().failed, 1);
    // The failed reactor is gone: sends to it are refused.
    assert!(rt.send_typed(faulty, &FaultyCmd::Ok(1)).is_err());
    // Everyone else is fine.
    let n: u64 = rt.call_typed(bystander, &CounterMsg::Add(2)).unwrap();
    assert_eq!(n, 42);
    (failure.reason, failure.backtrace)
}

#[test]
fn behaving_faulty_answers() {
    let (mut rt, _, faulty) = setup(Limits::default());
    let n: u64 = rt.call_typed(faulty, &FaultyCmd::Ok(41)).unwrap();
    assert_eq!(n, 42);
}

#[test]
fn trap_is_reported_with_backtrace() {
    let (reason, bt) = fail_with(FaultyCmd::Trap, Limits::default());
    assert!(matches!(&reason, FailureReason::Trap(m) if m.contains("unreachable")), "{reason}");
    let bt = bt.expect("a backtrace");
    assert!(bt.contains("reactor_receive"), "backtrace names guest functions: {bt}");
}

#[test]
fn panic_message_is_the_reason() {
    let (reason, _) = fail_with(FaultyCmd::Panic("the flux capacitor".into()), Limits::default());
    assert!(matches!(&reason, FailureReason::Panic(m) if m.contains("the flux capacitor")), "{reason}");
}

#[test]
fn infinite_loop_hits_the_cpu_budget() {
    let limits = Limits { cpu_budget: Duration::from_millis(50), ..Limits::default() };
    let (reason, _) = fail_with(FaultyCmd::LoopForever, limits);
    assert_eq!(reason, FailureReason::CpuBudget(Duration::from_millis(50)));
}

#[test]
fn allocating_forever_hits_the_memory_cap() {
    let limits = Limits { memory_cap: 32 << 20, ..Limits::default() };
    let (reason, _) = fail_with(FaultyCmd::AllocForever, limits);
    match reason {
        FailureReason::MemoryCap { cap, requested } => {
            assert_eq!(cap, 32 << 20);
            assert!(requested > cap);
        }
        other => panic!("expected MemoryCap, got {other}"),
    }
}

#[test]
fn integer_divide_by_zero_traps() {
    let (reason, _) = fail_with(FaultyCmd::DivideByZero, Limits::default());
    assert!(matches!(&reason, FailureReason::Panic(m) if m.contains("divide by zero")) ||
            matches!(&reason, FailureReason::Trap(m) if m.contains("divide by zero")), "{reason}");
}

#[test]
fn stack_overflow_traps() {
    let (reason, _) = fail_with(FaultyCmd::StackOverflow, Limits::default());
    // Rust keeps large locals on a shadow stack in linear memory that grows
    // down from 1 MiB: overflowing it walks below address 0, which the
    // bounds checks catch; deep recursion without such locals exhausts the
    // Wasm call stack instead. Either is a trap, never a host crash.
    assert!(
        matches!(&reason, FailureReason::Trap(m) if m.contains("stack") || m.contains("out of bounds memory access")),
        "{reason}"
    );
}

#[test]
fn garbage_pointers_fail_the_guest_not_the_host() {
    for (cmd, call) in [
        (FaultyCmd::BadSendPointer, abi::IMPORT_SEND),
        (FaultyCmd::BadInboxPointer, abi::IMPORT_INBOX_READ),
        (FaultyCmd::BadLogLength, abi::IMPORT_LOG),
    ] {
        let (reason, _) = fail_with(cmd.clone(), Limits::default());
        match &reason {
            FailureReason::GuestFault(m) => {
                assert!(m.contains(call) && m.contains("outside linear memory"), "{cmd:?}: {m}")
            }
            other => panic!("{cmd:?}: expected GuestFault, got {other}"),
        }
    }
}

#[test]
fn proc_exit_is_a_failure_with_its_code() {
    let (reason, _) = fail_with(FaultyCmd::Exit(3), Limits::default());
    assert_eq!(reason, FailureReason::Exit(3));
}

#[test]
fn bad_arguments_get_status_codes_not_failures() {
    let (mut rt, _, faulty) = setup(Limits::default());
    let s: i64 = rt.call_typed(faulty, &FaultyCmd::BadSpawnRef).unwrap();
    assert_eq!(s, abi::STATUS_BAD_ARGUMENT as i64);
    let s: i32 = rt.call_typed(faulty, &FaultyCmd::HugeSend).unwrap();
    assert_eq!(s, abi::STATUS_TOO_LARGE);
    assert_eq!(rt.state(faulty), Some(ReactorState::Running));
}

/// A reply over the limit of a message does not vanish: the caller gets an
/// error reply saying why (from the host, for the reactor), the host counts
/// and logs it, and the reactor runs on. A send refused is counted too.
#[test]
fn a_reply_over_the_limit_reaches_the_caller_as_an_error() {
    let (mut rt, _, faulty) = setup(Limits::default());
    let len = abi::MAX_PAYLOAD_LEN + 1024;
    let r = rt.call_typed::<_, Vec<u8>>(faulty, &FaultyCmd::BigReply(len));
    let Err(CallError::Refused(from, why)) = r else { panic!("expected an error reply, got {r:?}") };
    assert_eq!(from, faulty);
    assert!(why.contains("over the limit of a message"), "{why}");
    assert_eq!(rt.state(faulty), Some(ReactorState::Running));
    let stats = rt.stats();
    assert_eq!((stats.failed_replies, stats.error_replies, stats.failed_sends), (1, 1, 0));
    // A reply within the limit goes out as ever.
    assert_eq!(rt.call_typed::<_, Vec<u8>>(faulty, &FaultyCmd::BigReply(3)).unwrap(), vec![1, 1, 1]);
    let s: i32 = rt.call_typed(faulty, &FaultyCmd::HugeSend).unwrap();
    assert_eq!(s, abi::STATUS_TOO_LARGE);
    assert_eq!(rt.stats().failed_sends, 1);
}

/// A request the reactor cannot decode is answered with an error reply
/// (not a value that looks like an answer).
#[test]
fn an_undecodable_request_is_answered_with_an_error() {
    let (mut rt, bystander, _) = setup(Limits::default());
    let r = rt.call(bystander, b"\xff\xff\xff".to_vec(), false);
    let Err(CallError::Refused(from, why)) = r else { panic!("expected an error reply, got {r:?}") };
    assert_eq!(from, bystander);
    assert!(why.starts_with("undecodable request: "), "{why}");
    assert_eq!(rt.stats().error_replies, 1);
    assert_eq!(rt.call_typed::<_, u64>(bystander, &CounterMsg::Get).unwrap(), 40);
}

#[test]
fn queued_requests_to_a_failing_reactor_are_answered_with_the_failure() {
    let (mut rt, _, faulty) = setup(Limits::default());
    let enc = |c: &FaultyCmd| postcard::to_allocvec(c).unwrap();
    let a = rt.request(faulty, enc(&FaultyCmd::Trap), false).unwrap();
    let b = rt.request(faulty, enc(&FaultyCmd::Ok(1)), false).unwrap();
    rt.run_until_idle();
    for id in [a, b] {
        assert!(matches!(rt.take_reply(id), Some(Err(CallError::Failed(..)))));
    }
}
