"""The reliability suite: real stage daemons against a real mosquitto, under faults.

Every scenario starts its own broker and daemons on loopback, injects its faults, measures
what came out (frames sent, lost, duplicated, daemons that died, memory) and stops everything
it started, even when it fails. `python -m bench.reliability` runs them all and writes
docs/reliability.md; bench/tests/test_reliability.py runs the `--fast` variants and asserts.
"""
