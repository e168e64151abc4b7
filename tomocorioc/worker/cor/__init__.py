"""tomocorioc.worker.cor."""
