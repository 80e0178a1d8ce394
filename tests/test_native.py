"""The compiled core loads, matches the package version and names its errors."""

import bsipatch
from bsipatch import _native


def test_native_version_matches_package():
    assert _native.ffi.string(_native.lib.bsi_version()).decode() == bsipatch.__version__


def test_error_names():
    assert _native.error_name(-3) == "BSI_E_CORRUPT"
    assert _native.error_name(-999) == "BSI_E_UNKNOWN"


def test_check_raises_native_error():
    import pytest

    from bsipatch.errors import NativeError

    assert _native.check(5, "x") == 5
    with pytest.raises(NativeError, match="BSI_E_RANGE") as info:
        _native.check(-4, "copy")
    assert info.value.code == -4
