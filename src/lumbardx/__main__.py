"""``python -m lumbardx`` runs the command line."""

from lumbardx.cli import main

main()
