"""The Jetson benchmark suite's modules (``benchmarks/jetson/run.py`` is the entry point).

``benchmarks/`` is not a package: ``run.py`` and ``tests/test_jetson_suite.py`` put ``benchmarks/jetson`` on
``sys.path`` and import ``jetsonbench``. Modules:

* :mod:`.device`: the device record (Jetson model, L4T/JetPack, nvpmodel, jetson_clocks, CUDA/TensorRT/ORT, CPU),
  pure parsers plus a collector whose file reads and commands can be replaced (tests feed it sample texts).
* :mod:`.sampling`: resource sampling during a run (``tegrastats`` on a Jetson, ``/proc`` elsewhere) and the RSS
  high-water mark.
* :mod:`.traces`: budget traces: loading, validation, relative -> absolute budgets, the frame schedule.
* :mod:`.static`: per-engine latency, chain vs one whole-model engine, PyTorch eager, ``trtexec``.
* :mod:`.replay`: the dynamic scenario: frames under a changing budget.
* :mod:`.plots`: PNGs (matplotlib, Agg).
"""
