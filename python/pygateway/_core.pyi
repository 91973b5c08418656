"""Type stubs for the native data plane (Rust, hyper + tokio); checked by mypy.stubtest."""

from typing import final

__version__: str

class CoreError(Exception):
    """The data plane refused an operation (bind failure, invalid change set...)."""

@final
class DataPlane:
    """The native data plane. Blocking calls release the GIL."""

    def __new__(
        cls,
        listen: list[str],
        workers: int,
        router: str = "radixtree_host_uri",
        trusted_addresses: list[str] = ...,
        header_read_timeout: float = 60.0,
        demo_origin: str | None = None,
        debug: bool = False,
    ) -> DataPlane: ...
    def start(self) -> list[str]:
        """Bind the listeners and serve in background threads; return "HOST:PORT" strings."""
    def apply(self, changes: str) -> None:
        """Apply a JSON change set (docs/CONTRACT-snapshot.md)."""
    def stop(self, drain_timeout: float) -> None:
        """Stop accepting; in-flight requests get ``drain_timeout`` seconds to finish."""
    def addresses(self) -> list[str]: ...
    @property
    def demo_address(self) -> str | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def route_count(self) -> int: ...
    def wait_jobs(self, timeout: float) -> list[Job]:
        """Every queued plugin job, waiting up to ``timeout`` seconds (without the GIL)."""
    def interrupt(self) -> None:
        """End a ``wait_jobs`` in progress (or the next one) at once."""
    def close_jobs(self) -> None:
        """No runner takes plugin jobs any more: queued and later ones fail their requests."""

@final
class Job:
    """One plugin crossing of one request; request data is read from Rust on demand."""

    @property
    def phase(self) -> str:
        """``request`` (rewrite, access, before_proxy), ``request_late`` (what runs after
        the native limiters), ``header_filter``, ``body_filter`` or ``log``."""
    @property
    def cancelled(self) -> bool:
        """A ``request_late`` job saying the late crossing will not happen."""
    @property
    def request_id(self) -> int: ...
    @property
    def route_id(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def request_uri(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query(self) -> str | None: ...
    @property
    def host(self) -> str: ...
    @property
    def remote_addr(self) -> str: ...
    @property
    def remote_port(self) -> int: ...
    @property
    def server_addr(self) -> str: ...
    @property
    def server_port(self) -> int: ...
    def header(self, name: str) -> str | None: ...
    def headers(self) -> list[tuple[str, str]]: ...
    def params(self) -> list[tuple[str, str]]: ...
    @property
    def chunk(self) -> bytes:
        """body_filter: the response body chunk."""
    @property
    def eof(self) -> bool:
        """body_filter: whether this is the end of the body."""
    def send_chunk(self, data: bytes) -> None:
        """body_filter: what to send instead of the chunk."""
    def read_body(self, limit: int) -> bytes | None:
        """The whole client body (request phases); None when larger than ``limit``."""
    @property
    def status(self) -> int | None: ...
    def response_headers(self) -> list[tuple[str, str]]: ...
    def proceed(
        self,
        set_headers: list[tuple[str, str]] = ...,
        remove_headers: list[str] = ...,
        uri: str | None = None,
        method: str | None = None,
        host: str | None = None,
        debug: str | None = None,
        consumer: str | None = None,
        limits: str | None = None,
        again: bool = False,
    ) -> None:
        """Request phases: go on to the upstream with these changes."""
    def respond(
        self, status: int, headers: list[tuple[str, str]], body: bytes, debug: str | None = None
    ) -> None:
        """Request phases: answer the client now."""
    def send_head(
        self, status: int, headers: list[tuple[str, str]], debug: str | None = None
    ) -> None:
        """header_filter: the status and complete header list to send."""

def set_log_level(level: str) -> None:
    """Set the data plane's stderr log level: off, error, warn, info, debug, trace."""
