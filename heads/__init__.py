"""heads: classifiers, losses, kNN and unknown detectors trained on stored embeddings."""

from heads._errors import HeadsError
from heads._registry import create_head, list_heads, register_head

__all__ = ["HeadsError", "create_head", "list_heads", "register_head"]
