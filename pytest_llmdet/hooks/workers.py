"""The one path from pytest-xdist workers to the controller, as syrupy merges its workers' reports: each part of
the plugin that keeps results (the session's model loads and generations, the golden-file ledger, the
determinism verdicts) is a share, registered under its name; a worker sends every share's data in its
`workeroutput` at its session's end, and the controller merges each into its share, once per worker (xdist can
report a node down twice, after a KeyboardInterrupt).

A share has `worker_data()` (plain data that execnet can send) and `merge_worker(data)`; plugin.py puts the
shares in `config.stash[SHARES_KEY]` at startup. Imported only at a session's end or when a worker goes down.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmdet.hooks import MERGED_KEY, SHARES_KEY

WORKER_OUTPUT = "llmdet"


def send_to_controller(config: pytest.Config) -> bool:
    """On an xdist worker: put every share's data into the workeroutput; False elsewhere (nothing sent)."""
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is None:
        return False
    shares = config.stash.get(SHARES_KEY, {})
    workeroutput[WORKER_OUTPUT] = {name: share.worker_data() for name, share in shares.items()}
    return True


def receive_from_worker(config: pytest.Config, node: Any) -> None:
    """On the controller, as a worker goes down: merge what it sent into each share, once per worker."""
    data = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    worker = getattr(getattr(node, "gateway", None), "id", id(node))
    merged = config.stash.setdefault(MERGED_KEY, set())
    if data is None or worker in merged:
        return
    merged.add(worker)
    shares = config.stash.get(SHARES_KEY, {})
    for name, share_data in data.items():
        if name in shares:
            shares[name].merge_worker(share_data)


__all__ = ["WORKER_OUTPUT", "receive_from_worker", "send_to_controller"]
