"""The top floor of the nodes: the daemons and one-shot commands the CLI runs (stage, camera,
watcher, status, retire, profile, a local pipeline), each given its session and collaborators."""
