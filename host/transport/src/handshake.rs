//! Opening authenticated connections: this node's hello, [`dial`] (connect,
//! authenticate as connector, check who answered) and [`accept_handshake`]
//! (authenticate an accepted stream as acceptor). Uses `state`, `io`,
//! `faults` (a peer cut off by an injected partition is refused) and
//! `error`.

use crate::error::ConnError;
use crate::io::{read_frame, write_frame};
use crate::state::{Inner, LaneKey};
use reactor_net::auth::{Handshake, Peer, Role, Step};
use reactor_net::frame::{Frame, Hello};
use std::sync::Arc;
use tokio::net::TcpStream;

/// This node's hello for a connection of `key`'s channel and lane,
/// with a fresh nonce.
pub(crate) fn hello_for(inner: &Inner, key: LaneKey) -> Hello {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).expect("the OS random source works");
    Hello {
        cluster: inner.config.cluster.clone(),
        node: inner.config.me.id,
        incarnation: inner.config.me.incarnation,
        name: inner.config.me.name.clone(),
        channel: inner.channel_name(key.channel),
        lane: key.lane,
        nonce,
    }
}

/// Dials `addr` for `key` and authenticates. For `key.peer` 0 (a seed) any
/// node is accepted; otherwise it must be that node. Returns the stream,
/// the bytes read past the handshake, and who the peer proved it is.
pub(crate) async fn dial(inner: &Arc<Inner>, addr: &str, key: LaneKey) -> Result<(TcpStream, Vec<u8>, Peer), ConnError> {
    let timeout = inner.config.connect_timeout;
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let hello = hello_for(inner, key);
        let (mut hs, first) = Handshake::start(Role::Connector, inner.config.secret.clone(), hello);
        write_frame(&mut stream, &first, &mut Vec::new()).await?;
        let mut buf = Vec::new();
        loop {
            let f = read_frame(&mut stream, &mut buf).await?;
            match hs.on_frame(f)? {
                Step::Send(f) => write_frame(&mut stream, &f, &mut Vec::new()).await?,
                Step::Done(peer) => return Ok::<_, ConnError>((stream, buf, peer)),
            }
        }
    };
    let (stream, buf, peer) = tokio::time::timeout(timeout, fut).await.map_err(|_| ConnError::Timeout("connecting"))??;
    if key.peer != 0 && peer.node != key.peer {
        return Err(ConnError::Protocol(format!("{addr} is node {}, expected node {}", peer.node, key.peer)));
    }
    if peer.node == inner.config.me.id {
        return Err(ConnError::Protocol(format!("{addr} is this node (id {})", peer.node)));
    }
    if crate::faults::is_cut_off(inner, peer.node) {
        return Err(ConnError::Partitioned(peer.node));
    }
    Ok((stream, buf, peer))
}

/// Authenticates an accepted stream within the connect timeout; `buf`
/// keeps the bytes read past the handshake, `out` is scratch for writing.
/// The acceptor's hello echoes the channel and lane asked for. Who the
/// peer is, is for the caller to check.
pub(crate) async fn accept_handshake(
    inner: &Inner,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<Peer, ConnError> {
    let handshake = async {
        let first = read_frame(stream, buf).await?;
        let Frame::Hello(theirs) = &first else {
            return Err(ConnError::Protocol(format!("{} frame before the hello", first.name())));
        };
        let mut hello = hello_for(inner, LaneKey { peer: 0, channel: 0, lane: theirs.lane });
        hello.channel = theirs.channel.clone();
        let (mut hs, mine) = Handshake::start(Role::Acceptor, inner.config.secret.clone(), hello);
        write_frame(stream, &mine, out).await?;
        let mut next = Some(first);
        loop {
            let f = match next.take() {
                Some(f) => f,
                None => read_frame(stream, buf).await?,
            };
            match hs.on_frame(f)? {
                Step::Send(f) => write_frame(stream, &f, out).await?,
                Step::Done(peer) => return Ok(peer),
            }
        }
    };
    tokio::time::timeout(inner.config.connect_timeout, handshake)
        .await
        .map_err(|_| ConnError::Timeout("authenticating"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{config, inner, secret};
    use reactor_net::auth::AuthError;
    use tokio::net::TcpListener;

    /// A listener, and the node at its other end authenticating what it
    /// accepts with `server`'s settings.
    async fn acceptor(server: Arc<Inner>) -> (String, tokio::task::JoinHandle<Result<Peer, ConnError>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            accept_handshake(&server, &mut s, &mut Vec::new(), &mut Vec::new()).await
        });
        (addr, task)
    }

    #[tokio::test]
    async fn both_sides_learn_who_the_other_is_and_the_lane() {
        let (server, _, _rx1) = inner(config(1));
        let (client, _, _rx2) = inner(config(2));
        let (addr, task) = acceptor(server).await;
        let key = LaneKey { peer: 1, channel: 1, lane: 3 };
        let (_stream, rest, peer) = dial(&client, &addr, key).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!((peer.node, peer.channel.as_str(), peer.lane), (1, "default", 3));
        let theirs = task.await.unwrap().unwrap();
        assert_eq!((theirs.node, theirs.channel.as_str(), theirs.lane), (2, "default", 3));
    }

    #[tokio::test]
    async fn a_node_without_the_secret_is_refused_by_both_sides() {
        let (server, _, _rx1) = inner(config(1));
        let mut c = config(2);
        c.secret = secret("a different secret entirely");
        let (client, _, _rx2) = inner(c);
        let (addr, task) = acceptor(server).await;
        let r = dial(&client, &addr, LaneKey { peer: 0, channel: 0, lane: 0 }).await;
        assert!(matches!(r, Err(ConnError::Auth(AuthError::BadMac))), "{r:?}");
        let r = task.await.unwrap();
        assert!(matches!(r, Err(ConnError::Auth(AuthError::BadMac))), "{r:?}");
    }

    #[tokio::test]
    async fn the_dialer_refuses_a_node_other_than_the_one_it_meant() {
        let (server, _, _rx1) = inner(config(1));
        let (client, _, _rx2) = inner(config(2));
        let (addr, _task) = acceptor(server).await;
        let r = dial(&client, &addr, LaneKey { peer: 5, channel: 0, lane: 0 }).await;
        assert!(matches!(&r, Err(ConnError::Protocol(m)) if m.contains("expected node 5")), "{r:?}");
    }

    #[tokio::test]
    async fn a_stream_that_does_not_open_with_a_hello_is_refused() {
        let (server, _, _rx1) = inner(config(1));
        let (addr, task) = acceptor(server).await;
        let mut s = TcpStream::connect(&addr).await.unwrap();
        write_frame(&mut s, &Frame::Ping { nonce: 1 }, &mut Vec::new()).await.unwrap();
        let r = task.await.unwrap();
        assert!(matches!(&r, Err(ConnError::Protocol(m)) if m.contains("before the hello")), "{r:?}");
    }
}
