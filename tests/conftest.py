"""Shared test configuration: fixtures live in tests/fixtures/, one module per real part."""

pytest_plugins = [
    "tests.fixtures.kube",
    "tests.fixtures.cluster",  # after kube, which it imports (so pytest can rewrite kube's asserts)
    "tests.fixtures.kueue",  # after cluster, which it imports
    "tests.fixtures.models",
    "tests.fixtures.observability",
    "tests.fixtures.s3",
    "tests.fixtures.triton",
]
