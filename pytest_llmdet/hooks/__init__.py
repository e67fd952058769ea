"""The pytest side of the plugin: the hooks of each feature (one module each) and, here, every stash key of the
plugin, in one place that imports nothing of ours: the hook modules and plugin.py import them from here
(downwards), so no module imports the entry module back. (Here, not in a module of their own: pytest imports
this package on every run, and each module more costs every run about 0.1 ms.)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_llmdet.engines.llm import LLM
    from pytest_llmdet.golden.snapshot import TestSnapshots
    from pytest_llmdet.hooks.state import LLMDetSession

# config.stash
SESSION_KEY: pytest.StashKey[LLMDetSession] = pytest.StashKey()
DETERMINISM_KEY: pytest.StashKey[Any] = pytest.StashKey()  # hooks.state.DeterminismState
SNAPSHOT_PLUGIN_KEY: pytest.StashKey[Any] = pytest.StashKey()  # hooks.snapshots.SnapshotPlugin, with golden files
PREFETCH_KEY: pytest.StashKey[Any] = pytest.StashKey()  # hooks.prefetch.PrefetchPlugin, in a check with --llm-prefetch
SHARES_KEY: pytest.StashKey[dict[str, Any]] = pytest.StashKey()  # by name: what xdist workers send (hooks/workers.py)
MERGED_KEY: pytest.StashKey[set[Any]] = pytest.StashKey()  # on the controller: the workers merged so far
ANNOTATIONS_KEY: pytest.StashKey[list[str]] = pytest.StashKey()  # GitHub Actions' ::error lines (hooks/ci.py)

# session.stash
BEFORE_FILTERING_KEY: pytest.StashKey[list] = pytest.StashKey()  # (node id, path, test) of each item, unfiltered

# item.stash
LLM_KEY: pytest.StashKey[LLM] = pytest.StashKey()
SNAPSHOTS_KEY: pytest.StashKey[TestSnapshots] = pytest.StashKey()
PASSIVE_SNAPSHOTS_KEY: pytest.StashKey[bool] = pytest.StashKey()  # set on the re-runs of the determinism check
CALL_RAN_KEY: pytest.StashKey[bool] = pytest.StashKey()  # the call phase ran: only then may its end write
MARKER_ERROR_KEY: pytest.StashKey[str] = pytest.StashKey()  # a bad llm_determinism marker, reported at setup
FACTORS_KEY: pytest.StashKey[Any] = pytest.StashKey()  # markers.CheckPlan: factors to check at the end of this call
FACTORS_RESULT_KEY: pytest.StashKey[Any] = pytest.StashKey()  # hooks.rerun.FactorResult
