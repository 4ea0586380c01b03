"""One packed copy of the XNNPACK weights for every session, instead of one per loaded program.

When XNNPACK loads a delegated method it repacks each linear's weights into its own layout, in private memory: 2.5 GiB
for the full 8da4w model, paid again by every session. ExecuTorch's XNNPACK backend can share the packed weights
between loads (its `weight_cache_enabled` backend option; it applies to methods loaded after it is set), but the
executorch 1.5.1 Python bindings expose no backend options. This sets it through ExecuTorch's C++
`executorch::runtime::set_option` with ctypes.

`BackendOption` below mirrors `executorch/runtime/backend/options.h`: a 64-byte key, then a
`std::variant<bool, int, std::array<char, 256>>` (256 bytes of storage, then the alternative's index byte).
tests/test_xnnpack_weights.py compiles that header to check the layout against this one.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

BACKEND = b"XnnpackBackend"
WEIGHT_CACHE_KEY = b"weight_cache_enabled"

KEY_LENGTH = 64  # kMaxOptionKeyLength
VALUE_LENGTH = 256  # kMaxOptionValueLength
BOOL_INDEX, INT_INDEX, STRING_INDEX = 0, 1, 2  # the variant's alternatives, in declaration order
ERROR_OK = 0

_SET_OPTION = "_ZN10executorch7runtime10set_optionEPKcNS0_4SpanINS0_13BackendOptionEEE"
_GET_OPTION = "_ZN10executorch7runtime10get_optionEPKcNS0_4SpanINS0_13BackendOptionEEE"
# get_option writes into the option it is given; if a future ExecuTorch grew the struct, its writes land here
# instead of in neighbouring memory, and the read-back check below fails cleanly.
_SLACK_BYTES = 4096


class OptionValue(ctypes.Union):
    _fields_ = [("boolean", ctypes.c_bool), ("integer", ctypes.c_int), ("string", ctypes.c_char * VALUE_LENGTH)]


class BackendOption(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char * KEY_LENGTH), ("value", OptionValue), ("index", ctypes.c_ubyte)]


class _OptionWithSlack(ctypes.Structure):
    _fields_ = [("option", BackendOption), ("slack", ctypes.c_ubyte * _SLACK_BYTES)]


class BackendOptionError(RuntimeError):
    """ExecuTorch's backend options could not be reached or did not take."""


def _library() -> ctypes.CDLL:
    """The libexecutorch that the pybindings already loaded (the backend registry lives in it)."""
    import executorch.runtime  # noqa: F401  (loads the pybindings and, with them, libexecutorch)
    import executorch

    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    for root in executorch.__path__:
        path = Path(root) / "lib" / f"libexecutorch{suffix}"
        if path.is_file():
            # RTLD_NOLOAD: the already-loaded copy, never a second one with its own empty registry.
            mode = getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL
            try:
                return ctypes.CDLL(str(path), mode=mode)
            except OSError as e:
                raise BackendOptionError(f"{path} is not loaded by the ExecuTorch runtime ({e})") from e
    raise BackendOptionError(f"no libexecutorch{suffix} under {list(executorch.__path__)}")


@functools.cache
def _functions():
    """ExecuTorch's (set_option, get_option), looked up once."""
    lib = _library()
    try:
        set_option, get_option = getattr(lib, _SET_OPTION), getattr(lib, _GET_OPTION)
    except AttributeError as e:
        raise BackendOptionError(f"this ExecuTorch build exports no backend-option functions ({e})") from e
    for function in (set_option, get_option):
        function.restype = ctypes.c_uint32  # executorch::runtime::Error
        function.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]  # name, Span{data, size}
    return set_option, get_option


def weight_sharing_enabled() -> bool:
    """XNNPACK's current `weight_cache_enabled` setting, read back from the backend."""
    _, get_option = _functions()
    query = _OptionWithSlack()
    query.option.key = WEIGHT_CACHE_KEY
    query.option.index = INT_INDEX  # overwritten with BOOL_INDEX by a backend that knows the key
    error = get_option(BACKEND, ctypes.byref(query), 1)
    if error != ERROR_OK:
        raise BackendOptionError(f"XNNPACK get_option failed with ExecuTorch error {error:#x}")
    if query.option.index != BOOL_INDEX:
        raise BackendOptionError("this XNNPACK backend does not report weight_cache_enabled as a bool (an "
                                 "ExecuTorch version whose backend options differ from 1.5.1's)")
    return bool(query.option.value.boolean)


def set_weight_sharing(enabled: bool) -> None:
    """Turns XNNPACK's shared packed-weight cache on or off for programs loaded from now on; checks it took."""
    set_option, _ = _functions()
    option = BackendOption(key=WEIGHT_CACHE_KEY, index=BOOL_INDEX)
    option.value.boolean = enabled
    error = set_option(BACKEND, ctypes.byref(option), 1)
    if error != ERROR_OK:
        raise BackendOptionError(f"XNNPACK set_option({WEIGHT_CACHE_KEY.decode()}) failed with ExecuTorch error "
                                 f"{error:#x}")
    if weight_sharing_enabled() != enabled:
        raise BackendOptionError(f"XNNPACK did not take {WEIGHT_CACHE_KEY.decode()}={enabled}")
