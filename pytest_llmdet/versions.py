"""Installed package versions, as the header, the fingerprint and the JSON report show them."""

from __future__ import annotations

from importlib import metadata


def package_version(package: str, missing: str = "unknown") -> str:
    """The installed version of `package`, or `missing` when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return missing
