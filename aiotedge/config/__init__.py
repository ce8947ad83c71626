"""A node's configuration: its TOML sections are the options the nodes take, with one set of
defaults and every value checked in one place."""
