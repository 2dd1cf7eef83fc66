//! Every kind of bad module is refused with an error that names the problem,
//! and the engine keeps working afterwards.
use crate::util::*;
use reactor_runtime::LoadError;

const ABI_OK: &str = r#"(@custom "reactor.abi" "\01\00\00\00")"#;
const EXPORTS_OK: &str = r#"
    (memory (export "memory") 1)
    (func (export "reactor_init") (param i32) (result i32) i32.const 0)
    (func (export "reactor_receive") (param i32 i32) (result i32) i32.const 0)
"#;

fn wasm(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {body})")).expect("test module is valid WAT")
}

fn load_err(bytes: &[u8]) -> LoadError {
    match engine().load(bytes) {
        Ok(_) => panic!("module should have been refused"),
        Err(e) => e,
    }
}

#[test]
fn a_minimal_hand_written_reactor_loads_and_runs() {
    let bytes = wasm(&format!("{ABI_OK} {EXPORTS_OK}"));
    let (m, _) = engine().load(&bytes).unwrap();
    let mut rt = shard();
    let a = rt.spawn(&m, &[]).unwrap();
    rt.send(a, vec![1, 2, 3], false).unwrap();
    rt.run_until_idle();
    assert_eq!(rt.state(a), Some(reactor_runtime::ReactorState::Running));
}

#[test]
fn not_wasm() {
    let e = load_err(b"#!/bin/sh\necho hello\n");
    assert!(matches!(e, LoadError::NotWasm(_)), "{e}");
    assert!(e.to_string().contains("magic"), "{e}");
    assert!(matches!(load_err(b""), LoadError::NotWasm(_)));
}

#[test]
fn truncated_or_corrupted() {
    let good = std::fs::read(example_guests::path("counter")).unwrap();
    let e = load_err(&good[..good.len() / 2]);
    assert!(matches!(e, LoadError::Malformed(_)), "{e}");
    let mut bad = good.clone();
    let mid = bad.len() / 3;
    for b in &mut bad[mid..mid + 64] {
        *b = 0xff;
    }
    let e = load_err(&bad);
    assert!(matches!(e, LoadError::Malformed(_)), "{e}");
    let e = load_err(b"\0asm\x02\0\0\0");
    assert!(matches!(e, LoadError::Malformed(_)), "{e}");
}

#[test]
fn component_is_not_a_reactor() {
    let e = load_err(b"\0asm\x0d\0\x01\0");
    assert!(matches!(e, LoadError::Component), "{e}");
}

#[test]
fn missing_abi_section() {
    let e = load_err(&wasm(EXPORTS_OK));
    assert!(matches!(e, LoadError::NoAbiSection), "{e}");
    assert!(e.to_string().contains("reactor.abi"), "{e}");
}

#[test]
fn wrong_abi_version() {
    let e = load_err(&wasm(&format!(r#"(@custom "reactor.abi" "\63\00\00\00") {EXPORTS_OK}"#)));
    assert!(matches!(e, LoadError::AbiVersion { found: 99, expected: 1 }), "{e}");
    let e = load_err(&wasm(&format!(r#"(@custom "reactor.abi" "\01") {EXPORTS_OK}"#)));
    assert!(matches!(e, LoadError::BadAbiSection(1)), "{e}");
}

#[test]
fn missing_exports() {
    let e = load_err(&wasm(&format!(
        r#"{ABI_OK} (memory (export "memory") 1) (func (export "reactor_init") (param i32) (result i32) i32.const 0)"#
    )));
    assert!(matches!(e, LoadError::MissingExport("reactor_receive")), "{e}");
    let e = load_err(&wasm(&format!(
        r#"{ABI_OK} (memory 1) (func (export "reactor_init") (param i32) (result i32) i32.const 0)"#
    )));
    assert!(matches!(e, LoadError::MissingExport("memory")), "{e}");
}

#[test]
fn export_with_wrong_type() {
    let e = load_err(&wasm(&format!(
        r#"{ABI_OK} (memory (export "memory") 1)
           (func (export "reactor_init") (param i64) (result i32) i32.const 0)
           (func (export "reactor_receive") (param i32 i32) (result i32) i32.const 0)"#
    )));
    assert!(matches!(e, LoadError::BadExport { name: "reactor_init", .. }), "{e}");
}

#[test]
fn unknown_or_mistyped_import() {
    let e = load_err(&wasm(&format!(r#"(import "reactor" "teleport" (func)) {ABI_OK} {EXPORTS_OK}"#)));
    match &e {
        LoadError::Import { module, name, .. } => assert_eq!((module.as_str(), name.as_str()), ("reactor", "teleport")),
        other => panic!("expected Import, got {other}"),
    }
    let e = load_err(&wasm(&format!(r#"(import "reactor" "send" (func (param i32))) {ABI_OK} {EXPORTS_OK}"#)));
    assert!(matches!(&e, LoadError::Import { name, .. } if name == "send"), "{e}");
}

#[test]
fn start_failure_is_a_spawn_error_not_a_crash() {
    // init returns a non-zero status
    let bytes = wasm(&format!(
        r#"{ABI_OK} (memory (export "memory") 1)
           (func (export "reactor_init") (param i32) (result i32) i32.const 7)
           (func (export "reactor_receive") (param i32 i32) (result i32) i32.const 0)"#
    ));
    let (m, _) = engine().load(&bytes).unwrap();
    let mut rt = shard();
    match rt.spawn(&m, &[]) {
        Err(reactor_runtime::SpawnError::Failed(_, f)) => {
            assert_eq!(f.reason, reactor_runtime::FailureReason::Status { entry: "reactor_init", status: 7 })
        }
        other => panic!("expected a start-up failure, got {other:?}"),
    }
    assert_eq!(rt.stats().live, 0);
}

#[test]
fn module_cache_survives_restart_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(example_guests::path("counter")).unwrap();
    let cfg = || reactor_runtime::EngineConfig { cache_dir: Some(dir.path().to_path_buf()), ..Default::default() };
    {
        let e = reactor_runtime::Engine::new(cfg()).unwrap();
        assert_eq!(e.load(&bytes).unwrap().1, reactor_runtime::CodeSource::Compiled);
        assert_eq!(e.load(&bytes).unwrap().1, reactor_runtime::CodeSource::Memory);
    }
    {
        let e = reactor_runtime::Engine::new(cfg()).unwrap();
        assert_eq!(e.load(&bytes).unwrap().1, reactor_runtime::CodeSource::Disk);
    }
    // Corrupt every cached artifact: the next engine recompiles, and works.
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len() / 2;
        b[n] ^= 0x55;
        std::fs::write(&p, b).unwrap();
    }
    let e = std::sync::Arc::new(reactor_runtime::Engine::new(cfg()).unwrap());
    let (m, source) = e.load(&bytes).unwrap();
    assert_eq!(source, reactor_runtime::CodeSource::Compiled);
    let mut rt = reactor_runtime::Shard::new(e, Default::default());
    let a = rt.spawn_with(&m, &1u64).unwrap();
    let n: u64 = rt.call_typed(a, &protocols::CounterMsg::Get).unwrap();
    assert_eq!(n, 1);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn counter_bytes() -> &'static [u8] {
        static B: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        B.get_or_init(|| std::fs::read(example_guests::path("counter")).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random bytes are refused, never a panic or a crash.
        #[test]
        fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(engine().load(&bytes).is_err());
        }

        /// A real reactor module with a few bytes changed either still loads
        /// (and then runs or fails cleanly) or is refused with an error.
        #[test]
        fn mutated_modules_never_crash_the_host(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4)
        ) {
            let mut bytes = counter_bytes().to_vec();
            for (at, v) in edits {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            if let Ok((m, _)) = engine().load(&bytes) {
                let limits = reactor_runtime::Limits {
                    cpu_budget: std::time::Duration::from_millis(100),
                    memory_cap: 64 << 20,
                    ..Default::default()
                };
                let mut rt = shard_with(reactor_runtime::ShardConfig { limits, ..Default::default() });
                if let Ok(a) = rt.spawn_with(&m, &1u64) {
                    let _ = rt.call_typed::<_, u64>(a, &protocols::CounterMsg::Get);
                }
            }
        }
    }
}
