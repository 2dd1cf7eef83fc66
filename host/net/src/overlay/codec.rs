//! The wire helpers every overlay shares: decoding a message as hostile
//! bytes, encoding our own, and checking the node identities a message
//! carries.

use super::protocol::OverlayError;
use crate::frame::MAX_NAME_LEN;
use crate::node::NodeInfo;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Most bytes of a node address in an overlay message.
pub const MAX_ADDR_LEN: usize = 255;

/// Decodes one overlay message, treating `bytes` as hostile: refuses more
/// than `max_len` bytes before decoding, any postcard error and trailing
/// bytes. Sequences cannot make it allocate more than the input's size
/// (serde caps the preallocation, postcard reads elements one by one).
pub(super) fn decode_message<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, OverlayError> {
    if bytes.len() > max_len {
        return Err(OverlayError::Malformed(format!("{} bytes, more than the limit {max_len}", bytes.len())));
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| OverlayError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(OverlayError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// Encodes an overlay message (our own types: cannot fail).
pub(super) fn encode_message<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_allocvec(msg).unwrap_or_default()
}

/// Checks a [`NodeInfo`] received from the network: a non-zero id, a name
/// of at most [`MAX_NAME_LEN`] bytes, an address of at most
/// [`MAX_ADDR_LEN`] bytes.
pub(super) fn check_info(info: &NodeInfo) -> Result<(), OverlayError> {
    if info.id == 0 {
        return Err(OverlayError::Refused("node id 0".into()));
    }
    if info.name.len() > MAX_NAME_LEN {
        return Err(OverlayError::Refused(format!("node name of {} bytes", info.name.len())));
    }
    if info.addr.len() > MAX_ADDR_LEN {
        return Err(OverlayError::Refused(format!("node address of {} bytes", info.addr.len())));
    }
    Ok(())
}

/// Checks a list of node identities from the network: at most `max` of
/// them (`what` names them in the error), each valid.
pub(super) fn check_chunk(list: &[NodeInfo], max: usize, what: &str) -> Result<(), OverlayError> {
    if list.len() > max {
        return Err(OverlayError::Refused(format!("{} {what} in one message", list.len())));
    }
    list.iter().try_for_each(check_info)
}

