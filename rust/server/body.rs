//! Body types of the proxy: what goes upstream and what goes back to the client.
//!
//! Bodies stream frame by frame; nothing here buffers a whole body.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use crate::limit::ConnGuard;
use crate::pipeline::{Bridge, Job, Outcome, Phase, Reply, RequestData};
use crate::upstream::h1::{BodyReader, Chunk};
use crate::upstream::pool::Pool;
use tokio::sync::oneshot;

/// Boxed error for body streams.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// [`RequestBody::buffer`]'s error when the client stopped sending (nginx's
/// `client_body_timeout`: 408); any other error is a broken body (400).
pub const STALLED: &str = "client stopped sending its body";

/// The client's request body on its way upstream.
pub enum RequestBody {
    /// No body.
    None,
    /// Streamed through as it arrives.
    Stream(Incoming),
    /// A plugin asked for it whole but it was larger than its limit: what was read, then
    /// the rest (both go upstream if the request goes on).
    Partial(Bytes, Incoming),
    /// Read whole (a plugin asked for it); can be sent again on a retry.
    Buffered(Bytes),
}

impl RequestBody {
    /// The body of a request.
    pub fn new(b: Incoming) -> Self {
        if b.is_end_stream() {
            RequestBody::None
        } else {
            RequestBody::Stream(b)
        }
    }

    /// Whether there is a body to send.
    pub fn is_some(&self) -> bool {
        !matches!(self, RequestBody::None)
    }

    /// Reads the whole body (once) for a plugin: `Ok(None)` when it exceeds `limit`. Nothing
    /// read is lost: a larger limit later reads on, and what goes upstream is the whole body.
    pub async fn buffer(&mut self, limit: usize, stall: Duration) -> Result<Option<Bytes>, String> {
        let (read, mut incoming) = match std::mem::replace(self, RequestBody::None) {
            RequestBody::None => return Ok(Some(Bytes::new())),
            RequestBody::Buffered(b) => {
                let whole = (b.len() <= limit).then(|| b.clone());
                *self = RequestBody::Buffered(b);
                return Ok(whole);
            }
            RequestBody::Partial(read, rest) if read.len() > limit => {
                *self = RequestBody::Partial(read, rest);
                return Ok(None);
            }
            RequestBody::Partial(read, rest) => (read, rest),
            RequestBody::Stream(rest) => (Bytes::new(), rest),
        };
        let mut buf = bytes::BytesMut::from(&read[..]);
        loop {
            let frame = match tokio::time::timeout(stall, incoming.frame()).await {
                Err(_) => return Err(STALLED.into()),
                Ok(None) => break,
                Ok(Some(f)) => f.map_err(|e| format!("client body: {e}"))?,
            };
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() > limit {
                    *self = RequestBody::Partial(buf.freeze(), incoming);
                    return Ok(None);
                }
            }
        }
        let whole = buf.freeze();
        *self = RequestBody::Buffered(whole.clone());
        Ok(Some(whole))
    }
}

/// Where a finished upstream connection goes back to.
pub struct PoolReturn {
    /// Its pool.
    pub pool: Arc<Pool>,
    /// Requests it has served, this one included.
    pub served: u64,
}

/// An upstream response body: returns its connection to the pool at the end, and fails
/// (aborting the client connection) on an upstream error or a read timeout.
pub struct UpstreamBody {
    reader: BodyReader,
    pool_return: Option<PoolReturn>,
    read_timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    log: Option<Box<(Arc<Bridge>, Job)>>,
    held: Vec<ConnGuard>,
}

impl UpstreamBody {
    /// Wraps an upstream body.
    pub fn new(reader: BodyReader, pool_return: PoolReturn, read_timeout: Duration) -> Self {
        let mut b = UpstreamBody {
            reader,
            pool_return: Some(pool_return),
            read_timeout,
            idle: None,
            log: None,
            held: Vec::new(),
        };
        if b.reader.is_done() {
            b.release();
        }
        b
    }

    /// Runs the log phase when this body ends, however it ends.
    pub fn on_end(&mut self, bridge: Arc<Bridge>, job: Job) {
        self.log = Some(Box::new((bridge, job)));
    }

    fn release(&mut self) {
        if let Some(r) = self.pool_return.take() {
            if let Some(conn) = self.reader.take_reusable() {
                r.pool.checkin(conn, r.served);
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let (bridge, job) = *log;
            bridge.submit(job);
        }
    }
}

/// Why a response body stopped short (the client connection is then aborted).
#[derive(Debug)]
pub struct BodyAbort(pub &'static str);

impl std::fmt::Display for BodyAbort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for BodyAbort {}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.reader.poll_chunk(cx) {
            Poll::Ready(Ok(Chunk::Data(data))) => {
                this.idle = None;
                if this.reader.is_done() {
                    this.release();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Ok(Chunk::End(conn))) => {
                if let (Some(conn), Some(r)) = (conn, this.pool_return.take()) {
                    r.pool.checkin(conn, r.served);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.pool_return = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => {
                let timeout = this.read_timeout;
                let sleep = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.pool_return = None;
                        Poll::Ready(Some(Err(Box::new(BodyAbort("upstream read timed out")))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.reader.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The body of a response to the client.
pub enum ResponseBody {
    /// A complete body made by the gateway.
    Full(Option<Bytes>),
    /// Streamed from the upstream.
    Upstream(UpstreamBody),
    /// Passed through the plugins' body_filter.
    Filtered(Box<FilteredBody>),
    /// A 101: no body; what the response holds (limit-conn slots, the log phase) lasts as
    /// long as the tunnel that follows.
    Switched(Arc<TunnelLife>),
}

/// What a protocol switch's response holds until the tunnel ends: limit-conn slots (APISIX
/// counts a WebSocket as one connection until it closes) and the log phase, run then.
#[derive(Default)]
pub struct TunnelLife {
    held: parking_lot::Mutex<Vec<ConnGuard>>,
    log: parking_lot::Mutex<Option<(Arc<Bridge>, Job)>>,
}

impl TunnelLife {
    /// Runs `job` (the log phase) when the tunnel ends.
    pub fn on_end(&self, bridge: Arc<Bridge>, job: Job) {
        *self.log.lock() = Some((bridge, job));
    }
}

impl Drop for TunnelLife {
    fn drop(&mut self) {
        if let Some((bridge, job)) = self.log.get_mut().take() {
            bridge.submit(job);
        }
    }
}

/// A response body whose chunks go through Python `body_filter` phases, one crossing each,
/// plus one final crossing with `eof` so plugins can append.
pub struct FilteredBody {
    inner: ResponseBody,
    bridge: Arc<Bridge>,
    request: Arc<RequestData>,
    pending: Option<oneshot::Receiver<Outcome>>,
    finished: bool,
    log: Option<Job>,
}

impl FilteredBody {
    /// Wraps a body.
    pub fn new(inner: ResponseBody, bridge: Arc<Bridge>, request: Arc<RequestData>) -> Self {
        FilteredBody {
            inner,
            bridge,
            request,
            pending: None,
            finished: false,
            log: None,
        }
    }

    /// Runs the log phase when this body ends, however it ends.
    pub fn on_end(&mut self, _bridge: Arc<Bridge>, job: Job) {
        self.log = Some(job);
    }

    fn submit(&mut self, data: Bytes, eof: bool) {
        let (reply, rx) = Reply::channel();
        self.bridge.submit(Job {
            phase: Phase::Body,
            request: self.request.clone(),
            response: None,
            reply: Some(reply),
            chunk: Some((data, eof)),
        });
        self.pending = Some(rx);
        self.finished |= eof;
    }
}

impl Drop for FilteredBody {
    fn drop(&mut self) {
        if let Some(job) = self.log.take() {
            self.bridge.submit(job);
        }
    }
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(rx) = this.pending.as_mut() {
                match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Outcome::Chunk(data))) => {
                        this.pending = None;
                        if !data.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        continue;
                    }
                    Poll::Ready(_) => {
                        this.pending = None;
                        this.finished = true;
                        return Poll::Ready(Some(Err(Box::new(BodyAbort("body_filter failed")))));
                    }
                }
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let eof = this.inner.is_end_stream();
                        this.submit(data, eof);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.submit(Bytes::new(), true),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.pending.is_none()
    }
}

impl ResponseBody {
    /// Keeps limit-conn slots until this body is done (a body made here is done at once).
    pub fn hold(&mut self, guards: Vec<ConnGuard>) {
        match self {
            ResponseBody::Full(_) => drop(guards),
            ResponseBody::Upstream(u) => u.held.extend(guards),
            ResponseBody::Filtered(f) => f.inner.hold(guards),
            ResponseBody::Switched(t) => t.held.lock().extend(guards),
        }
    }

    /// A body made by the gateway.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(b.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream(u) => Pin::new(u).poll_frame(cx),
            ResponseBody::Filtered(f) => Pin::new(&mut **f).poll_frame(cx),
            ResponseBody::Switched(_) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Upstream(u) => u.is_end_stream(),
            ResponseBody::Filtered(f) => f.is_end_stream(),
            ResponseBody::Switched(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Upstream(u) => u.size_hint(),
            ResponseBody::Filtered(_) => SizeHint::default(),
            ResponseBody::Switched(_) => SizeHint::with_exact(0),
        }
    }
}
