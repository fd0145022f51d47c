"""Allow `python -m newsletter`."""

from newsletter.cli.main import main

main()
