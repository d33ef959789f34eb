"""Developer tools, importable as ``tools.<module>`` from the repository root (``run_tests.py``,
``serve.py``, ``tests/`` and ``bench/`` do so); not part of the installed packages.

* :mod:`.bootstrap`: the idempotent set-up (venv, npm, Pyodide wheels, Debian packages, LiveKit).
* :mod:`.devstack`: a LiveKit server on loopback, and tokens for it.
* :mod:`.httpserve`, :mod:`.webapp`: the demo's HTTP server, its static files and token endpoint.
* :mod:`.realstack`: the worker subprocess, harness pages and Chromium, for tests and benchmarks.
* :mod:`.netimpair`: the user-space network impairment relay (stdlib only; also run as a script
  inside a network namespace).
* ``pyodide_run.mjs``: runs Python tests inside Pyodide under Node.
"""
