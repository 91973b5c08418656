//! The Python face of the data plane: the only module that knows Python types.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

use crate::config::{seconds, ChangeSet};
use crate::pipeline::{Changes, Held, Job, Outcome, Phase};
use crate::router::PathMode;
use crate::server::{Gateway, GatewayError, Settings};

create_exception!(
    _core,
    CoreError,
    PyException,
    "The data plane refused an operation."
);

fn core_err(e: GatewayError) -> PyErr {
    CoreError::new_err(e.0)
}

/// The native data plane. Blocking calls release the GIL.
#[pyclass(frozen, module = "pygateway._core", name = "DataPlane")]
struct PyDataPlane {
    inner: Gateway,
}

#[pymethods]
impl PyDataPlane {
    #[new]
    #[pyo3(signature = (listen, workers, router = "radixtree_host_uri", trusted_addresses = Vec::new(), header_read_timeout = 60.0, demo_origin = None, debug = false))]
    fn new(
        listen: Vec<String>,
        workers: usize,
        router: &str,
        trusted_addresses: Vec<String>,
        header_read_timeout: f64,
        demo_origin: Option<String>,
        debug: bool,
    ) -> PyResult<Self> {
        let path_mode = match router {
            "radixtree_host_uri" | "radixtree_uri" => PathMode::Plain,
            "radixtree_uri_with_parameter" => PathMode::Params,
            other => return Err(PyValueError::new_err(format!("unknown router {other:?}"))),
        };
        if header_read_timeout.is_nan() || header_read_timeout <= 0.0 {
            return Err(PyValueError::new_err("header_read_timeout must be > 0"));
        }
        let settings = Settings {
            listen,
            workers,
            path_mode,
            trusted_addresses,
            header_read_timeout: seconds(header_read_timeout),
            demo_origin,
            debug,
        };
        Ok(PyDataPlane {
            inner: Gateway::new(settings).map_err(core_err)?,
        })
    }

    /// Binds the listeners and serves in background threads; returns "HOST:PORT" strings.
    fn start(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let addrs = py.detach(|| self.inner.start()).map_err(core_err)?;
        Ok(addrs.iter().map(|a| a.to_string()).collect())
    }

    /// Applies a JSON change set (see docs/CONTRACT-snapshot.md).
    fn apply(&self, py: Python<'_>, changes: String) -> PyResult<()> {
        py.detach(|| {
            let cs: ChangeSet = serde_json::from_str(&changes)
                .map_err(|e| GatewayError(format!("invalid change set: {e}")))?;
            self.inner.apply(cs)
        })
        .map_err(core_err)
    }

    /// Stops accepting; in-flight requests get `drain_timeout` seconds to finish.
    fn stop(&self, py: Python<'_>, drain_timeout: f64) {
        let drain = seconds(drain_timeout);
        py.detach(|| self.inner.stop(drain));
    }

    /// Bound addresses while running.
    fn addresses(&self) -> Vec<String> {
        self.inner
            .addresses()
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    /// The built-in demo origin's "HOST:PORT" (bound at creation), if enabled.
    #[getter]
    fn demo_address(&self) -> Option<String> {
        self.inner.demo_address().map(|a| a.to_string())
    }

    /// Whether it is serving.
    #[getter]
    fn running(&self) -> bool {
        self.inner.is_running()
    }

    /// Number of routes in the router.
    #[getter]
    fn route_count(&self) -> usize {
        self.inner.route_count()
    }

    /// Every queued plugin job, waiting up to `timeout` seconds (without the GIL) when
    /// there is none; an empty list after a timeout or [`interrupt`](Self::interrupt).
    fn wait_jobs(&self, py: Python<'_>, timeout: f64) -> Vec<PyJob> {
        let bridge = self.inner.bridge();
        let wait = seconds(timeout.min(3600.0));
        let jobs: Vec<PyJob> = py
            .detach(|| bridge.wait_all(wait))
            .into_iter()
            .map(|job| PyJob {
                phase: job.phase,
                reply: Arc::new(Mutex::new(job.reply)),
                job: Job { reply: None, ..job },
            })
            .collect();
        bridge.hold(jobs.iter().map(|j| j.reply.clone()).collect());
        jobs
    }

    /// Ends a `wait_jobs` in progress (or the next one) at once.
    fn interrupt(&self) {
        self.inner.bridge().interrupt();
    }

    /// No runner takes plugin jobs any more: queued and later ones fail their requests.
    fn close_jobs(&self) {
        self.inner.bridge().close();
    }
}

/// One plugin crossing of one request. Request data is read from Rust on demand.
#[pyclass(frozen, module = "pygateway._core", name = "Job")]
struct PyJob {
    phase: Phase,
    job: Job,
    reply: Held,
}

fn pairs(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

impl PyJob {
    fn complete(&self, outcome: Outcome) -> PyResult<()> {
        let reply = self
            .reply
            .lock()
            .take()
            .ok_or_else(|| CoreError::new_err("this job was already completed"))?;
        reply.send(outcome);
        Ok(())
    }
}

#[pymethods]
impl PyJob {
    /// "request", "request_late", "header_filter", "body_filter" or "log".
    #[getter]
    fn phase(&self) -> &'static str {
        self.phase.name()
    }
    /// A `request_late` job that only says the late crossing will not happen (a limiter
    /// refused the request): forget the request's plugin run, answer nothing.
    #[getter]
    fn cancelled(&self) -> bool {
        self.phase == Phase::Late && self.reply.lock().is_none()
    }
    #[getter]
    fn request_id(&self) -> u64 {
        self.job.request.id
    }
    #[getter]
    fn route_id(&self) -> &str {
        &self.job.request.route_id
    }
    #[getter]
    fn method(&self) -> &str {
        self.job.request.method.as_str()
    }
    /// The request target as received (path and query).
    #[getter]
    fn request_uri(&self) -> String {
        self.job
            .request
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned())
    }
    /// The canonical path.
    #[getter]
    fn path(&self) -> &str {
        &self.job.request.path
    }
    #[getter]
    fn query(&self) -> Option<&str> {
        self.job.request.uri.query()
    }
    #[getter]
    fn host(&self) -> &str {
        &self.job.request.host
    }
    #[getter]
    fn remote_addr(&self) -> String {
        self.job.request.client.to_string()
    }
    #[getter]
    fn remote_port(&self) -> u16 {
        self.job.request.peer.port()
    }
    #[getter]
    fn server_addr(&self) -> String {
        self.job.request.local.ip().to_string()
    }
    #[getter]
    fn server_port(&self) -> u16 {
        self.job.request.local.port()
    }
    /// First value of a request header, or None.
    fn header(&self, name: &str) -> Option<String> {
        self.job
            .request
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    /// All request headers as (lower-case name, value) pairs.
    fn headers(&self) -> Vec<(String, String)> {
        pairs(&self.job.request.headers)
    }
    /// The whole client body, read on demand (request phases only); None when it is larger
    /// than `limit` bytes. Blocks this thread (without the GIL) until the body is in.
    fn read_body<'py>(
        &self,
        py: Python<'py>,
        limit: usize,
    ) -> PyResult<Option<Bound<'py, pyo3::types::PyBytes>>> {
        if !matches!(self.phase, Phase::Request | Phase::Late) {
            return Err(CoreError::new_err(
                "the request body can only be read in rewrite, access or before_proxy",
            ));
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        {
            // Ask on the crossing's channel; its outcome then comes on a fresh one.
            let mut slot = self.reply.lock();
            let Some(current) = slot.take() else {
                return Err(CoreError::new_err("this job was already completed"));
            };
            let (rest, next) = current.renew();
            *slot = Some(rest);
            current.send(Outcome::NeedBody { limit, reply, next });
        }
        let got = py
            .detach(move || answer.recv_timeout(Duration::from_secs(120)))
            .map_err(|_| CoreError::new_err("the request body did not arrive"))?;
        match got {
            Ok(Some(data)) => Ok(Some(pyo3::types::PyBytes::new(py, &data))),
            Ok(None) => Ok(None),
            Err(e) => Err(CoreError::new_err(e)),
        }
    }
    /// body_filter: the response body chunk.
    #[getter]
    fn chunk<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        let data = self.job.chunk.as_ref().map(|(d, _)| &d[..]).unwrap_or(b"");
        pyo3::types::PyBytes::new(py, data)
    }
    /// body_filter: whether this is the end of the body.
    #[getter]
    fn eof(&self) -> bool {
        self.job.chunk.as_ref().is_some_and(|(_, eof)| *eof)
    }
    /// body_filter: what to send instead of the chunk.
    fn send_chunk(&self, data: Vec<u8>) -> PyResult<()> {
        self.complete(Outcome::Chunk(data.into()))
    }
    /// Captured path parameters.
    fn params(&self) -> Vec<(String, String)> {
        self.job.request.params.clone()
    }
    /// The response status (header_filter, log).
    #[getter]
    fn status(&self) -> Option<u16> {
        self.job.response.as_ref().map(|r| r.status.as_u16())
    }
    /// The response headers (header_filter, log).
    fn response_headers(&self) -> Vec<(String, String)> {
        self.job
            .response
            .as_ref()
            .map(|r| pairs(&r.headers))
            .unwrap_or_default()
    }
    /// Request phases: continue to the upstream with these changes.
    #[pyo3(signature = (set_headers = Vec::new(), remove_headers = Vec::new(), uri = None, method = None, host = None, debug = None, consumer = None, limits = None, again = false))]
    #[allow(clippy::too_many_arguments)]
    fn proceed(
        &self,
        set_headers: Vec<(String, String)>,
        remove_headers: Vec<String>,
        uri: Option<String>,
        method: Option<String>,
        host: Option<String>,
        debug: Option<String>,
        consumer: Option<String>,
        limits: Option<String>,
        again: bool,
    ) -> PyResult<()> {
        self.complete(Outcome::Continue(Changes {
            set_headers,
            remove_headers,
            uri,
            method,
            host,
            debug,
            consumer,
            limits,
            again,
        }))
    }
    /// Request phases: answer the client now.
    #[pyo3(signature = (status, headers, body, debug = None))]
    fn respond(
        &self,
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        debug: Option<String>,
    ) -> PyResult<()> {
        self.complete(Outcome::Respond {
            status,
            headers,
            body: body.into(),
            debug,
        })
    }
    /// header_filter: the status and complete header list to send.
    #[pyo3(signature = (status, headers, debug = None))]
    fn send_head(
        &self,
        status: u16,
        headers: Vec<(String, String)>,
        debug: Option<String>,
    ) -> PyResult<()> {
        self.complete(Outcome::Response {
            status,
            headers,
            debug,
        })
    }
}

/// Sets the data plane's log level on stderr.
#[pyfunction]
fn set_log_level(level: &str) -> PyResult<()> {
    crate::logging::init(level).map_err(PyValueError::new_err)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDataPlane>()?;
    m.add_class::<PyJob>()?;
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    m.add("CoreError", m.py().get_type::<CoreError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
