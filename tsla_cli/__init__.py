"""The `tsla` command line."""
