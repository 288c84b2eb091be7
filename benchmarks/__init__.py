"""Benchmarks of jupyter-functionai (run as scripts or through ``functionai bench``)."""
