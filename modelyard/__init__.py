"""The ``modelyard`` command line: wiring only, one module per command group.

Each command parses its options, calls one function of the package that owns the work
(``pipelines``, ``registry``, ``services``, ``monitoring``), prints the result, and turns
domain errors (``core.errors``) into messages and exit codes. This package is the top of
the dependency graph: nothing imports it.
"""
