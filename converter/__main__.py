"""`python -m converter` works without the console script being installed."""

from converter.cli import main

raise SystemExit(main())
