"""Allow `python -m resnext_cli`."""

from resnext_cli.cli.main import main

main()
