import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


CHROMIUM = "/usr/bin/chromium"
#: CI sets this to 1 where chromium was installed: a missing browser then fails the browser tests
#: instead of skipping them, so they cannot vanish unseen.
REQUIRE_BROWSER_ENV = "UNIREG_REQUIRE_BROWSER"


@pytest.fixture
def chromium() -> str:
    """Path of headless chromium; skips (fails under ``UNIREG_REQUIRE_BROWSER=1``) when it is missing."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{CHROMIUM} not found but {REQUIRE_BROWSER_ENV}=1: the browser tests must run here")
    pytest.skip("chromium not installed (apt-get install chromium)")
