"""What the tests (tests/) and the benchmarks (bench/) both use: where the repository and the
shared data are, the small test models and photos, camera servers, a broker's secure setup, and
the harness that starts, watches and stops stage daemons.

Not installed with aiotedge (like tests/ and bench/); imports aiotedge and aiotedge_converter,
never tests/ or bench/, and not pytest: a benchmark runs without it.
"""
