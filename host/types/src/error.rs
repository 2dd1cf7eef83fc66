//! Why the runtime did not take a message, answer a request or start a
//! reactor. Each variant's doc says what the failure did to state.

use crate::address::Address;
use crate::failure::Failure;
use guest_sdk::abi;

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No live reactor has that address (it never existed, or it failed),
    /// or no live node has its node id; nothing was queued.
    #[error("no live reactor at {0}")]
    NoSuchReactor(Address),
    /// The destination's inbox (or the way to its node) is full; nothing was
    /// queued. Retry later.
    #[error("the inbox of {0} is full")]
    InboxFull(Address),
    /// The payload exceeds the ABI's limit; nothing was queued.
    #[error("payload of {0} bytes exceeds the limit of {max} bytes", max = abi::MAX_PAYLOAD_LEN)]
    TooLarge(usize),
    /// A reply to a host whose request with that correlation id is not
    /// waiting (never made, answered already, or timed out); nothing was
    /// delivered.
    #[error("no request with correlation id {0:#x} is waiting for a reply")]
    NoSuchRequest(u64),
    /// No correlation id could be issued (the tag source failed to persist
    /// its high-water mark, or is exhausted); nothing was sent.
    #[error("cannot issue a correlation id: {0}")]
    Tags(String),
    /// Queuing it would take the destination (or the node) past its byte
    /// budget; nothing was queued. Retry later.
    #[error("{0} has no room: the bytes queued for it would exceed its byte budget")]
    OverBudget(Address),
    /// The sender has as many requests waiting for replies as it may;
    /// nothing was sent.
    #[error("{0} has too many requests waiting for replies")]
    TooManyRequests(Address),
    /// The shard that runs the destination has stopped (its thread
    /// panicked); nothing was queued.
    #[error("shard {0} has stopped: its thread panicked, its reactors are gone")]
    ShardDown(usize),
}

/// Why a spawn did not produce a running reactor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The shard is at `max_reactors`; nothing was started.
    #[error("the shard is at its limit of {0} reactors")]
    Limit(usize),
    /// The shard's command ring stayed full; nothing was started.
    #[error("the shard is too busy to take a spawn; retry")]
    Busy,
    /// No address could be issued (the tag source failed to persist its
    /// high-water mark, or is exhausted); nothing was started.
    #[error("cannot issue an address: {0}")]
    Tags(String),
    /// The reactor failed while instantiating or in its init entry point; it
    /// does not exist afterwards.
    #[error("the reactor {0} failed during start-up: {1}")]
    Failed(Address, Failure),
    /// The parent has as many children alive (or starting) as it may;
    /// nothing was started.
    #[error("{0} has reached its quota of {1} children")]
    Quota(Address, u32),
    /// The node has no room in its byte budget for the new reactor; nothing
    /// was started.
    #[error("the node's byte budget has no room for another reactor")]
    OverBudget,
    /// The shard that would run it has stopped (its thread panicked);
    /// nothing was started.
    #[error("shard {0} has stopped: its thread panicked")]
    ShardDown(usize),
    /// It was to be journaled and cannot be; nothing was started.
    #[error("cannot journal the reactor: {0}")]
    Journal(String),
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The request could not be sent; nothing was queued.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The reactor failed before answering.
    #[error("reactor {0} failed before replying: {1}")]
    Failed(Address, Failure),
    /// The node the reactor lived on (the second field) went down before
    /// it answered: the request may or may not have been applied.
    #[error("node {1}, where reactor {0} lived, went down before it replied")]
    NodeDown(Address, u16),
    /// The reactor answered that the request failed (an error reply: its
    /// `reply_error`, an undecodable request, or the host for it, e.g. a
    /// reply over the limit of a message).
    #[error("reactor {0} answered with an error: {1}")]
    Refused(Address, String),
    /// The reactor went idle without answering.
    #[error("reactor {0} handled the request without replying")]
    NoReply(Address),
    /// No answer came within the time the caller allowed; a late answer is
    /// dropped.
    #[error("no reply from {0} within the timeout")]
    Timeout(Address),
    /// The answer did not decode as the expected type.
    #[error("cannot decode the reply: {0}")]
    Decode(String),
}

/// An error and its causes, joined by `: ` (for a message that must carry
/// the whole account on one line: an admin answer, a refusal).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
