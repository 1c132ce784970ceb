"""`python -m pangate.cli`: the same as the `pangate` command."""

from pangate.cli.main import main

raise SystemExit(main())
