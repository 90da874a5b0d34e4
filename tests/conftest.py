"""Shared test configuration: fixtures live in tests/fixtures/, one module per real part."""

pytest_plugins = [
    "tests.fixtures.cluster",
    "tests.fixtures.kueue",  # after cluster, which it imports
    "tests.fixtures.models",
    "tests.fixtures.observability",
    "tests.fixtures.s3",
    "tests.fixtures.triton",
]
