"""Headless Scipion for the protocol tests: a local hosts.conf under SCIPION_HOME (set by the Makefile)."""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def scipion_hosts():
    if os.environ.get("SCIPION_HOME"):
        from tomodrgn_scipion.headless import ensure_hosts_conf

        ensure_hosts_conf()
