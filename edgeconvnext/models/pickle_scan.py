"""What a pickled checkpoint would call, read without unpickling it.

Input: a ``torch.save`` file (zip archive with ``*/data.pkl``, or a legacy raw pickle). Output: the globals
(``module.name``) its pickle imports, from the opcodes alone (``pickletools``): nothing in the file runs.
:func:`blocked_globals` names those no checkpoint needs and that run commands or code when unpickled
(``posix.system``, ``builtins.eval`` ...): such a file is refused even with ``--allow-unsafe-pickle``.

Usage::

    blocked_globals(Path("evil.pt"))     # ['posix.system']
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

#: modules whose functions a checkpoint never needs: a pickle importing them is an attack, not data
BLOCKED_MODULES = frozenset(
    {
        "os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "importlib", "runpy", "pty", "code",
        "codeop", "webbrowser", "ctypes", "pickle", "_pickle", "marshal", "types", "multiprocessing", "signal",
        "platform", "pdb", "timeit", "asyncio", "threading", "_thread", "io", "_io", "tempfile", "glob",
    }
)  # fmt: skip
#: the builtins plain data needs (containers, numbers); any other builtin (eval, exec, getattr, open,
#: __import__, compile ...) is blocked
DATA_BUILTINS = frozenset(
    {"set", "frozenset", "slice", "complex", "bytearray", "bytes", "tuple", "list", "dict", "int", "float", "str"}
    | {"bool", "range"}
)
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _pickles(path: Path) -> list[bytes]:
    """The pickle streams of a torch.save file: ``*/data.pkl`` of the zip format, else the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    return [path.read_bytes()]


def pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` the pickle ``data`` imports (GLOBAL and STACK_GLOBAL), in order."""
    found: list[str] = []
    strings: list[str] = []  # string constants pushed so far, for STACK_GLOBAL (module, name on the stack)
    memo: dict[int, str] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            index = arg if isinstance(arg, int) else -1  # the memo slot of PUT/GET opcodes
            if name in _STRING_OPS:
                strings.append(arg if isinstance(arg, str) else str(arg))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                memo[index] = strings[-1]
            elif name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET") and index in memo:
                strings.append(memo[index])
            elif name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except (ValueError, EOFError):  # a truncated or non-pickle tail: what was read so far counts
        pass
    return found


def is_blocked(qualified: str) -> bool:
    module, _, name = qualified.rpartition(".")
    top = module.split(".")[0]
    if top in ("builtins", "__builtin__"):
        return name not in DATA_BUILTINS
    return top in BLOCKED_MODULES


def blocked_globals(path: Path) -> list[str]:
    """The blocked globals (:func:`is_blocked`) the pickles of ``path`` would call, each once, in order."""
    out: list[str] = []
    for data in _pickles(path):
        for g in pickle_globals(data):
            if is_blocked(g) and g not in out:
                out.append(g)
    return out
