//! The admin protocol's messages, parsed from hostile bytes: one request
//! line in, a typed [`Request`] or a specific [`RequestError`] out, and the
//! answer lines. No I/O, and nothing of the node: it depends on
//! `serde_json`, `hex`, `thiserror` and `reactor-types` alone, so the fuzz
//! target `admin_request` (`host/fuzz`) builds it without wasmtime or tokio.
#![forbid(unsafe_code)]

use reactor_types::{Address, ModuleHash, ParseAddressError};
use serde_json::{Value, json};

/// Longest request line the node reads, newline included: 4 MiB. A longer
/// one gets an error answer and the connection is closed. (Messages sent
/// through the admin socket are therefore at most a little under 4 MiB of
/// JSON; reactors exchange up to 16 MiB among themselves.)
pub const MAX_LINE: usize = 4 << 20;

/// The longest a `call` may ask to wait for its answer: an hour (in
/// milliseconds). A longer `timeout_ms` is refused: a call holds one of the
/// node's blocking threads while it waits.
pub const MAX_CALL_TIMEOUT_MS: u64 = 3_600_000;

/// How much of a client's text an error quotes back at most.
const QUOTE: usize = 64;

/// The ops the protocol knows, for error messages.
const OPS: &str = "status, spawn, send, call, mailbox, snapshot, restore, checkpoint, stop";

/// Most files one `restore` names (a full snapshot and its deltas).
pub const MAX_RESTORE_FILES: usize = 256;
/// Most reactors one `snapshot` names (more: take them all).
pub const MAX_SNAPSHOT_REACTORS: usize = 65536;

/// Why a request line is not a request. The connection stays open (except
/// for an over-long line, which the reader handles before parsing).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    /// The line is not JSON (the parser's position, never the line itself).
    #[error("not a JSON request: {0}")]
    NotJson(String),
    /// The line is JSON but not an object.
    #[error("a request is a JSON object with an \"op\"")]
    NotObject,
    /// The `"id"` is not an integer, a string or null. (A fractional or
    /// huge number would not survive the trip back in the answer exactly,
    /// so the client could not match its answer.)
    #[error("\"id\" must be an integer, a string or null")]
    BadId,
    /// No `"op"` string.
    #[error("the request has no \"op\"")]
    NoOp,
    /// An op the protocol does not know (quoted, cut at 64 characters).
    #[error("unknown op `{0}` ({OPS})")]
    UnknownOp(String),
    /// A field is missing or has the wrong type.
    #[error("{0}")]
    Field(&'static str),
    /// A field that should be an address is not one.
    #[error(transparent)]
    Address(#[from] ParseAddressError),
}

/// A module to spawn: by the hash of a module the node already has
/// (`"sha256:<64 hex digits>"`), or by name or path.
#[derive(Clone, Debug, PartialEq)]
pub enum ModuleRef {
    /// A module already loaded on the node.
    Hash(ModuleHash),
    /// A built guest's name, a name registered on the node, or a file.
    Name(String),
}

/// How durable a spawned reactor is: journaled at this level (see the
/// runtime's journal), or not journaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Not journaled, whatever the node's default.
    Off,
    /// Journal records handed to the operating system.
    Written,
    /// Journal records on this node's disk before the reactor's output of
    /// that call leaves it.
    Synced,
    /// Held by its standby too.
    Standby,
}

impl Durability {
    /// The level named `s` (`none`, `written`, `synced`, `standby`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::Off,
            "written" => Self::Written,
            "synced" => Self::Synced,
            "standby" => Self::Standby,
            _ => return None,
        })
    }
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The node's status report.
    Status,
    /// Start a reactor.
    Spawn {
        /// Its module.
        module: ModuleRef,
        /// The init argument (`None`: empty).
        init: Option<Value>,
        /// Journaled at this level (`None`: the node's default).
        durable: Option<Durability>,
        /// At level `standby`: the node that stands by (`None`: one is
        /// picked).
        standby: Option<u16>,
    },
    /// A one-way message.
    Send {
        /// The reactor.
        to: Address,
        /// The message.
        msg: Value,
    },
    /// A request, whose reply is the answer.
    Call {
        /// The reactor.
        to: Address,
        /// The message.
        msg: Value,
        /// How long to wait (`None`: the node's default; at most
        /// [`MAX_CALL_TIMEOUT_MS`]).
        timeout_ms: Option<u64>,
    },
    /// The messages sent to this node's host.
    Mailbox,
    /// Snapshot live reactors of this node into a file, copy-on-write
    /// (they keep serving).
    Snapshot {
        /// These reactors (`None`: all of the node's).
        reactors: Option<Vec<Address>>,
        /// The file to write (absolute).
        path: String,
        /// A delta on the snapshot their tracked pages are relative to.
        incremental: bool,
        /// Pages stored compressed (LZ4, format version 3).
        compress: bool,
    },
    /// Restore snapshot files (a full one, then deltas) into this node.
    Restore {
        /// The files, in chain order (absolute).
        files: Vec<String>,
        /// Map pages on first touch instead of copying them now.
        lazy: bool,
    },
    /// Take one of the node's own checkpoints now.
    Checkpoint,
    /// Move reactors of this node to less loaded members while it runs
    /// more than its share.
    Rebalance,
    /// Move a live reactor to another node (the node where it lives does
    /// it; progress lines come before the answer).
    Migrate {
        /// The reactor.
        address: Address,
        /// The node to move it to.
        to: u16,
        /// Pre-copy rounds (else stop-and-copy).
        precopy: bool,
    },
    /// Stop the node.
    Stop,
}

/// A parsed request: its id (echoed in the answer) and what it asks.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The client's id for it (`null` if it gave none).
    pub id: Value,
    /// What it asks for.
    pub op: Op,
}

/// Cuts a client's text to [`QUOTE`] characters for an error message.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// Reads an address: `"#n.s:serial"` or a number.
pub fn parse_address(v: &Value) -> Result<Address, RequestError> {
    match v {
        Value::Number(n) => n.as_u64().map(Address).ok_or(RequestError::Field("an address number must be a u64")),
        Value::String(s) => Ok(s.parse::<Address>()?),
        _ => Err(RequestError::Field("an address is a string like \"#1.0:5\" or a number")),
    }
}

/// Reads a module reference: `"sha256:<hex>"` is a hash, anything else a
/// name or path.
pub fn parse_module(name: &str) -> Result<ModuleRef, RequestError> {
    let Some(hex_digits) = name.strip_prefix("sha256:") else {
        return Ok(ModuleRef::Name(name.to_owned()));
    };
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut hash)
        .map_err(|_| RequestError::Field("a module hash is \"sha256:\" and 64 hex digits"))?;
    Ok(ModuleRef::Hash(ModuleHash(hash)))
}

/// Parses one request line (without or with its newline). On error, also
/// gives the request's id if the line had one, for the answer.
pub fn parse_request(line: &[u8]) -> Result<Request, (Value, RequestError)> {
    let v: Value = serde_json::from_slice(line).map_err(|e| {
        // serde_json's message names a position and a class of error, never
        // the input's text.
        (Value::Null, RequestError::NotJson(e.to_string()))
    })?;
    let Value::Object(mut req) = v else { return Err((Value::Null, RequestError::NotObject)) };
    let id = req.remove("id").unwrap_or(Value::Null);
    let exact = match &id {
        Value::Null | Value::String(_) => true,
        Value::Number(n) => n.is_u64() || n.is_i64(),
        _ => false,
    };
    if !exact {
        return Err((Value::Null, RequestError::BadId));
    }
    match parse_op(&mut req) {
        Ok(op) => Ok(Request { id, op }),
        Err(e) => Err((id, e)),
    }
}

fn parse_op(req: &mut serde_json::Map<String, Value>) -> Result<Op, RequestError> {
    let op = match req.get("op") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(RequestError::NoOp),
    };
    Ok(match op.as_str() {
        "status" => Op::Status,
        "mailbox" => Op::Mailbox,
        "stop" => Op::Stop,
        "spawn" => {
            let module = match req.get("module") {
                Some(Value::String(s)) => parse_module(s)?,
                _ => return Err(RequestError::Field("spawn needs \"module\": a name, a path or \"sha256:<hex>\"")),
            };
            let init = match req.remove("init") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v),
            };
            let durable = match req.get("durable") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(
                    Durability::parse(s)
                        .ok_or(RequestError::Field("\"durable\" is \"none\", \"written\", \"synced\" or \"standby\""))?,
                ),
                Some(_) => return Err(RequestError::Field("\"durable\" is \"none\", \"written\", \"synced\" or \"standby\"")),
            };
            let standby = match req.get("standby") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|&n| n >= 1)
                        .ok_or(RequestError::Field("\"standby\" is a node id (1 to 65535)"))?,
                ),
            };
            if standby.is_some() && durable != Some(Durability::Standby) {
                return Err(RequestError::Field("\"standby\" names a standby node, for \"durable\": \"standby\" only"));
            }
            Op::Spawn { module, init, durable, standby }
        }
        "send" | "call" => {
            let to = parse_address(req.get("to").ok_or(RequestError::Field("send and call need \"to\""))?)?;
            let msg = req.remove("msg").ok_or(RequestError::Field("send and call need \"msg\""))?;
            if op == "send" {
                Op::Send { to, msg }
            } else {
                let timeout_ms = match req.get("timeout_ms") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().filter(|&ms| ms <= MAX_CALL_TIMEOUT_MS).ok_or(RequestError::Field(
                        "\"timeout_ms\" is a number of milliseconds, at most 3600000 (an hour)",
                    ))?),
                };
                Op::Call { to, msg, timeout_ms }
            }
        }
        "checkpoint" => Op::Checkpoint,
        "rebalance" => Op::Rebalance,
        "migrate" => {
            let address = parse_address(req.get("address").ok_or(RequestError::Field("migrate needs \"address\""))?)?;
            let to = req
                .get("to")
                .and_then(Value::as_u64)
                .filter(|n| (1..=u64::from(reactor_types::address::MAX_NODE)).contains(n))
                .ok_or(RequestError::Field("migrate needs \"to\": a node id, 1 to 32767"))? as u16;
            let precopy = match req.get("precopy") {
                None | Some(Value::Null) => true,
                v => flag(v, "\"precopy\" is true or false")?,
            };
            Op::Migrate { address, to, precopy }
        }
        "snapshot" => {
            let reactors = match req.get("reactors") {
                Some(Value::String(s)) if s == "all" => None,
                Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_SNAPSHOT_REACTORS => {
                    Some(a.iter().map(parse_address).collect::<Result<Vec<_>, _>>()?)
                }
                _ => {
                    return Err(RequestError::Field(
                        "snapshot needs \"reactors\": \"all\" or a list of 1 to 65536 addresses",
                    ));
                }
            };
            let path = absolute_path(req.get("path"), "snapshot needs \"path\": an absolute file path")?;
            let incremental = flag(req.get("incremental"), "\"incremental\" is true or false")?;
            let compress = flag(req.get("compress"), "\"compress\" is true or false")?;
            Op::Snapshot { reactors, path, incremental, compress }
        }
        "restore" => {
            let files = match req.get("files") {
                Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_RESTORE_FILES => a
                    .iter()
                    .map(|f| absolute_path(Some(f), "restore's \"files\" are absolute file paths"))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(RequestError::Field("restore needs \"files\": a list of 1 to 256 absolute paths")),
            };
            let lazy = match req.get("lazy") {
                None | Some(Value::Null) => true,
                v => flag(v, "\"lazy\" is true or false")?,
            };
            Op::Restore { files, lazy }
        }
        other => return Err(RequestError::UnknownOp(quote(other))),
    })
}

/// An absolute path (the node does not share the client's directory).
fn absolute_path(v: Option<&Value>, what: &'static str) -> Result<String, RequestError> {
    match v {
        Some(Value::String(s)) if s.starts_with('/') && s.len() <= 4096 && !s.contains('\0') => Ok(s.clone()),
        _ => Err(RequestError::Field(what)),
    }
}

/// An optional boolean (absent: false).
fn flag(v: Option<&Value>, what: &'static str) -> Result<bool, RequestError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        _ => Err(RequestError::Field(what)),
    }
}

/// A progress line (without its newline) of a request still running.
pub fn answer_progress(id: &Value, progress: Value) -> String {
    json!({"id": id, "progress": progress}).to_string()
}

/// The answer line (without its newline) to a request that succeeded.
pub fn answer_ok(id: &Value, ok: Value) -> String {
    json!({"id": id, "ok": ok}).to_string()
}

/// The answer line (without its newline) to a request that failed, or to
/// none (`id` null: a refused connection, an unreadable line).
pub fn answer_err(id: &Value, err: &str) -> String {
    json!({"id": id, "err": err}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(line: &str) -> Result<Op, RequestError> {
        parse_request(line.as_bytes()).map(|r| r.op).map_err(|(_, e)| e)
    }

    #[test]
    fn migrate_and_rebalance_parse_and_refuse_bad_fields() {
        assert_eq!(
            op(r##"{"op":"migrate","address":"#1.0:5","to":2}"##),
            Ok(Op::Migrate { address: "#1.0:5".parse().unwrap(), to: 2, precopy: true })
        );
        assert_eq!(op(r#"{"op":"migrate","address":9,"to":32767,"precopy":false}"#), Ok(Op::Migrate { address: Address(9), to: 32767, precopy: false }));
        assert_eq!(op(r#"{"op":"rebalance"}"#), Ok(Op::Rebalance));
        for bad in [
            r#"{"op":"migrate","to":2}"#,
            r#"{"op":"migrate","address":9}"#,
            r#"{"op":"migrate","address":9,"to":0}"#,
            r#"{"op":"migrate","address":9,"to":32768}"#,
            r#"{"op":"migrate","address":9,"to":"2"}"#,
            r#"{"op":"migrate","address":9,"to":2,"precopy":"yes"}"#,
        ] {
            assert!(op(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_restore_and_checkpoint_parse_and_refuse_bad_fields() {
        assert_eq!(
            op(r#"{"op":"snapshot","reactors":"all","path":"/tmp/a.snap"}"#),
            Ok(Op::Snapshot { reactors: None, path: "/tmp/a.snap".into(), incremental: false, compress: false })
        );
        assert_eq!(
            op(r##"{"op":"snapshot","reactors":["#1.0:5",7],"path":"/x","incremental":true,"compress":true}"##),
            Ok(Op::Snapshot {
                reactors: Some(vec!["#1.0:5".parse().unwrap(), Address(7)]),
                path: "/x".into(),
                incremental: true,
                compress: true
            })
        );
        assert_eq!(op(r#"{"op":"restore","files":["/a","/b"]}"#), Ok(Op::Restore { files: vec!["/a".into(), "/b".into()], lazy: true }));
        assert_eq!(op(r#"{"op":"restore","files":["/a"],"lazy":false}"#), Ok(Op::Restore { files: vec!["/a".into()], lazy: false }));
        assert_eq!(op(r#"{"op":"checkpoint"}"#), Ok(Op::Checkpoint));
        for bad in [
            r#"{"op":"snapshot","reactors":[],"path":"/a"}"#,
            r#"{"op":"snapshot","reactors":"some","path":"/a"}"#,
            r#"{"op":"snapshot","reactors":"all","path":"relative.snap"}"#,
            r#"{"op":"snapshot","reactors":"all"}"#,
            r#"{"op":"snapshot","reactors":"all","path":"/a","incremental":"yes"}"#,
            r#"{"op":"restore","files":[]}"#,
            r#"{"op":"restore","files":["rel"]}"#,
            r#"{"op":"restore","files":"/a"}"#,
            r#"{"op":"restore","files":["/a"],"lazy":1}"#,
        ] {
            assert!(matches!(op(bad), Err(RequestError::Field(_)) | Err(RequestError::Address(_))), "{bad}: {:?}", op(bad));
        }
    }
}
