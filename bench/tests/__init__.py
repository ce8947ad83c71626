"""The benchmarks' own tests: the emulated boards, the cluster bench's bookkeeping, and the
reliability suite's fast scenarios. Here, not in tests/, so that tests/ never imports bench/;
`python -m pytest` runs them with the rest (setup.cfg's testpaths)."""
