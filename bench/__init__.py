"""The benchmark harness of realtime: ``python -m bench SCENARIO [options]``.

Not part of the ``realtime`` package (not in the wheel); run it from a source
checkout, where this directory sits beside ``realtime/``:

- :mod:`bench.harness`: options, processes, the database and server stack, the
  load client driver, CPU windows, writers;
- :mod:`bench.scenarios`: one module per scenario and the registry;
- :mod:`bench.report`: the report every scenario writes (JSON, Markdown, PNG)
  and the summary;
- :mod:`bench.runner`: running one scenario, ``all``, or re-rendering;
- ``loadclient.py``, ``broadcast_server.py``, ``naive_server.py``: run as
  subprocesses by the harness.

``bench/README.md`` explains every figure; docs/performance.md has the targets.
"""
