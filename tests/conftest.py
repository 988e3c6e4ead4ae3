"""Shared fixtures: the real mail servers live in tests/rig/."""

from tests.rig.fixtures import *  # noqa: F401,F403
