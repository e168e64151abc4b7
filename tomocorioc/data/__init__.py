"""tomocorioc.data."""
