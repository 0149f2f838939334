"""``python -m recstream``: the same command line as the ``recstream`` script."""

from recstream.streams.cli import main

raise SystemExit(main())
