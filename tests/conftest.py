from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slower tests (torch.compile, end-to-end); run by default")
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one); `pytest -m cuda` runs them")


@pytest.fixture
def imagenet_sample():
    if not SHARED.is_dir():
        pytest.skip("../shared/data/imagenet-sample not present")
    return SHARED


@pytest.fixture
def run_cli(capsys):
    """Run the robench CLI in-process: returns (exit code, stdout, stderr)."""
    from robench.cli import main

    def run(*args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread for the whole test session: the test models are tiny, and 2 OpenMP threads crawl on a busy
    2-core machine (the full suite took 16.6 min with default threads, 3.6 min with one)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
