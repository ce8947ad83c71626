"""The daemons and what they stand on, in three floors that only point down:
`mqtt` (the broker connection), `observe` (what a node counts, follows and reports) and
`daemons` (stage, camera, watcher, status, ...; each daemon's life is one `run_*` function)."""
