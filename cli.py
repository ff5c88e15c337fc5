"""`python cli.py ...` from a checkout: the same Typer app as the `vgray` command."""

from vgray.cli import main

if __name__ == "__main__":
    main()
