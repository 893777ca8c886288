"""CIM itself, framework-free: nothing here imports PyCIL (tests/test_boundary.py checks it)."""
