"""What the E2B SDK tests share: the SDK pointed at the module's platform (module-scoped, as the
platform is; a module that needs another template overrides ``e2b_env``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.e2b import E2BEnv, e2b_environment
from tests.harness.platform import Platform


@pytest.fixture(scope="module")
def e2b_env(platform: Platform) -> Iterator[E2BEnv]:
    with e2b_environment(platform) as env:
        yield env
