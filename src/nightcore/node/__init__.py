"""The resident node agent (``nightcore node``): one long-running process per workspace that
keeps engines, compiled modules and keys warm, runs tenants in a pool of worker processes, and
serves the application facade on a Unix socket (docs/node.md)."""
