"""The coordinator tests' small campaign spec, for the fault suite."""

from tests.unit.coordinator.conftest import tiny_spec  # noqa: F401 - a fixture
