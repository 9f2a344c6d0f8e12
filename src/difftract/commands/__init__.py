"""Command-line sub-commands, one module per command group, each a thin layer over the library."""
