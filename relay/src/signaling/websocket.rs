//! A lean server-side WebSocket framing (RFC 6455 §5) for connections after the upgrade.
//!
//! **Why not tungstenite's `WebSocketStream` for the connection's life.** A camera's link is
//! idle almost all the time, and tungstenite keeps a read buffer (`read_buffer_size`, allocated
//! up front) and the capacity of its write buffer for as long as the connection lives: about
//! half of what an idle camera cost. This codec holds no buffer between messages: reads go
//! through a stack buffer and only the bytes of an unfinished frame are kept on the heap;
//! encoded frames are kept until written, then freed. The upgrade itself (HTTP parsing, the
//! accept key, the callback that checks the token) stays tungstenite's; it refuses bytes sent
//! after the request before the 101 (`JunkAfterRequest`), so nothing is read ahead of this.
//!
//! It speaks the messages of tungstenite (`Message`, `Error`) so the connection task and the
//! QUIC transport share one interface. Pings are answered with pongs, a close is answered
//! with a close; fragmented messages are reassembled up to `max_message` bytes, and a frame
//! announcing more is refused from its header, before its payload is buffered.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Bytes read per `read` call. On the stack of the poll, not in the connection.
const READ_CHUNK: usize = 4096;
/// Encoded bytes above which `poll_ready` writes before taking another message.
const WRITE_HIGH_WATER: usize = 16 * 1024;

/// A message being reassembled from fragments.
struct Fragments {
    text: bool,
    data: BytesMut,
}

/// One parsed frame (payload unmasked).
struct Frame {
    fin: bool,
    opcode: OpCode,
    payload: BytesMut,
}

/// What parsing the buffered bytes gave.
enum Parsed {
    Frame(Frame),
    /// More bytes are needed.
    Incomplete,
}

/// Parses one client frame off the front of `buf` (RFC 6455 §5.2). A header announcing a
/// payload over `max` is refused at once.
fn parse_frame(buf: &mut BytesMut, max: usize) -> Result<Parsed, WsError> {
    if buf.len() < 2 {
        return Ok(Parsed::Incomplete);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        // No extension was negotiated, so no reserved bit may be set.
        return Err(ProtocolError::NonZeroReservedBits.into());
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from(b0 & 0x0F);
    if b1 & 0x80 == 0 {
        return Err(ProtocolError::UnmaskedFrameFromClient.into());
    }
    let (len, header) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Ok(Parsed::Incomplete),
        n => (u64::from(n), 2),
    };
    match opcode {
        OpCode::Control(c) => {
            if let tokio_tungstenite::tungstenite::protocol::frame::coding::Control::Reserved(n) = c
            {
                return Err(ProtocolError::UnknownControlFrameType(n).into());
            }
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame.into());
            }
            if len > 125 {
                return Err(ProtocolError::ControlFrameTooBig.into());
            }
        }
        OpCode::Data(Data::Reserved(n)) => {
            return Err(ProtocolError::UnknownDataFrameType(n).into());
        }
        OpCode::Data(_) => {}
    }
    if len > max as u64 {
        return Err(CapacityError::MessageTooLong {
            size: usize::try_from(len).unwrap_or(usize::MAX),
            max_size: max,
        }
        .into());
    }
    let len = len as usize;
    let total = header + 4 + len;
    if buf.len() < total {
        // Room for the rest of this frame only: a slow sender of a large frame is bounded
        // by `max`, and a small one costs nothing more.
        buf.reserve(total - buf.len());
        return Ok(Parsed::Incomplete);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[header..header + 4]);
    buf.advance(header + 4);
    let mut payload = buf.split_to(len);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Parsed::Frame(Frame {
        fin,
        opcode,
        payload,
    }))
}

/// Appends one unmasked server frame to `out`.
fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.extend_from_slice(payload);
}

fn close_payload(frame: &Option<CloseFrame>) -> Vec<u8> {
    match frame {
        None => Vec::new(),
        Some(f) => {
            let mut p = Vec::with_capacity(2 + f.reason.len());
            p.put_u16(u16::from(f.code));
            // A control frame carries at most 125 bytes.
            let reason = f.reason.as_bytes();
            p.extend_from_slice(&reason[..reason.len().min(123)]);
            p
        }
    }
}

/// The server side of an upgraded WebSocket connection over `S`.
pub(crate) struct LeanWebSocket<S> {
    io: S,
    max_message: usize,
    /// Received bytes not yet parsed into frames; empty (no allocation) between messages.
    inbuf: BytesMut,
    fragments: Option<Fragments>,
    /// Encoded frames not yet written; freed once written.
    out: Vec<u8>,
    /// A close frame was sent: nothing more is sent.
    close_sent: bool,
    /// The peer's close frame or EOF was read.
    read_done: bool,
}

impl<S> LeanWebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(io: S, max_message: usize) -> Self {
        Self {
            io,
            max_message,
            inbuf: BytesMut::new(),
            fragments: None,
            out: Vec::new(),
            close_sent: false,
            read_done: false,
        }
    }

    /// Writes what is encoded; Ready once `out` is empty (and then freed).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let mut written = 0;
        while written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(WsError::Io(std::io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WsError::Io(e))),
                Poll::Pending => {
                    self.out.drain(..written);
                    return Poll::Pending;
                }
            }
        }
        self.out = Vec::new();
        Poll::Ready(Ok(()))
    }

    fn queue(&mut self, opcode: u8, payload: &[u8]) -> Result<(), WsError> {
        if self.close_sent {
            return Err(ProtocolError::SendAfterClosing.into());
        }
        if opcode == 0x8 {
            self.close_sent = true;
        }
        encode_frame(&mut self.out, opcode, payload);
        Ok(())
    }

    /// Turns a complete frame into a message (None: a fragment was absorbed).
    fn on_frame(&mut self, frame: Frame) -> Result<Option<Message>, WsError> {
        match frame.opcode {
            OpCode::Control(c) => {
                use tokio_tungstenite::tungstenite::protocol::frame::coding::Control;
                let payload = frame.payload.freeze();
                match c {
                    Control::Ping => {
                        if !self.close_sent {
                            self.queue(0xA, &payload)?;
                        }
                        Ok(Some(Message::Ping(payload)))
                    }
                    Control::Pong => Ok(Some(Message::Pong(payload))),
                    Control::Close => {
                        self.read_done = true;
                        let frame = parse_close(payload)?;
                        if !self.close_sent {
                            // Echo the code, as RFC 6455 §5.5.1 asks.
                            let echo = frame.as_ref().map(|f| CloseFrame {
                                code: f.code,
                                reason: Utf8Bytes::default(),
                            });
                            self.queue(0x8, &close_payload(&echo))?;
                        }
                        Ok(Some(Message::Close(frame)))
                    }
                    Control::Reserved(n) => Err(ProtocolError::UnknownControlFrameType(n).into()),
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some(frag) = self.fragments.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinueFrame.into());
                };
                if frag.data.len() + frame.payload.len() > self.max_message {
                    return Err(CapacityError::MessageTooLong {
                        size: frag.data.len() + frame.payload.len(),
                        max_size: self.max_message,
                    }
                    .into());
                }
                frag.data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                let frag = self.fragments.take().expect("checked above");
                message(frag.text, frag.data).map(Some)
            }
            OpCode::Data(d) => {
                if self.fragments.is_some() {
                    return Err(ProtocolError::ExpectedFragment(d).into());
                }
                let text = matches!(d, Data::Text);
                if frame.fin {
                    return message(text, frame.payload).map(Some);
                }
                self.fragments = Some(Fragments {
                    text,
                    data: frame.payload,
                });
                Ok(None)
            }
        }
    }
}

fn message(text: bool, data: BytesMut) -> Result<Message, WsError> {
    let data = data.freeze();
    if !text {
        return Ok(Message::Binary(data));
    }
    Utf8Bytes::try_from(data)
        .map(Message::Text)
        .map_err(|e| WsError::Utf8(e.to_string()))
}

fn parse_close(mut payload: Bytes) -> Result<Option<CloseFrame>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::InvalidCloseSequence.into()),
        _ => {
            let code = CloseCode::from(payload.get_u16());
            let reason = Utf8Bytes::try_from(payload).map_err(|e| WsError::Utf8(e.to_string()))?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

impl<S> Stream for LeanWebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.read_done {
                return Poll::Ready(None);
            }
            match parse_frame(&mut this.inbuf, this.max_message) {
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Parsed::Frame(frame)) => {
                    if this.inbuf.is_empty() {
                        // Give the allocation back: an idle connection holds no buffer.
                        this.inbuf = BytesMut::new();
                    }
                    match this.on_frame(frame) {
                        Err(e) => return Poll::Ready(Some(Err(e))),
                        Ok(None) => continue,
                        Ok(Some(msg)) => {
                            if matches!(msg, Message::Ping(_) | Message::Close(_)) {
                                // Best effort now; what is left goes with the next flush.
                                let _ = this.poll_write_out(cx);
                            }
                            return Poll::Ready(Some(Ok(msg)));
                        }
                    }
                }
                Ok(Parsed::Incomplete) => {}
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(WsError::Io(e)))),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.read_done = true;
                    if this.inbuf.is_empty() && this.fragments.is_none() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(
                        ProtocolError::ResetWithoutClosingHandshake.into()
                    )));
                }
                Poll::Ready(Ok(())) => this.inbuf.extend_from_slice(rb.filled()),
            }
        }
    }
}

impl<S> Sink<Message> for LeanWebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.out.len() < WRITE_HIGH_WATER {
            return Poll::Ready(Ok(()));
        }
        this.poll_write_out(cx)
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
        let this = self.get_mut();
        match msg {
            Message::Text(t) => this.queue(0x1, t.as_bytes()),
            Message::Binary(b) => this.queue(0x2, &b),
            Message::Ping(p) => this.queue(0x9, &p[..p.len().min(125)]),
            Message::Pong(p) => this.queue(0xA, &p[..p.len().min(125)]),
            Message::Close(frame) => {
                if this.close_sent {
                    return Ok(());
                }
                this.queue(0x8, &close_payload(&frame))
            }
            Message::Frame(_) => Err(WsError::Io(std::io::Error::other(
                "raw frames are not sent by this codec",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        match this.poll_write_out(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx).map_err(WsError::Io),
            other => other,
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.get_mut().io)
                .poll_shutdown(cx)
                .map_err(WsError::Io),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    fn pair(
        max: usize,
    ) -> (
        LeanWebSocket<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (LeanWebSocket::new(a, max), b)
    }

    #[tokio::test]
    async fn reads_masked_text_in_any_split_and_frees_its_buffer() {
        let (mut ws, mut client) = pair(1024);
        let mut bytes = client_frame(true, 1, b"{\"type\":\"ping\"}");
        bytes.extend(client_frame(true, 1, "h\u{e9}llo".as_bytes()));
        // One byte at a time: every header and payload boundary is crossed.
        let writer = tokio::spawn(async move {
            for b in bytes {
                client.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("{\"type\":\"ping\"}")
        );
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("h\u{e9}llo")
        );
        assert_eq!(ws.inbuf.capacity(), 0, "no buffer is kept between messages");
        drop(writer.await.unwrap());
        assert!(
            ws.next().await.is_none(),
            "EOF between frames ends the stream"
        );
    }

    #[tokio::test]
    async fn reassembles_fragments_and_answers_pings_between_them() {
        let (mut ws, mut client) = pair(1024);
        let mut bytes = client_frame(false, 1, b"hel");
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(true, 0, b"lo"));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Ping(Bytes::from_static(b"p"))
        );
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        let mut pong = [0u8; 3];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(
            pong,
            [0x8A, 1, b'p'],
            "an unmasked pong with the ping's payload"
        );
    }

    #[tokio::test]
    async fn oversized_frames_and_messages_are_refused_before_buffering() {
        // The header alone announces 1 MiB: refused with nothing more read.
        let (mut ws, mut client) = pair(1024);
        let f = client_frame(true, 1, &vec![b'a'; 1 << 20]);
        client.write_all(&f[..14]).await.unwrap();
        match ws.next().await.unwrap() {
            Err(WsError::Capacity(CapacityError::MessageTooLong { max_size, .. })) => {
                assert_eq!(max_size, 1024)
            }
            other => panic!("{other:?}"),
        }
        assert!(ws.inbuf.capacity() < 64, "the payload was never reserved");
        // Fragments that add up to more than the limit.
        let (mut ws, mut client) = pair(1024);
        let mut bytes = client_frame(false, 1, &[b'a'; 600]);
        bytes.extend(client_frame(true, 0, &[b'a'; 600]));
        client.write_all(&bytes).await.unwrap();
        assert!(matches!(
            ws.next().await.unwrap(),
            Err(WsError::Capacity(_))
        ));
    }

    #[tokio::test]
    async fn protocol_violations_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut f = client_frame(true, 1, b"x");
                    f[1] &= 0x7F; // unmasked
                    f.truncate(2);
                    f.push(b'x');
                    f
                },
                "unmasked",
            ),
            (
                {
                    let mut f = client_frame(true, 1, b"x");
                    f[0] |= 0x40;
                    f
                },
                "rsv",
            ),
            (client_frame(true, 3, b"x"), "reserved data opcode"),
            (client_frame(true, 0xB, b"x"), "reserved control opcode"),
            (client_frame(false, 9, b"x"), "fragmented ping"),
            (client_frame(true, 9, &[0; 126]), "big ping"),
            (client_frame(true, 0, b"x"), "continuation without a start"),
            (client_frame(true, 1, &[0xff, 0xfe]), "invalid utf-8"),
            (
                {
                    let mut f = client_frame(false, 1, b"a");
                    f.extend(client_frame(true, 1, b"b"));
                    f
                },
                "new message inside a fragmented one",
            ),
        ];
        for (bytes, what) in cases {
            let (mut ws, mut client) = pair(1024);
            client.write_all(&bytes).await.unwrap();
            let got = ws.next().await.unwrap();
            assert!(got.is_err(), "{what}: {got:?}");
        }
    }

    #[tokio::test]
    async fn writes_frames_and_echoes_close() {
        let (mut ws, mut client) = pair(1 << 20);
        let big = "b".repeat(70_000);
        ws.feed(Message::text("hi")).await.unwrap();
        ws.feed(Message::text(big.clone())).await.unwrap();
        ws.flush().await.unwrap();
        assert_eq!(ws.out.capacity(), 0, "written frames are freed");
        let mut head = [0u8; 4];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head, [0x81, 2, b'h', b'i']);
        let mut head = [0u8; 10];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[..2], [0x81, 127]);
        assert_eq!(u64::from_be_bytes(head[2..].try_into().unwrap()), 70_000);
        let mut body = vec![0u8; 70_000];
        client.read_exact(&mut body).await.unwrap();
        assert_eq!(body, big.as_bytes());

        // The client closes with 1000: the server echoes the code and the stream ends.
        client
            .write_all(&client_frame(true, 8, &[0x03, 0xE8, b'b', b'y', b'e']))
            .await
            .unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(f)) => {
                assert_eq!(f.code, CloseCode::Normal);
                assert_eq!(f.reason.as_str(), "bye");
            }
            other => panic!("{other:?}"),
        }
        let mut echo = [0u8; 4];
        client.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, [0x88, 2, 0x03, 0xE8]);
        assert!(ws.next().await.is_none());
        assert!(
            ws.send(Message::text("late")).await.is_err(),
            "nothing is sent after a close"
        );
    }

    #[tokio::test]
    async fn medium_lengths_use_the_16_bit_form() {
        let (mut ws, mut client) = pair(1 << 20);
        let payload = vec![b'm'; 300];
        client
            .write_all(&client_frame(true, 2, &payload))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from(payload.clone()))
        );
        ws.send(Message::Binary(Bytes::from(payload)))
            .await
            .unwrap();
        let mut head = [0u8; 4];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head, [0x82, 126, 0x01, 0x2C]);
    }
}
