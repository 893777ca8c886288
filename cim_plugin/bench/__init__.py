"""Benchmarks of CIM against its baseline: run planning and execution, report tables, object-size
analysis, figures, metrics."""
