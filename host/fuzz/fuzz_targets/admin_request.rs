//! Fuzzes the admin protocol's request parser with what a client can send:
//! the input is split into lines as the node splits its reader's bytes
//! (at newlines, at most `MAX_LINE` each). No line may panic the parser;
//! every line gets an answer that is one line of JSON carrying the
//! request's id; an error never quotes more of the line than the client's
//! own fields. A request that parses keeps the bounds its op promises
//! (`call`'s timeout; `snapshot`'s and `restore`'s counts and absolute
//! paths).
#![no_main]

#[path = "../../src/node/admin/protocol.rs"]
#[allow(dead_code, unreachable_pub)]
mod protocol;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The bounds a parsed request's fields keep (what the node relies on).
fn check_op(op: &protocol::Op) {
    let absolute = |p: &str| p.starts_with('/') && p.len() <= 4096 && !p.contains('\0');
    match op {
        protocol::Op::Call { timeout_ms: Some(ms), .. } => assert!(*ms <= protocol::MAX_CALL_TIMEOUT_MS),
        protocol::Op::Snapshot { reactors, path, .. } => {
            assert!(absolute(path), "snapshot path {path:?}");
            if let Some(r) = reactors {
                assert!(!r.is_empty() && r.len() <= protocol::MAX_SNAPSHOT_REACTORS);
            }
        }
        protocol::Op::Restore { files, .. } => {
            assert!(!files.is_empty() && files.len() <= protocol::MAX_RESTORE_FILES);
            assert!(files.iter().all(|f| absolute(f)), "restore files {files:?}");
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.len() > protocol::MAX_LINE {
            continue;
        }
        let (id, answer) = match protocol::parse_request(line) {
            Ok(req) => {
                check_op(&req.op);
                (req.id.clone(), protocol::answer_ok(&req.id, Value::Null))
            }
            Err((id, e)) => {
                let text = e.to_string();
                assert!(!text.is_empty());
                match &e {
                    protocol::RequestError::NotJson(_) => {
                        assert!(text.len() < 200, "a JSON syntax error is short: {text}")
                    }
                    // The op quoted is cut at 64 characters.
                    protocol::RequestError::UnknownOp(op) => assert!(op.chars().count() <= 65, "{op}"),
                    _ => {}
                }
                let answer = protocol::answer_err(&id, &text);
                (id, answer)
            }
        };
        assert!(!answer.contains('\n'), "an answer is one line");
        let back: Value = serde_json::from_str(&answer).expect("an answer is JSON");
        assert_eq!(back["id"], id, "the answer carries the request's id");
    }
});
