"""Import faiss once, with an install hint, and refuse the silent mix of two faiss builds.

``faiss-cpu`` and ``faiss-gpu`` are separate distributions that both install the module ``faiss``: with both
present, whichever pip unpacked last owns the files, ``--use_gpu`` may find a CPU-only build, and removing
either one breaks the other. The package therefore takes faiss from an extra (``pip install -e ".[cpu]"``
or ``".[gpu]"``) and says what to do when it finds both.
"""

from __future__ import annotations

import functools
from importlib import metadata

from ..errors import DependencyError

FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-cuda")


def installed_faiss_distributions() -> list[str]:
    """The pip distributions providing the module ``faiss`` that are installed here."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


@functools.lru_cache(maxsize=None)
def import_faiss():
    """The ``faiss`` module; :class:`~openmatch.errors.DependencyError` (an ``ImportError``) with the install
    command when it is missing, or when two builds (CPU and GPU) are installed over each other."""
    installed = installed_faiss_distributions()
    if len(installed) > 1:
        gpu = [name for name in installed if name != "faiss-cpu"]
        raise DependencyError(
            f"several faiss builds are installed over each other ({', '.join(installed)}); they share the module "
            f"'faiss', so which one runs is an accident. Keep one: pip uninstall -y {' '.join(installed)} && "
            f"pip install {gpu[0] if gpu else 'faiss-cpu'}"
        )
    try:
        import faiss
    except ImportError as err:
        raise DependencyError(
            "searching needs faiss: pip install -e \".[cpu]\" (faiss-cpu) or, on a CUDA machine, "
            "pip install -e \".[gpu]\" (faiss-gpu)"
        ) from err
    return faiss


def has_gpu_support(faiss) -> bool:
    """Whether this faiss build can search on a GPU (and sees at least one)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
