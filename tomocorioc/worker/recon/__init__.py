"""tomocorioc.worker.recon."""
