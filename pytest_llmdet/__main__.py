"""`python -m pytest_llmdet`: the pending-snapshot review (see review.py)."""

from pytest_llmdet.review import main

raise SystemExit(main())
