"""`python -m personafuse.cli` = the `personafuse` command."""

from personafuse.cli import main

main()
