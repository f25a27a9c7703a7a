"""faiss comes from one extra: a missing faiss and two builds installed over each other are clear errors."""

from __future__ import annotations

import builtins
import re
from importlib import metadata
from types import SimpleNamespace

import pytest

from openmatch.errors import OpenMatchError
from openmatch.retriever import faiss_loader

from tests import REPO


@pytest.fixture(autouse=True)
def fresh_cache():
    faiss_loader.import_faiss.cache_clear()
    yield
    faiss_loader.import_faiss.cache_clear()


def fake_installed(monkeypatch, names):
    def distribution(name):
        if name in names:
            return object()
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(faiss_loader.metadata, "distribution", distribution)


def test_one_build_imports(monkeypatch):
    fake_installed(monkeypatch, {"faiss-cpu"})
    faiss = faiss_loader.import_faiss()
    assert hasattr(faiss, "IndexFlatIP")
    assert faiss_loader.has_gpu_support(faiss) is False  # the installed build is faiss-cpu


def fake_faiss(gpu_build: bool, num_gpus: int | None) -> SimpleNamespace:
    """A stand-in for the faiss module: ``gpu_build`` gives it StandardGpuResources, ``num_gpus`` (None:
    no such function, as in CPU builds that lack it) what ``get_num_gpus`` returns."""
    attributes = {}
    if gpu_build:
        attributes["StandardGpuResources"] = object
    if num_gpus is not None:
        attributes["get_num_gpus"] = lambda: num_gpus
    return SimpleNamespace(**attributes)


@pytest.mark.parametrize(
    "gpu_build,num_gpus,expected",
    [
        (True, 1, True),
        (True, 2, True),
        (True, 0, False),  # faiss-gpu on a machine without a visible GPU
        (False, 1, False),  # a CPU build that counts GPUs it cannot use
        (False, 0, False),
        (False, None, False),
    ],
)
def test_gpu_support_needs_a_gpu_build_and_a_gpu(gpu_build, num_gpus, expected):
    assert faiss_loader.has_gpu_support(fake_faiss(gpu_build, num_gpus)) is expected


def test_two_builds_are_refused_with_the_fix(monkeypatch):
    fake_installed(monkeypatch, {"faiss-cpu", "faiss-gpu"})
    with pytest.raises(ImportError) as info:
        faiss_loader.import_faiss()
    assert isinstance(info.value, OpenMatchError)  # the commands print it as one error: line
    message = str(info.value)
    assert "\n" not in message
    assert "faiss-cpu, faiss-gpu" in message
    assert "pip uninstall -y faiss-cpu faiss-gpu && pip install faiss-gpu" in message


def test_missing_faiss_names_the_extras(monkeypatch):
    fake_installed(monkeypatch, set())
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[cpu]"')) as info:
        faiss_loader.import_faiss()
    assert isinstance(info.value, OpenMatchError)


def test_setup_declares_faiss_only_in_the_extras():
    """The required packages hold no faiss; the cpu and gpu extras hold one build each."""
    text = (REPO / "setup.py").read_text()
    required = text[text.index("install_requires=[") : text.index("],", text.index("install_requires=["))]
    assert "faiss" not in required
    assert re.search(r'"cpu": \["faiss-cpu[^"]*"\]', text)
    assert re.search(r'"gpu": \["faiss-gpu[^"]*"\]', text)
