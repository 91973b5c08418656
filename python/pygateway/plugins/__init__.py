"""Built-in plugins, one module each (APISIX names; modules starting with ``_`` are helpers)."""
