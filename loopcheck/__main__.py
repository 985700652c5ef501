"""``python -m loopcheck``: the same command line as the ``loopcheck`` script."""

from loopcheck.cli import main

raise SystemExit(main())
