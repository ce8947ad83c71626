import sys

from aiotedge.cli import main

sys.exit(main())
