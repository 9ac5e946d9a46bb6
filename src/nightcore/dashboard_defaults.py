"""Defaults of the dashboard, importable without loading the dashboard package (the CLI parser
needs them to build its help; importing nightcore.dashboard loads the whole report stack)."""

VERIFY_MODES: tuple[str, ...] = ("auto", "full", "quick", "none")
MAX_ROWS = 500
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700
DEFAULT_TTL = "7d"
