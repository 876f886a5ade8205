"""Session fixtures: one real Tansu broker and one real redis-server on 127.0.0.1 for all tests.

Each test gets fresh product names (so fresh topics and Redis keys); everything the fixtures
start is stopped, and the session checks that no server process is left behind.
"""

from __future__ import annotations

import os
import uuid

import pytest

from cluster.embedded import EmbeddedServices, embedded_services


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> EmbeddedServices:
    """A running broker and redis-server, stopped at the end of the session."""
    state = tmp_path_factory.mktemp("servers")
    with embedded_services(state) as running:
        yield running
    for server in (running.broker, running.redis):
        assert server.process is not None and server.process.poll() is not None, (
            f"{server.name} still running"
        )
        with pytest.raises(ProcessLookupError):
            os.kill(server.process.pid, 0)


@pytest.fixture
def product() -> str:
    """A product name no other test uses: its topics and Redis keys are fresh."""
    return f"T{uuid.uuid4().hex[:10].upper()}-USD"


@pytest.fixture
def cluster_factory(services, tmp_path):
    """Make clusters of real nodes (optionally against other servers); all stopped after the test."""
    from tests.integration.harness import Cluster

    made = []

    def make(products, other_services=None):
        cluster = Cluster(other_services or services, tmp_path, products)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()


@pytest.fixture
def start_local():
    """Start extra local servers (cluster/embedded.py) for one test; every one is stopped after it."""
    started = []

    def start(server):
        started.append(server)
        server.start()
        return server

    yield start
    for server in reversed(started):
        server.stop()
