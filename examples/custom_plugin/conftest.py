# Enables the pygateway_origin and pygateway_gateway fixtures for the tests in this directory.
pytest_plugins = ["pygateway.testing"]
