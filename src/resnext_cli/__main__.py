"""Allow `python -m resnext_cli`."""

from resnext_cli.cli import main

main()
