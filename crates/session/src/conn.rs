//! A browser's connection: plain TCP, or TLS (rustls) over it, behind the readiness-style
//! calls the handshake and the session are written against (`ready`, non-blocking reads
//! and vectored writes).
//!
//! TLS keeps rustls's own state machine (`ServerConnection`) beside the socket rather than
//! an `AsyncRead`/`AsyncWrite` stream: the session keeps its single task and its
//! non-blocking vectored writes. What TLS adds per session is rustls's: its connection state
//! and its read buffer (4 KiB once anything was read, up to one record's worth while a
//! record is partly read), about 7.5 KiB per idle session in all (loadtest/results).
//! Ciphertext rustls has not handed to the socket is bounded: no plaintext is taken while
//! any is left, so a frozen reader holds at most [`TLS_BUFFER_LIMIT`] more than without TLS.

use std::io::{self, IoSlice, Read, Write};

use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;

/// Ciphertext rustls may buffer for one connection, at most (its default is 64 KiB).
pub const TLS_BUFFER_LIMIT: usize = 32 * 1024;

/// Records read from the socket per `try_read` at most before giving the task back: a
/// client sending records with no application data in them (empty records, handshake
/// messages) cannot keep one call busy.
const MAX_RECORD_READS: usize = 8;

/// A browser's connection, before and after the WebSocket upgrade.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP (`ws://`).
    Plain(TcpStream),
    /// TLS over TCP (`wss://`), after the TLS handshake.
    Tls(Box<TlsConn>),
}

/// A TLS connection whose handshake is done.
pub struct TlsConn {
    tcp: TcpStream,
    tls: rustls::ServerConnection,
    /// Plaintext rustls holds that was not read yet.
    buffered: usize,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("tcp", &self.tcp)
            .field("buffered", &self.buffered)
            .finish_non_exhaustive()
    }
}

/// `io::Read`/`io::Write` on a shared TCP stream, without blocking.
struct Socket<'a>(&'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsConn {
    /// A connection from what a TLS acceptor made: its socket and its rustls state.
    ///
    /// # Errors
    /// When what the handshake read past itself is not valid TLS.
    pub fn new(tcp: TcpStream, mut tls: rustls::ServerConnection) -> Result<Self, rustls::Error> {
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        // The handshake may have read the client's first bytes (its request) already.
        let buffered = tls.process_new_packets()?.plaintext_bytes_to_read();
        Ok(TlsConn { tcp, tls, buffered })
    }

    /// Hands the socket what rustls has to send, until it would block.
    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut Socket(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        for _ in 0..MAX_RECORD_READS {
            match self.tls.reader().read(buf) {
                Ok(n) => {
                    self.buffered = self.buffered.saturating_sub(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.buffered = 0,
                Err(e) => return Err(e),
            }
            let read = self.tls.read_tls(&mut Socket(&self.tcp))?;
            let state = self
                .tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.buffered = state.plaintext_bytes_to_read();
            // Alerts and key updates rustls answers go out with the next flush.
            match self.flush() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            if read == 0 && self.buffered == 0 {
                // The socket's end: rustls answers `Ok(0)` after a `close_notify`, an
                // unexpected end of file otherwise.
                return self.tls.reader().read(buf);
            }
        }
        // More records wait: the socket stays readable, so the caller comes back.
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush()?;
        let n = self.tls.writer().write_vectored(bufs)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            // rustls's buffer is empty here (flushed above), so it always takes something:
            // a would-block now would leave the socket writable and the caller spinning.
            return Err(io::ErrorKind::WriteZero.into());
        }
        match self.flush() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    async fn ready(&mut self, interest: Interest) -> io::Result<Ready> {
        loop {
            if interest.is_readable() && self.buffered > 0 {
                return Ok(Ready::READABLE);
            }
            match self.flush() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            let mut wanted = interest;
            if self.tls.wants_write() {
                wanted |= Interest::WRITABLE;
            }
            let ready = self.tcp.ready(wanted).await?;
            let asked = (interest.is_readable() && (ready.is_readable() || ready.is_read_closed()))
                || (interest.is_writable() && (ready.is_writable() || ready.is_write_closed()));
            if asked {
                return Ok(ready);
            }
            // Writable for rustls's own bytes only: flush them and wait again.
        }
    }

    async fn shutdown(&mut self) {
        self.tls.send_close_notify();
        while self.tls.wants_write() {
            match self.flush() {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.tcp.writable().await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
    }
}

impl Conn {
    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => &tls.tcp,
        }
    }

    /// Whether it is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// Waits until a read or write (as `interest` asks) may make progress. For TLS, it also
    /// writes what rustls has to send meanwhile, and answers readable at once while rustls
    /// holds plaintext that was not read.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn ready(&mut self, interest: Interest) -> io::Result<Ready> {
        match self {
            Conn::Plain(tcp) => tcp.ready(interest).await,
            Conn::Tls(tls) => tls.ready(interest).await,
        }
    }

    /// Reads what is there without waiting: `Ok(0)` at the end, `WouldBlock` for nothing yet.
    ///
    /// # Errors
    /// `WouldBlock`, or the connection's error (a TLS one as `InvalidData`).
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.try_read(buf),
            Conn::Tls(tls) => tls.try_read(buf),
        }
    }

    /// Writes what it can of `bufs` without waiting; answers how much it took.
    ///
    /// # Errors
    /// `WouldBlock` when it took nothing, or the connection's error.
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.try_write_vectored(bufs),
            Conn::Tls(tls) => tls.try_write_vectored(bufs),
        }
    }

    /// Ends the sending side: for TLS, a `close_notify` and what rustls still holds first
    /// (bound it with a timeout); then the TCP FIN.
    pub async fn shutdown(&mut self) {
        match self {
            Conn::Plain(tcp) => {
                let _ = socket2::SockRef::from(&*tcp).shutdown(std::net::Shutdown::Write);
            }
            Conn::Tls(tls) => tls.shutdown().await,
        }
    }
}
