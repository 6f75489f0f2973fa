"""Sub-commands of the `coralbay` command line, one module each (see `coralbay.cli`)."""
