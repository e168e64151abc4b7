"""tomocorioc.core."""
