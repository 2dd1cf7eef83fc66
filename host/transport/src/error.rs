//! The transport's errors: [`StartError`] for its caller, `ConnError` for
//! why one connection ended (logged, and counted as refused when the peer
//! misbehaved). Uses no other module.

use reactor_net::NodeId;
use reactor_net::frame::FrameError;

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound. Nothing was started.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// A setting the wire format cannot carry (a name over 64 bytes, …).
    /// Nothing was started.
    #[error("bad transport setting: {0}")]
    Config(String),
}

/// Why a connection ended (logged). The connection is closed; nothing else
/// is affected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("authentication failed: {0}")]
    Auth(#[from] reactor_net::auth::AuthError),
    #[error("authentication failed: {0}")]
    Secure(#[from] reactor_net::secure::SecureError),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("the peer closed the connection: {0}")]
    Closed(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("node {0} is on the other side of an injected partition")]
    Partitioned(NodeId),
}
