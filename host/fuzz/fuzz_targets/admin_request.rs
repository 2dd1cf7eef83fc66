//! Fuzzes the admin protocol's request parser with what a client can send:
//! the input is split into lines as the node splits its reader's bytes
//! (at newlines, at most `MAX_LINE` each). No line may panic the parser;
//! every line gets an answer that is one line of JSON carrying the
//! request's id; an error never quotes more of the line than the client's
//! own fields.
#![no_main]

#[path = "../../src/node/admin/protocol.rs"]
#[allow(dead_code, unreachable_pub)]
mod protocol;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.len() > protocol::MAX_LINE {
            continue;
        }
        let (id, answer) = match protocol::parse_request(line) {
            Ok(req) => (req.id.clone(), protocol::answer_ok(&req.id, Value::Null)),
            Err((id, e)) => {
                let text = e.to_string();
                assert!(!text.is_empty());
                if let protocol::RequestError::NotJson(_) = e {
                    assert!(text.len() < 200, "a JSON syntax error is short: {text}");
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
