"""Type stubs for the native data plane (Rust, hyper + tokio)."""

__version__: str

class CoreError(Exception):
    """The data plane refused an operation (bind failure, invalid change set...)."""

class DataPlane:
    """The native data plane. Blocking calls release the GIL."""

    def __init__(
        self,
        listen: list[str],
        workers: int,
        router: str = "radixtree_host_uri",
        trusted_addresses: list[str] = ...,
        header_read_timeout: float = 60.0,
        demo_origin: str | None = None,
    ) -> None: ...
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

def set_log_level(level: str) -> None:
    """Set the data plane's stderr log level: off, error, warn, info, debug, trace."""
