//! A tiny built-in origin for the embedded default config, so `pygateway run` with no
//! arguments proxies to something real without any other service installed.

use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::body::ResponseBody;
use super::drain::Drain;

async fn answer(
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    let via = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    let text = format!(
        "hello from the pygateway demo origin\nmethod: {}\nuri: {}\nhost: {host}\nx-forwarded-for: {via}\n",
        req.method(),
        req.uri()
    );
    let mut r = Response::new(ResponseBody::full(text));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(r)
}

/// Serves the demo origin until shutdown.
pub async fn serve(listener: TcpListener, mut shutdown: watch::Receiver<Option<Duration>>) {
    let graceful = Drain::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .with_upgrades();
                let watched = graceful.watch(conn);
                tokio::spawn(async move { let _ = watched.await; });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
}
