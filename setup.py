"""Build script: the cffi extension comes from csrc/build_ffi.py; metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"])
