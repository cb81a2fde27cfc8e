"""Argument parsing and wiring for the command-line entry points."""
