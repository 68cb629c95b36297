"""Integration tests: against the real local control plane (a package, so this directory's
conftest.py does not shadow tests/conftest.py as the module ``conftest``)."""
