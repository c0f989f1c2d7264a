"""Fixtures shared by the integration tests."""

from tests.support.k3sharness import make  # noqa: F401 - the K3s fixture node + k3s_args control factory
