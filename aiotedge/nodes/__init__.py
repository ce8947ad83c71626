"""The daemons and what they run on: the MQTT session, the stage, the camera, the watcher,
status, metrics, systemd and Home Assistant. Each daemon's life is one `run_*` function."""
