"""What is written once and used everywhere: atomic writes and JSON, the registry, NAME=VALUE parsing,
progress bars, figures and report rendering.

This package sits below every other one (it imports only ``prunelab.errors``).
"""

from prunelab.utils.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, plain_json
from prunelab.utils.parsing import parse_assignment, parse_assignments
from prunelab.utils.progress import progress
from prunelab.utils.registry import Registry
from prunelab.utils.figures import new_figure, png_bytes
from prunelab.utils.render import Document, Figure, Paragraph, Section, Table, write_document

__all__ = [
    "Document", "Section", "Paragraph", "Table", "Figure", "write_document", "new_figure", "png_bytes",
    "Registry", "atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "plain_json",
    "parse_assignment", "parse_assignments", "progress",
]
