"""GPU tests: skipped (with the reason) unless kernels_available() says this machine can run them."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def _skip_reason() -> str | None:
    from cf_compile_kernels import kernels_available

    ok, reason = kernels_available()
    return None if ok else f"no usable GPU for cluster kernels: {reason}"


def pytest_collection_modifyitems(config, items):
    """Every test under tests/gpu carries the `gpu` marker (declared in pyproject.toml). Each argument of a GPU
    test must resolve to a fixture or a parametrize name at collection: on a machine without a GPU the tests
    are skipped before their fixtures are looked up, so a lost @parametrize would otherwise surface only on
    the device (it once hid 80 cases behind one setup error)."""
    unresolved = []
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            params = getattr(getattr(item, "callspec", None), "params", {})
            known = item._fixtureinfo.name2fixturedefs  # pytest's resolved fixtures of this item
            missing = [n for n in item.fixturenames if n not in known and n not in params and n != "request"]
            if missing:
                unresolved.append(f"{item.nodeid}: {', '.join(missing)}")
    if unresolved:
        raise pytest.UsageError("GPU tests with arguments that are neither fixtures nor parametrized:\n  "
                                + "\n  ".join(unresolved))


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None:
        reason = _skip_reason()
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def test_kernel():
    """Factory: test_kernel(name, *template_args) -> LoadedKernel from csrc/collectives_test.cu."""
    import torch

    from cf_compile_kernels.build import compile_kernel
    from cf_compile_kernels.launch import load_kernel

    def make(name: str, *template_args):
        compiled = compile_kernel("collectives_test.cu", name, template_args=template_args)
        return load_kernel(compiled, torch.cuda.current_device())

    return make
