"""Conversion scripts: thin command-line tools, importable by the tests."""
