"""``python -m pygateway``: the command-line interface."""

from pygateway.cli import main

raise SystemExit(main())
