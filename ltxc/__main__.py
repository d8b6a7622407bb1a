"""`python -m ltxc` is the `ltxc` command."""

from ltxc.cli import main

raise SystemExit(main())
