"""The middle floor of the nodes: what a node counts, remembers and follows about its frames and
its pipeline, and whom it tells (metrics and Prometheus, the pipeline's health and chain, Home
Assistant, systemd). Built on the MQTT floor; knows no daemon."""
