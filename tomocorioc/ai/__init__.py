"""tomocorioc.ai."""
