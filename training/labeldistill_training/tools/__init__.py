"""Command-line tools (console scripts) of the training side."""
