"""The command-line door: the `newsletter` command, one module a command group."""
