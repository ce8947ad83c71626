"""`python -m aiotedge_converter` works without the console script being installed."""

from aiotedge_converter.cli import main

raise SystemExit(main())
