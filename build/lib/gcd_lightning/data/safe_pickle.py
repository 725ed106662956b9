"""Unpickling of data-set pickles that may only rebuild numpy arrays and plain containers.

The classic MNIST pickle and the CIFAR-10 python batches are pickles; ``pickle.load`` would run
whatever a tampered file asks for. This unpickler resolves only the globals numpy needs to rebuild
arrays (Python 2 and 3 pickles, numpy 1 and 2 module paths) and refuses everything else.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode bytes this way
    }
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data pickle")
        return super().find_class(module, name)


def load_data_pickle(file: IO[bytes]) -> Any:
    """Unpickle ``file`` (opened in binary mode), allowing only numpy arrays and builtin containers.

    Python 2 strings are decoded as latin-1, as torchvision does for CIFAR-10. Raises
    ``pickle.UnpicklingError`` (or ``EOFError``, ``ValueError``...) on malformed or disallowed input.
    """
    return _NumpyOnlyUnpickler(file, encoding="latin1").load()
