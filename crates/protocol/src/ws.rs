//! WebSocket framing (RFC 6455), without I/O.
//!
//! The gateway writes server frames itself so that one event frame, header included, is
//! encoded once into a shared [`Bytes`] and handed to many sessions (design.md, data path
//! step 2). Incoming frames are decoded by [`Decoder`], which keeps no buffer of its own
//! between frames: an idle session holds no read buffer at all (issue 5's memory target),
//! and every partial frame it does hold is bounded by the configured message size.
//!
//! fastwebsockets still does the HTTP upgrade and the upstream client; its reader keeps an
//! 8 KiB buffer per connection and its `read_frame` is not cancel-safe, which is why the
//! session side decodes here.

use bytes::{Buf, Bytes, BytesMut};

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// A continuation of a fragmented message.
    Continuation,
    /// A UTF-8 text message (or its first fragment).
    Text,
    /// A binary message (or its first fragment).
    Binary,
    /// A close frame.
    Close,
    /// A ping.
    Ping,
    /// A pong.
    Pong,
}

impl OpCode {
    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Close codes used by the gateway (protocol.md §1.6).
pub mod close_code {
    /// Normal closure, after a client close.
    pub const NORMAL: u16 = 1000;
    /// Going away: shutdown and drain.
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error (masking, reserved bits, bad opcodes).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the endpoint does not accept (binary frames).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Text that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy violation: token expired, too many refused requests.
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: the session could not keep up with its events.
    pub const TRY_AGAIN_LATER: u16 = 1013;

    /// Whether a peer may send `code` in a close frame (RFC 6455 §7.4): the defined codes
    /// other than those reserved for local use only (1004, 1005, 1006, 1015), the ones IANA
    /// registered since (1012 to 1014), and the ranges for libraries (3000–3999) and
    /// applications (4000–4999).
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// The size of a frame header for a payload of `len` bytes, without a mask.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Appends an unmasked frame header (FIN set) for a payload of `len` bytes.
pub fn put_header(out: &mut Vec<u8>, opcode: OpCode, len: usize) {
    out.push(0x80 | opcode.bits());
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Encodes one whole unmasked frame (as a server sends it).
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Encodes a whole close frame with a code and a reason (cut to fit a control frame).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(OpCode::Close, &payload)
}

/// Encodes one whole masked frame (as a client sends it) with the given mask key.
pub fn encode_masked(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Bytes {
    let mut out = Vec::with_capacity(header_len(payload.len()) + 4 + payload.len());
    put_header(&mut out, opcode, payload.len());
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(out)
}

/// Which side of the connection decodes: servers expect masked frames, clients unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decodes frames a client sent: every frame must be masked.
    Server,
    /// Decodes frames a server sent: no frame may be masked.
    Client,
}

/// A complete message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A whole text message, valid UTF-8.
    Text(Bytes),
    /// A whole binary message.
    Binary(Bytes),
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// A close frame: its code (if any) and reason.
    Close(Option<u16>, Bytes),
}

/// Why a byte stream is not a valid WebSocket stream; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Reserved bits set, an unknown opcode, a fragmented or oversized control frame, a
    /// continuation without a start, or a masking that does not suit the role.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message longer than the limit.
    #[error("message over the size limit")]
    TooBig,
    /// A text message that is not UTF-8.
    #[error("text message is not utf-8")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code to send for this error.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => close_code::PROTOCOL_ERROR,
            FrameError::TooBig => close_code::TOO_BIG,
            FrameError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
        }
    }
}

/// An incremental frame decoder.
///
/// Feed it the bytes read so far in a [`BytesMut`]; [`Decoder::decode`] takes what forms a
/// whole message out of it and leaves the rest. Fragments of a message are gathered here up
/// to the message limit.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_message: usize,
    /// The opcode and gathered payload of a fragmented message in progress.
    partial: Option<(OpCode, BytesMut)>,
    /// Frames decoded since [`Decoder::take_frames`] last asked: control frames and
    /// fragments included, so a caller can bound what a peer makes it do per frame.
    frames: u32,
}

impl Decoder {
    /// A decoder for `role` that refuses messages over `max_message` bytes.
    pub fn new(role: Role, max_message: usize) -> Self {
        Decoder {
            role,
            max_message,
            partial: None,
            frames: 0,
        }
    }

    /// How many frames (of any kind, fragments included) were decoded since the last call.
    pub fn take_frames(&mut self) -> u32 {
        std::mem::take(&mut self.frames)
    }

    /// How many more bytes the caller should hold at most before a frame must be complete:
    /// the message limit plus the largest header.
    pub fn max_buffer(&self) -> usize {
        self.max_message + 14
    }

    /// Takes the next whole message or control frame out of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole frame yet (or holds only a
    /// fragment, which is kept).
    ///
    /// # Errors
    /// [`FrameError`] when the stream breaks RFC 6455 or the limit; the connection should
    /// then be closed with [`FrameError::close_code`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(frame) = self.next_frame(buf)? else {
                return Ok(None);
            };
            if let Some(message) = self.assemble(frame)? {
                return Ok(Some(message));
            }
        }
    }

    fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(FrameError::Protocol("client frame not masked")),
            (Role::Client, true) => return Err(FrameError::Protocol("server frame masked")),
            _ => {}
        }
        let (len, mut at) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut be = [0u8; 8];
                be.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            short => (u64::from(short), 2),
        };
        if opcode.is_control() && (!fin || len > 125) {
            return Err(FrameError::Protocol("bad control frame"));
        }
        let gathered = self.partial.as_ref().map_or(0, |(_, p)| p.len());
        let len = usize::try_from(len).map_err(|_| FrameError::TooBig)?;
        if !opcode.is_control() && gathered.saturating_add(len) > self.max_message {
            return Err(FrameError::TooBig);
        }
        let mask = if masked {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let key = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
            at += 4;
            Some(key)
        } else {
            None
        };
        if buf.len() < at + len {
            return Ok(None);
        }
        buf.advance(at);
        self.frames = self.frames.saturating_add(1);
        let mut payload = buf.split_to(len);
        if let Some(key) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        Ok(Some(RawFrame {
            fin,
            opcode,
            payload,
        }))
    }

    fn assemble(&mut self, frame: RawFrame) -> Result<Option<Message>, FrameError> {
        let RawFrame {
            fin,
            opcode,
            payload,
        } = frame;
        let (opcode, payload) = match opcode {
            OpCode::Ping => return Ok(Some(Message::Ping(payload.freeze()))),
            OpCode::Pong => return Ok(Some(Message::Pong(payload.freeze()))),
            OpCode::Close => return close_message(payload.freeze()).map(Some),
            OpCode::Continuation => {
                let Some((start, mut gathered)) = self.partial.take() else {
                    return Err(FrameError::Protocol("continuation without a start"));
                };
                gathered.extend_from_slice(&payload);
                if !fin {
                    self.partial = Some((start, gathered));
                    return Ok(None);
                }
                (start, gathered)
            }
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(FrameError::Protocol("new message inside a fragmented one"));
                }
                if !fin {
                    self.partial = Some((opcode, payload));
                    return Ok(None);
                }
                (opcode, payload)
            }
        };
        let payload = payload.freeze();
        if opcode == OpCode::Text {
            if std::str::from_utf8(&payload).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            Ok(Some(Message::Text(payload)))
        } else {
            Ok(Some(Message::Binary(payload)))
        }
    }
}

struct RawFrame {
    fin: bool,
    opcode: OpCode,
    payload: BytesMut,
}

fn close_message(payload: Bytes) -> Result<Message, FrameError> {
    match payload.len() {
        0 => Ok(Message::Close(None, Bytes::new())),
        1 => Err(FrameError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code::is_valid_on_wire(code) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = payload.slice(2..);
            if std::str::from_utf8(&reason).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            Ok(Message::Close(Some(code), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(role: Role, max: usize, input: &[u8]) -> Result<Vec<Message>, FrameError> {
        let mut decoder = Decoder::new(role, max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        // Feed one byte at a time: every split point must work.
        for &b in input {
            buf.extend_from_slice(&[b]);
            while let Some(message) = decoder.decode(&mut buf)? {
                out.push(message);
            }
        }
        Ok(out)
    }

    #[test]
    fn masked_text_round_trip_at_every_length_class() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload = "x".repeat(len);
            let frame = encode_masked(OpCode::Text, payload.as_bytes(), [1, 2, 3, 4]);
            let mut buf = BytesMut::from(&frame[..]);
            let mut decoder = Decoder::new(Role::Server, 1 << 20);
            let got = decoder.decode(&mut buf).expect("valid frame");
            assert_eq!(got, Some(Message::Text(Bytes::from(payload))), "len {len}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn byte_by_byte_and_fragmented() {
        let mut input = Vec::new();
        let mut first = encode_masked(OpCode::Text, b"hel", [9, 8, 7, 6]).to_vec();
        first[0] &= 0x7F; // not final
        input.extend_from_slice(&first);
        input.extend_from_slice(&encode_masked(OpCode::Ping, b"p", [1, 1, 1, 1]));
        input.extend_from_slice(&encode_masked(OpCode::Continuation, b"lo", [5, 5, 5, 5]));
        input.extend_from_slice(&encode_masked(OpCode::Close, b"\x03\xe8bye", [0, 0, 0, 0]));
        let got = decode_all(Role::Server, 100, &input).expect("valid stream");
        assert_eq!(
            got,
            vec![
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text(Bytes::from_static(b"hello")),
                Message::Close(Some(1000), Bytes::from_static(b"bye")),
            ]
        );
    }

    #[test]
    fn client_role_reads_server_frames() {
        let mut input = encode(OpCode::Text, b"{}").to_vec();
        input.extend_from_slice(&encode_close(1013, "slow"));
        let got = decode_all(Role::Client, 100, &input).expect("valid stream");
        assert_eq!(
            got,
            vec![
                Message::Text(Bytes::from_static(b"{}")),
                Message::Close(Some(1013), Bytes::from_static(b"slow")),
            ]
        );
    }

    #[test]
    fn errors_map_to_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (encode(OpCode::Text, b"unmasked").to_vec(), 1002),
            (vec![0xC1, 0x80, 0, 0, 0, 0], 1002),
            (vec![0x83, 0x80, 0, 0, 0, 0], 1002),
            (vec![0x09, 0x80, 0, 0, 0, 0], 1002),
            (
                encode_masked(OpCode::Continuation, b"x", [0; 4]).to_vec(),
                1002,
            ),
            (
                encode_masked(OpCode::Text, &[0xFF, 0xFE], [0; 4]).to_vec(),
                1007,
            ),
            (
                encode_masked(OpCode::Text, &[b'a'; 101], [0; 4]).to_vec(),
                1009,
            ),
            (
                vec![0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
                1009,
            ),
            (encode_masked(OpCode::Close, b"\x03", [0; 4]).to_vec(), 1002),
        ];
        // Close codes a peer may not send: 1002 back, never 1000.
        let invalid = [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ];
        let cases = cases.into_iter().chain(invalid.iter().map(|code| {
            let payload = code.to_be_bytes();
            (
                encode_masked(OpCode::Close, &payload, [7; 4]).to_vec(),
                1002,
            )
        }));
        for (input, code) in cases {
            let got = decode_all(Role::Server, 100, &input);
            assert_eq!(got.map_err(FrameError::close_code), Err(code), "{input:x?}");
        }
    }

    #[test]
    fn every_frame_is_counted_fragments_and_control_frames_included() {
        let mut input = Vec::new();
        let mut first = encode_masked(OpCode::Text, b"a", [1; 4]).to_vec();
        first[0] &= 0x7F;
        input.extend_from_slice(&first);
        for _ in 0..10 {
            let mut empty = encode_masked(OpCode::Continuation, b"", [2; 4]).to_vec();
            empty[0] &= 0x7F;
            input.extend_from_slice(&empty);
        }
        input.extend_from_slice(&encode_masked(OpCode::Ping, b"", [3; 4]));
        input.extend_from_slice(&encode_masked(OpCode::Continuation, b"b", [4; 4]));
        let mut decoder = Decoder::new(Role::Server, 100);
        let mut buf = BytesMut::from(&input[..]);
        let mut messages = Vec::new();
        while let Some(message) = decoder.decode(&mut buf).expect("valid") {
            messages.push(message);
        }
        assert_eq!(
            messages,
            vec![
                Message::Ping(Bytes::new()),
                Message::Text(Bytes::from_static(b"ab"))
            ]
        );
        assert_eq!(decoder.take_frames(), 13);
        assert_eq!(decoder.take_frames(), 0);
    }

    #[test]
    fn valid_close_codes_are_read() {
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            let frame = encode_masked(OpCode::Close, &code.to_be_bytes(), [3; 4]);
            let got = decode_all(Role::Server, 100, &frame);
            assert_eq!(
                got,
                Ok(vec![Message::Close(Some(code), Bytes::new())]),
                "{code}"
            );
        }
    }

    #[test]
    fn fragments_count_toward_the_limit() {
        let mut input = Vec::new();
        for _ in 0..3 {
            let mut part = encode_masked(OpCode::Text, &[b'a'; 40], [0; 4]).to_vec();
            part[0] &= 0x7F;
            if !input.is_empty() {
                part[0] &= 0xF0; // continuation
            }
            input.extend_from_slice(&part);
        }
        assert_eq!(
            decode_all(Role::Server, 100, &input),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let frame = encode_close(1008, &"é".repeat(100));
        assert!(frame.len() <= 2 + 125);
        let mut buf = BytesMut::from(&frame[..]);
        let got = Decoder::new(Role::Client, 1000).decode(&mut buf);
        assert!(matches!(got, Ok(Some(Message::Close(Some(1008), _)))));
    }
}
