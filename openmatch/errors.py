"""The exceptions openmatch raises for problems the user can fix, and the category of its own warnings.

Every such exception derives from :class:`OpenMatchError`; the commands (:mod:`openmatch.cli`) print one
``error: <message>`` line for it and exit with status 2, while any other exception is a bug and keeps its
traceback. Each class also keeps the builtin base its callers caught before, so ``except ValueError`` and
``pytest.raises(FileNotFoundError)`` still see them::

    OpenMatchError
    ├── UsageError (ValueError)              a flag or argument value that cannot work
    ├── InputError (ValueError)              a model, checkpoint, data or run file that cannot be used as asked
    │   └── DataFormatError                  a malformed file, "path:line: what" (openmatch.dataset.records)
    ├── MissingInputError (FileNotFoundError) a file or folder the command was told to read is not there
    ├── OutputExistsError (FileExistsError)  the output folder holds a previous run
    ├── IndexFolderError (FileExistsError)   an embedding folder not to write or read (openmatch.retriever.index)
    ├── ResourceError (RuntimeError)         this machine lacks what was asked for (GPUs, faiss-gpu, disk space)
    ├── DependencyError (ImportError)        a package the command needs is missing or installed twice (faiss)
    └── PreprocessingError (RuntimeError)    build_train / build_hn cannot go on (openmatch.preprocessing)

``DataFormatError``, ``IndexFolderError`` and ``PreprocessingError`` live beside the code that raises them and
can also be imported from here.
"""

from __future__ import annotations

__all__ = [
    "OpenMatchError",
    "UsageError",
    "InputError",
    "MissingInputError",
    "OutputExistsError",
    "ResourceError",
    "DependencyError",
    "DataFormatError",
    "IndexFolderError",
    "PreprocessingError",
    "OpenMatchWarning",
]


class OpenMatchError(Exception):
    """A problem the user can fix; the commands report it as one ``error:`` line (exit status 2)."""


class UsageError(OpenMatchError, ValueError):
    """A flag or argument value that cannot work: out of range, missing, or in conflict with another."""


class InputError(OpenMatchError, ValueError):
    """A model, checkpoint, index, data or run file that exists but cannot be used as asked."""


class MissingInputError(OpenMatchError, FileNotFoundError):
    """A file or folder the command was told to read is not there."""


class OutputExistsError(OpenMatchError, FileExistsError):
    """The output folder already holds results that the command refuses to overwrite."""


class ResourceError(OpenMatchError, RuntimeError):
    """This machine lacks what the command asks for (GPUs, a faiss build with GPU support, disk space)."""


class DependencyError(OpenMatchError, ImportError):
    """A package the command needs is not installed, or is installed in a way that cannot work (two faiss
    builds over each other); the message says what to install or remove."""


class OpenMatchWarning(UserWarning):
    """openmatch's own warnings; the commands print them as one ``warning: <message>`` line."""


# These three are defined next to the code that raises them (they import this module, so importing them here
# eagerly would be circular).
_ELSEWHERE = {
    "DataFormatError": "openmatch.dataset.records",
    "IndexFolderError": "openmatch.retriever.index",
    "PreprocessingError": "openmatch.preprocessing",
}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
