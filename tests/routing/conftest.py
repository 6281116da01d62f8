import pytest

from routing import services


@pytest.fixture(autouse=True)
def _fresh_rule_cache():
    # Published rule sets are cached per process by id; ids repeat across tests.
    services._clear_cache()
    yield
    services._clear_cache()
