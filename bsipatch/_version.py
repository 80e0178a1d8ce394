"""The package version (read by setup via csrc/build_ffi.py and by the native version check)."""

__version__ = "0.1.0"
