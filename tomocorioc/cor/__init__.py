"""tomocorioc.cor."""
