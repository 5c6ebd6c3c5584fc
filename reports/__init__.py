"""The reporter: reads a results store and writes figures, tables and one PDF.
It imports the store, never a plug-in."""
from .pdf import write_report  # noqa: F401
