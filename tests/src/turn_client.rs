//! A minimal TURN client over any byte stream (TCP or TLS): long-term credentials, Allocate,
//! CreatePermission, Send and Data indications. Built on vc-relay's own STUN codec; the
//! interop proof against a client nobody here wrote is `turn_uclient.rs` (coturn).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use relay::stun::address::decode_xor;
use relay::stun::{attr, errors, Class, Message, MessageBuilder, Method};
use relay::turn::auth::hmac_sha1;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One TURN client on stream `S`, authenticating as `user`/`pass` in `realm`.
pub struct TurnClient<S> {
    stream: S,
    user: String,
    realm: String,
    key: [u8; 16],
    nonce: Vec<u8>,
    next_tid: u8,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TurnClient<S> {
    pub fn new(stream: S, user: &str, pass: &str, realm: &str) -> Self {
        let key = relay::stun::integrity::long_term_key(
            user.as_bytes(),
            realm.as_bytes(),
            pass.as_bytes(),
        );
        Self {
            stream,
            user: user.into(),
            realm: realm.into(),
            key,
            nonce: Vec::new(),
            next_tid: 1,
        }
    }

    fn tid(&mut self) -> [u8; 12] {
        self.next_tid = self.next_tid.wrapping_add(1);
        [self.next_tid; 12]
    }

    /// One STUN message from the stream (5 s at most).
    async fn read_message(&mut self) -> Result<Vec<u8>> {
        let mut head = [0u8; 20];
        tokio::time::timeout(Duration::from_secs(5), self.stream.read_exact(&mut head))
            .await
            .context("no STUN message within 5 s")??;
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut msg = head.to_vec();
        msg.resize(20 + len, 0);
        self.stream.read_exact(&mut msg[20..]).await?;
        Ok(msg)
    }

    /// Sends an authenticated request (`attrs` first), retrying once on 401/438 with the
    /// relay's nonce; returns the success response.
    async fn request(&mut self, method: Method, attrs: &[(u16, Vec<u8>)]) -> Result<Vec<u8>> {
        for _ in 0..2 {
            let tid = self.tid();
            let mut buf = Vec::new();
            let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &tid);
            for (t, v) in attrs {
                b.attr(*t, v);
            }
            if !self.nonce.is_empty() {
                b.attr(attr::USERNAME, self.user.as_bytes());
                b.attr(attr::REALM, self.realm.as_bytes());
                b.attr(attr::NONCE, &self.nonce);
                b.integrity(hmac_sha1(&self.key));
            }
            b.fingerprint();
            self.stream.write_all(&buf).await?;
            let raw = self.read_message().await?;
            let m = Message::parse(&raw)?;
            ensure!(m.transaction_id() == &tid, "answer to another transaction");
            let code = m
                .attribute(attr::ERROR_CODE)
                .and_then(errors::decode_error_code);
            match (m.class(), code) {
                (Class::Success, _) => return Ok(raw),
                (_, Some(401 | 438)) => {
                    self.nonce = m.attribute(attr::NONCE).context("no NONCE")?.to_vec();
                }
                (_, code) => bail!("{method:?} failed: {code:?}"),
            }
        }
        bail!("{method:?}: still unauthorized with the relay's nonce")
    }

    /// Allocate (UDP relay); returns (XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS).
    pub async fn allocate(&mut self) -> Result<(SocketAddr, SocketAddr)> {
        let raw = self
            .request(
                Method::Allocate,
                &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            )
            .await?;
        let m = Message::parse(&raw)?;
        let tid = *m.transaction_id();
        let relayed = decode_xor(
            m.attribute(attr::XOR_RELAYED_ADDRESS)
                .context("no relayed address")?,
            &tid,
            attr::XOR_RELAYED_ADDRESS,
        )?;
        let mapped = decode_xor(
            m.attribute(attr::XOR_MAPPED_ADDRESS)
                .context("no mapped address")?,
            &tid,
            attr::XOR_MAPPED_ADDRESS,
        )?;
        Ok((relayed, mapped))
    }

    /// CreatePermission for `peer`'s IP.
    pub async fn permit(&mut self, peer: SocketAddr) -> Result<()> {
        self.request_with_peer(Method::CreatePermission, peer).await
    }

    async fn request_with_peer(&mut self, method: Method, peer: SocketAddr) -> Result<()> {
        for _ in 0..2 {
            let tid = self.tid();
            let mut buf = Vec::new();
            let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &tid);
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
            b.attr(attr::USERNAME, self.user.as_bytes());
            b.attr(attr::REALM, self.realm.as_bytes());
            b.attr(attr::NONCE, &self.nonce);
            b.integrity(hmac_sha1(&self.key));
            b.fingerprint();
            self.stream.write_all(&buf).await?;
            let raw = self.read_message().await?;
            let m = Message::parse(&raw)?;
            let code = m
                .attribute(attr::ERROR_CODE)
                .and_then(errors::decode_error_code);
            match (m.class(), code) {
                (Class::Success, _) => return Ok(()),
                (_, Some(438)) => {
                    self.nonce = m.attribute(attr::NONCE).context("no NONCE")?.to_vec();
                }
                (_, code) => bail!("{method:?} failed: {code:?}"),
            }
        }
        bail!("{method:?}: stale nonce twice")
    }

    /// A Send indication: `data` to `peer` through the allocation.
    pub async fn send_to(&mut self, peer: SocketAddr, data: &[u8]) -> Result<()> {
        let tid = self.tid();
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Class::Indication, Method::Send, &tid);
        b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        b.attr(attr::DATA, data);
        b.fingerprint();
        self.stream.write_all(&buf).await?;
        Ok(())
    }

    /// The next Data indication: (peer, payload).
    pub async fn recv_data(&mut self) -> Result<(SocketAddr, Vec<u8>)> {
        loop {
            let raw = self.read_message().await?;
            let m = Message::parse(&raw)?;
            if (m.class(), m.method()) != (Class::Indication, Method::Data) {
                continue;
            }
            let peer = decode_xor(
                m.attribute(attr::XOR_PEER_ADDRESS).context("no peer")?,
                m.transaction_id(),
                attr::XOR_PEER_ADDRESS,
            )?;
            return Ok((peer, m.attribute(attr::DATA).context("no DATA")?.to_vec()));
        }
    }
}
