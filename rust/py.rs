//! The Python face of the data plane: the only module that knows Python types.

use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

use crate::config::ChangeSet;
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
    #[pyo3(signature = (listen, workers, router = "radixtree_host_uri", trusted_addresses = Vec::new(), header_read_timeout = 60.0, demo_origin = None))]
    fn new(
        listen: Vec<String>,
        workers: usize,
        router: &str,
        trusted_addresses: Vec<String>,
        header_read_timeout: f64,
        demo_origin: Option<String>,
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
            header_read_timeout: Duration::from_secs_f64(header_read_timeout),
            demo_origin,
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
        let drain = Duration::from_secs_f64(drain_timeout.max(0.0));
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
}

/// Sets the data plane's log level on stderr.
#[pyfunction]
fn set_log_level(level: &str) -> PyResult<()> {
    crate::logging::init(level).map_err(PyValueError::new_err)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDataPlane>()?;
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    m.add("CoreError", m.py().get_type::<CoreError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
