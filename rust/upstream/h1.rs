//! The HTTP/1.1 client side of the proxy, driven inline by the request's own task.
//!
//! hyper's client runs every connection as a separate task behind channels; for a proxy
//! that hop costs more than the parsing. Here the request task writes the head, streams
//! the body, parses the response head (httparse) and then hands the connection to the
//! response body, which decodes content-length / chunked / read-to-close framing and
//! gives the connection back to its pool only when the exchange ended cleanly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted from an upstream.
const MAX_HEADERS: usize = 128;
/// Read chunk size.
const READ_CHUNK: usize = 16 * 1024;

/// One upstream connection and what was read ahead on it.
pub struct H1Conn {
    io: TcpStream,
    buf: BytesMut,
    wbuf: Vec<u8>,
}

/// How an upstream failed while the request task was talking to it.
#[derive(Debug)]
pub enum ExchangeError {
    /// The connection closed before any response byte: a stale keep-alive connection.
    ClosedEarly,
    /// An I/O error.
    Io(io::Error),
    /// The upstream sent something that is not a valid HTTP/1.x response head.
    Malformed(&'static str),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::ClosedEarly => f.write_str("upstream closed the connection"),
            ExchangeError::Io(e) => write!(f, "{e}"),
            ExchangeError::Malformed(m) => write!(f, "invalid response from upstream: {m}"),
        }
    }
}

impl std::error::Error for ExchangeError {}

impl From<io::Error> for ExchangeError {
    fn from(e: io::Error) -> Self {
        ExchangeError::Io(e)
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// A parsed response head.
pub struct ResponseHead {
    /// Status.
    pub status: StatusCode,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body framing.
    pub framing: Framing,
    /// Whether the connection may carry another request afterwards.
    pub reusable: bool,
    /// The status line's reason phrase when it is not the status code's canonical one
    /// (nginx relays the upstream's status line as it is).
    pub reason: Option<Bytes>,
}

impl H1Conn {
    /// Wraps a connected stream.
    pub fn new(io: TcpStream) -> Self {
        H1Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
        }
    }

    /// The stream and what was read past the response head (a tunnel's first bytes).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.io, self.buf)
    }

    /// Whether an idle connection still looks usable: nothing readable (no EOF, no stray
    /// bytes) as far as the reactor knows. No syscall.
    pub fn looks_idle(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(self.io.poll_read_ready(&mut cx), Poll::Pending)
    }

    /// Writes the request head; `chunked` adds `Transfer-Encoding: chunked`.
    pub async fn write_head(
        &mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        chunked: bool,
    ) -> io::Result<()> {
        let w = &mut self.wbuf;
        w.clear();
        w.extend_from_slice(method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(target.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        if chunked {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        w.extend_from_slice(b"\r\n");
        self.io.write_all(&self.wbuf).await
    }

    /// Writes one piece of the request body, chunk-encoded if `chunked`.
    pub async fn write_body(&mut self, data: &[u8], chunked: bool) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            self.io.write_all(size.as_bytes()).await?;
            self.io.write_all(data).await?;
            self.io.write_all(b"\r\n").await
        } else {
            self.io.write_all(data).await
        }
    }

    /// Ends a chunked request body.
    pub async fn finish_chunked(&mut self) -> io::Result<()> {
        self.io.write_all(b"0\r\n\r\n").await
    }

    /// Reads the response head, skipping interim 1xx responses. With `upgrade` (the request
    /// asked for a protocol upgrade), a 101 is the answer, its `Upgrade` header kept, and
    /// the connection is then the tunnel's ([`H1Conn::into_parts`]).
    pub async fn read_head(
        &mut self,
        method: &Method,
        upgrade: bool,
    ) -> Result<ResponseHead, ExchangeError> {
        let mut got_any = false;
        loop {
            if let Some(head) = self.parse_head(method)? {
                if head.status.is_informational() {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        if upgrade {
                            return Ok(head);
                        }
                        return Err(ExchangeError::Malformed("unexpected 101 response"));
                    }
                    got_any = true;
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(ExchangeError::Malformed("response head too large"));
            }
            self.buf.reserve(READ_CHUNK);
            let n = match read_some(&mut self.io, &mut self.buf).await {
                Ok(n) => n,
                // A reset before any response byte is the same stale keep-alive as a close.
                Err(e) if !got_any && self.buf.is_empty() && is_reset(&e) => {
                    return Err(ExchangeError::ClosedEarly)
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(if got_any || !self.buf.is_empty() {
                    ExchangeError::Malformed("connection closed inside the response head")
                } else {
                    ExchangeError::ClosedEarly
                });
            }
            got_any = true;
        }
    }

    fn parse_head(&mut self, method: &Method) -> Result<Option<ResponseHead>, ExchangeError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ExchangeError::Malformed("too many headers"))
            }
            Err(_) => return Err(ExchangeError::Malformed("unparsable response head")),
        };
        let code = resp.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| ExchangeError::Malformed("invalid status"))?;
        let reason = resp
            .reason
            .filter(|r| status.canonical_reason() != Some(*r))
            .map(|r| Bytes::copy_from_slice(r.as_bytes()));
        // A 101 keeps its Upgrade header: the gateway's own 101 to the client names it.
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Offsets of each name and value, so the values can share the head's buffer.
        let base = self.buf.as_ptr() as usize;
        let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
        let count = resp.headers.len();
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            *span = (n, n + h.name.len(), v, v + h.value.len());
        }
        let raw = self.buf.split_to(len).freeze();
        // Hop-by-hop headers are left out here, after Transfer-Encoding and Connection have
        // been kept aside for framing.
        let mut headers = HeaderMap::with_capacity(count);
        let mut te: Vec<HeaderValue> = Vec::new();
        let mut connection: Vec<HeaderValue> = Vec::new();
        for &(ns, ne, vs, ve) in &spans[..count] {
            let name = HeaderName::from_bytes(&raw[ns..ne])
                .map_err(|_| ExchangeError::Malformed("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(raw.slice(vs..ve))
                .map_err(|_| ExchangeError::Malformed("invalid header value"))?;
            if name == header::TRANSFER_ENCODING {
                te.push(value);
            } else if name == header::CONNECTION {
                connection.push(value);
            } else if !is_hop_by_hop(&name) || (switching && name == header::UPGRADE) {
                headers.append(name, value);
            }
        }
        let (framing, mut reusable) = framing(method, status, &te, &headers)?;
        reusable &= keep_alive(version, &connection) && !switching;
        for token in tokens(&connection) {
            if let Ok(named) = HeaderName::from_bytes(token.as_bytes()) {
                if !(switching && named == header::UPGRADE) {
                    headers.remove(named);
                }
            }
        }
        Ok(Some(ResponseHead {
            status,
            headers,
            framing,
            reusable,
            reason,
        }))
    }
}

/// Headers about one connection only (RFC 9110 §7.6.1), besides those `Connection` names.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "keep-alive" | "proxy-connection" | "te" | "upgrade" | "trailer" | "proxy-authenticate"
    )
}

/// The tokens of `Connection` header values.
fn tokens(values: &[HeaderValue]) -> impl Iterator<Item = &str> {
    values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn is_reset(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

async fn read_some(io: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_some(io, buf, cx)).await
}

fn poll_read_some(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    let spare = buf.spare_capacity_mut();
    let mut rb = ReadBuf::uninit(spare);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// RFC 9112 §6.3 body length rules for a response.
fn framing(
    method: &Method,
    status: StatusCode,
    te: &[HeaderValue],
    headers: &HeaderMap,
) -> Result<(Framing, bool), ExchangeError> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if !te.is_empty() {
        let chunked = tokens(te)
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        // TE with Content-Length is a smuggling smell: honour TE, never reuse.
        let reusable = !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked, reusable)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(ExchangeError::Malformed("invalid content-length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ExchangeError::Malformed("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ExchangeError::Malformed("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

fn keep_alive(version: Version, connection: &[HeaderValue]) -> bool {
    let has = |token: &str| tokens(connection).any(|t| t.eq_ignore_ascii_case(token));
    if version == Version::HTTP_10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// Decoding state of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `remaining` bytes of a fixed-length body.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk.
    ChunkEnd,
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// Until EOF.
    Close,
    /// Complete.
    Done,
}

/// Reads a response body off an [`H1Conn`], frame by frame.
pub struct BodyReader {
    conn: Option<H1Conn>,
    state: State,
    reusable: bool,
}

/// What one poll of a [`BodyReader`] produced.
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The body ended; the connection is returned when it can carry another request.
    End(Option<H1Conn>),
}

/// A largest chunk size line we accept (hex digits plus extensions).
const MAX_CHUNK_LINE: usize = 4096;

impl BodyReader {
    /// Starts reading a body with this framing on `conn`.
    pub fn new(conn: H1Conn, framing: Framing, reusable: bool) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        BodyReader {
            conn: Some(conn),
            state,
            reusable,
        }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the connection back once the body is done, if it can be reused.
    pub fn take_reusable(&mut self) -> Option<H1Conn> {
        if self.state != State::Done || !self.reusable {
            return None;
        }
        let conn = self.conn.take()?;
        // Bytes after the body mean the upstream is out of step: never reuse.
        conn.buf.is_empty().then_some(conn)
    }

    /// Polls for the next piece of the body.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Chunk, ExchangeError>> {
        loop {
            if self.state == State::Done {
                return Poll::Ready(Ok(Chunk::End(self.take_reusable())));
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Ok(Chunk::End(None)));
            };
            match self.state {
                State::Length(rem) if !conn.buf.is_empty() => {
                    let n = (conn.buf.len() as u64).min(rem) as usize;
                    let data = conn.buf.split_to(n).freeze();
                    self.state = if rem == n as u64 {
                        State::Done
                    } else {
                        State::Length(rem - n as u64)
                    };
                    return Poll::Ready(Ok(Chunk::Data(data)));
                }
                State::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Ok(Chunk::Data(data)));
                }
                State::ChunkData(rem) if !conn.buf.is_empty() => {
                    let n = (conn.buf.len() as u64).min(rem) as usize;
                    let data = conn.buf.split_to(n).freeze();
                    self.state = if rem == n as u64 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(rem - n as u64)
                    };
                    return Poll::Ready(Ok(Chunk::Data(data)));
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    if let Some(next) = chunk_line(&mut conn.buf, self.state)? {
                        self.state = next;
                        continue;
                    }
                    if conn.buf.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Err(ExchangeError::Malformed("chunk line too long")));
                    }
                }
                _ => {}
            }
            // Need more bytes.
            match poll_read_some(&mut conn.io, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
                Poll::Ready(Ok(0)) => {
                    if self.state == State::Close {
                        self.state = State::Done;
                        self.reusable = false;
                        continue;
                    }
                    return Poll::Ready(Err(ExchangeError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection mid-body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

/// Consumes one complete line of chunked framing from `buf`; `None` until it is complete.
fn chunk_line(buf: &mut BytesMut, state: State) -> Result<Option<State>, ExchangeError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ExchangeError::Malformed("bare LF in chunked body"));
    }
    let line = buf.split_to(lf + 1);
    let line = &line[..lf - 1];
    match state {
        State::ChunkEnd => {
            if !line.is_empty() {
                return Err(ExchangeError::Malformed("missing CRLF after chunk"));
            }
            Ok(Some(State::ChunkSize))
        }
        State::Trailers => Ok(Some(if line.is_empty() {
            State::Done
        } else {
            State::Trailers
        })),
        _ => {
            let size_text = line.split(|b| *b == b';').next().unwrap_or_default();
            let size_text = size_text.trim_ascii();
            if size_text.is_empty()
                || size_text.len() > 15
                || !size_text.iter().all(u8::is_ascii_hexdigit)
                || line.contains(&b'\r')
            {
                return Err(ExchangeError::Malformed("invalid chunk size"));
            }
            let size = u64::from_str_radix(std::str::from_utf8(size_text).unwrap_or("x"), 16)
                .map_err(|_| ExchangeError::Malformed("invalid chunk size"))?;
            Ok(Some(if size == 0 {
                State::Trailers
            } else {
                State::ChunkData(size)
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn split(pairs: &[(&str, &str)]) -> (Vec<HeaderValue>, HeaderMap) {
        let all = headers(pairs);
        let te = all
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .cloned()
            .collect();
        let mut rest = all;
        rest.remove(header::TRANSFER_ENCODING);
        (te, rest)
    }

    #[test]
    fn framing_follows_rfc9112() {
        let get = Method::GET;
        let ok = StatusCode::OK;
        let f = |h: &[(&str, &str)]| {
            let (te, rest) = split(h);
            framing(&get, ok, &te, &rest)
        };
        assert_eq!(
            f(&[("content-length", "5")]).unwrap(),
            (Framing::Length(5), true)
        );
        assert_eq!(
            f(&[("content-length", "5"), ("content-length", "5")]).unwrap(),
            (Framing::Length(5), true)
        );
        assert!(f(&[("content-length", "5"), ("content-length", "6")]).is_err());
        assert!(f(&[("content-length", "+5")]).is_err());
        assert!(f(&[("content-length", "-1")]).is_err());
        assert_eq!(
            f(&[("transfer-encoding", "chunked")]).unwrap(),
            (Framing::Chunked, true)
        );
        assert_eq!(
            f(&[("transfer-encoding", "chunked"), ("content-length", "5")]).unwrap(),
            (Framing::Chunked, false),
            "TE + CL: chunked wins and the connection is not reused"
        );
        assert_eq!(
            f(&[("transfer-encoding", "gzip")]).unwrap(),
            (Framing::Close, false)
        );
        assert_eq!(f(&[]).unwrap(), (Framing::Close, false));
        let (te, rest) = split(&[("content-length", "5")]);
        assert_eq!(
            framing(&Method::HEAD, ok, &te, &rest).unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing(&get, StatusCode::NOT_MODIFIED, &[], &HeaderMap::new()).unwrap(),
            (Framing::Empty, true)
        );
    }

    #[test]
    fn keep_alive_rules() {
        let v = |s: &str| vec![HeaderValue::from_str(s).unwrap()];
        assert!(keep_alive(Version::HTTP_11, &[]));
        assert!(!keep_alive(Version::HTTP_11, &v("Close")));
        assert!(!keep_alive(Version::HTTP_10, &[]));
        assert!(keep_alive(Version::HTTP_10, &v("keep-alive")));
    }

    #[test]
    fn chunk_lines() {
        let mut b = BytesMut::from(&b"1a;ext=1\r\nrest"[..]);
        assert_eq!(
            chunk_line(&mut b, State::ChunkSize).unwrap(),
            Some(State::ChunkData(26))
        );
        assert_eq!(&b[..], b"rest");
        let mut b = BytesMut::from(&b"0\r\n"[..]);
        assert_eq!(
            chunk_line(&mut b, State::ChunkSize).unwrap(),
            Some(State::Trailers)
        );
        let mut b = BytesMut::from(&b"1"[..]);
        assert_eq!(chunk_line(&mut b, State::ChunkSize).unwrap(), None);
        for bad in [&b"zz\r\n"[..], b"1\n", b"\r\n", b"fffffffffffffffff\r\n"] {
            let mut b = BytesMut::from(bad);
            assert!(chunk_line(&mut b, State::ChunkSize).is_err(), "{bad:?}");
        }
        let mut b = BytesMut::from(&b"x\r\n"[..]);
        assert!(chunk_line(&mut b, State::ChunkEnd).is_err());
        let mut b = BytesMut::from(&b"X-T: 1\r\n\r\n"[..]);
        assert_eq!(
            chunk_line(&mut b, State::Trailers).unwrap(),
            Some(State::Trailers)
        );
        assert_eq!(
            chunk_line(&mut b, State::Trailers).unwrap(),
            Some(State::Done)
        );
    }
}
