//! Opening authenticated connections: this node's hello, [`dial`] (connect,
//! authenticate as connector, check who answered) and [`accept_handshake`]
//! (authenticate an accepted stream as acceptor). By default both run the
//! encrypted Noise handshake of `reactor_net::secure` and check the peer's
//! static key against the keyring; with `insecure_plaintext`, the HMAC
//! handshake of `reactor_net::auth`. Either way the result is a connection
//! whose reader and writer carry frames (sealed into records when
//! encrypted). Uses `state`, `io`, `faults` (a peer cut off by an injected
//! partition is refused) and `error`.

use crate::error::ConnError;
use crate::io::{FrameReader, FrameWriter};
use crate::state::{Inner, LaneKey};
use reactor_net::auth::{self, Peer, Role};
use reactor_net::frame::{Frame, Hello};
use reactor_net::secure;
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

/// An authenticated connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    /// Holds the bytes read past the handshake.
    pub(crate) reader: FrameReader,
    pub(crate) writer: FrameWriter,
    /// Who the peer proved it is.
    pub(crate) peer: Peer,
}

/// Runs this side's handshake on `stream`: `first` is the frame the peer
/// sent already (the acceptor's), `hello` this side's own.
async fn handshake(
    inner: &Inner,
    role: Role,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    hello: Hello,
    mut first: Option<Frame>,
) -> Result<Peer, ConnError> {
    let config = &inner.config;
    if config.insecure_plaintext {
        let (mut hs, mine) = auth::Handshake::start(role, config.secret.clone(), hello);
        writer.write(stream, &mine).await?;
        loop {
            let f = match first.take() {
                Some(f) => f,
                None => reader.read(stream).await?,
            };
            match hs.on_frame(f)? {
                auth::Step::Send(f) => {
                    writer.write(stream, &f).await?;
                }
                auth::Step::Done(peer) => {
                    reader.authenticate(None);
                    return Ok(peer);
                }
            }
        }
    }
    let (mut hs, mine) = secure::Handshake::start(role, &config.secret, &config.static_key, config.signing_key.public(), hello)?;
    if let Some(f) = mine {
        writer.write(stream, &f).await?;
    }
    loop {
        let f = match first.take() {
            Some(f) => f,
            None => reader.read(stream).await?,
        };
        match hs.on_frame(f)? {
            secure::Step::Send(f) => {
                writer.write(stream, &f).await?;
            }
            secure::Step::Done(done) => {
                let secure::Established { peer, key, sign_key, session, send } = *done;
                // Before anything is confirmed to the peer: may this key
                // claim this node id? (Its signing key is recorded with it.)
                config.keyring.admit(peer.node, key, sign_key)?;
                if let Some(f) = send {
                    writer.write(stream, &f).await?;
                }
                reader.authenticate(Some(session.opener));
                writer.encrypt(session.sealer);
                return Ok(peer);
            }
        }
    }
}

/// Dials `addr` for `key` and authenticates. For `key.peer` 0 (a seed) any
/// node is accepted; otherwise it must be that node.
pub(crate) async fn dial(inner: &Arc<Inner>, addr: &str, key: LaneKey) -> Result<Conn, ConnError> {
    let timeout = inner.config.connect_timeout;
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut reader, mut writer) = (FrameReader::new(), FrameWriter::new());
        let hello = hello_for(inner, key);
        let peer = handshake(inner, Role::Connector, &mut stream, &mut reader, &mut writer, hello, None).await?;
        Ok::<_, ConnError>(Conn { stream, reader, writer, peer })
    };
    let conn = tokio::time::timeout(timeout, fut).await.map_err(|_| ConnError::Timeout("connecting"))??;
    let peer = &conn.peer;
    if key.peer != 0 && peer.node != key.peer {
        return Err(ConnError::Protocol(format!("{addr} is node {}, expected node {}", peer.node, key.peer)));
    }
    if peer.node == inner.config.me.id || peer.node == 0 {
        return Err(ConnError::Protocol(format!("{addr} claims node id {} (this node is {})", peer.node, inner.config.me.id)));
    }
    if crate::faults::is_cut_off(inner, peer.node) {
        return Err(ConnError::Partitioned(peer.node));
    }
    Ok(conn)
}

/// Authenticates an accepted stream within the handshake timeout. The
/// acceptor's hello echoes the channel and lane asked for. Who the peer is,
/// is for the caller to check.
pub(crate) async fn accept_handshake(
    inner: &Inner,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
) -> Result<Peer, ConnError> {
    let fut = async {
        let first = reader.read(stream).await?;
        let mut hello = hello_for(inner, LaneKey { peer: 0, channel: 0, lane: 0 });
        match (&first, inner.config.insecure_plaintext) {
            (Frame::Hello(theirs), true) => {
                hello.channel = theirs.channel.clone();
                hello.lane = theirs.lane;
            }
            (Frame::Noise { .. }, false) => {}
            (Frame::Noise { .. }, true) => {
                return Err(ConnError::Protocol(
                    "an encrypted handshake, and this node runs with --insecure-plaintext".into(),
                ));
            }
            (f, _) => return Err(ConnError::Protocol(format!("{} frame before the hello", f.name()))),
        }
        handshake(inner, Role::Acceptor, stream, reader, writer, hello, Some(first)).await
    };
    tokio::time::timeout(inner.config.handshake_timeout, fut)
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
            accept_handshake(&server, &mut s, &mut FrameReader::new(), &mut FrameWriter::new()).await
        });
        (addr, task)
    }

    #[tokio::test]
    async fn both_sides_learn_who_the_other_is_and_the_lane() {
        let (server, _, _rx1) = inner(config(1));
        let (client, _, _rx2) = inner(config(2));
        let (addr, task) = acceptor(server).await;
        let key = LaneKey { peer: 1, channel: 1, lane: 3 };
        let conn = dial(&client, &addr, key).await.unwrap();
        assert_eq!(conn.reader.buffered(), 0);
        let peer = conn.peer;
        assert_eq!((peer.node, peer.channel.as_str(), peer.lane), (1, "default", 3));
        let theirs = task.await.unwrap().unwrap();
        assert_eq!((theirs.node, theirs.channel.as_str(), theirs.lane), (2, "default", 3));
    }

    #[tokio::test]
    async fn a_node_without_the_secret_is_refused_by_both_sides() {
        // In plaintext mode: the HMAC fails on both sides.
        let mut s = config(1);
        s.insecure_plaintext = true;
        let (server, _, _rx1) = inner(s);
        let mut c = config(2);
        c.secret = secret("a different secret entirely");
        c.insecure_plaintext = true;
        let (client, _, _rx2) = inner(c);
        let (addr, task) = acceptor(server).await;
        let r = dial(&client, &addr, LaneKey { peer: 0, channel: 0, lane: 0 }).await;
        assert!(matches!(r, Err(ConnError::Auth(AuthError::BadMac))), "{r:?}");
        let r = task.await.unwrap();
        assert!(matches!(r, Err(ConnError::Auth(AuthError::BadMac))), "{r:?}");
        // Encrypted: message 3 does not decrypt at the acceptor, and the
        // connector never gets a confirmation.
        let (server, _, _rx1) = inner(config(1));
        let mut c = config(2);
        c.secret = secret("a different secret entirely");
        let (client, _, _rx2) = inner(c);
        let (addr, task) = acceptor(server).await;
        let r = dial(&client, &addr, LaneKey { peer: 0, channel: 0, lane: 0 }).await;
        assert!(r.is_err(), "{r:?}");
        let r = task.await.unwrap();
        assert!(matches!(r, Err(ConnError::Secure(secure::SecureError::Handshake(_)))), "{r:?}");
    }

    #[tokio::test]
    async fn a_node_id_claimed_with_another_key_is_refused() {
        let (server, _, _rx1) = inner(config(1));
        let (client, _, _rx2) = inner(config(2));
        let (addr, task) = acceptor(server.clone()).await;
        dial(&client, &addr, LaneKey { peer: 1, channel: 0, lane: 0 }).await.unwrap();
        task.await.unwrap().unwrap();
        // Another process claims node 2 with a key of its own.
        let (impostor, _, _rx3) = inner(config(2));
        let (addr, task) = acceptor(server).await;
        let _ = dial(&impostor, &addr, LaneKey { peer: 1, channel: 0, lane: 0 }).await;
        let r = task.await.unwrap();
        assert!(matches!(r, Err(ConnError::Secure(secure::SecureError::KeyMismatch { node: 2, .. }))), "{r:?}");
    }

    #[tokio::test]
    async fn plaintext_and_encrypted_nodes_refuse_each_other_clearly() {
        let mut s = config(1);
        s.insecure_plaintext = true;
        let (server, _, _rx1) = inner(s);
        let (client, _, _rx2) = inner(config(2));
        let (addr, task) = acceptor(server).await;
        let _ = dial(&client, &addr, LaneKey { peer: 0, channel: 0, lane: 0 }).await;
        let r = task.await.unwrap();
        assert!(matches!(&r, Err(ConnError::Protocol(m)) if m.contains("--insecure-plaintext")), "{r:?}");
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
        crate::io::write_frame(&mut s, &Frame::Ping { nonce: 1 }, &mut Vec::new()).await.unwrap();
        let r = task.await.unwrap();
        assert!(matches!(&r, Err(ConnError::Protocol(m)) if m.contains("before the hello")), "{r:?}");
    }
}
