"""Build script: the cffi extension comes from csrc/build_ffi.py; metadata is in pyproject.toml.

The extension uses only CPython's stable ABI (cffi builds it with ``Py_LIMITED_API``),
so the wheel is tagged ``cp310-abi3``: one wheel for every supported CPython.
"""

from setuptools import setup

setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
