"""`python -m vidmini` = the `vidmini` command."""

from vidmini.cli import entry

entry()
