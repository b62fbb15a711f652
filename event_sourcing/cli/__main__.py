"""`python -m event_sourcing.cli ...`: the same as the `mlevents` console script.

Kept separate so the package import has no side effects.
"""

from event_sourcing.cli import main

raise SystemExit(main())
