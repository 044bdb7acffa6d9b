"""``python -m realtime`` is the ``realtime`` command."""

from realtime.cli import main

main()
