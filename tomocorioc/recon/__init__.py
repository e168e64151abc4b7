"""tomocorioc.recon."""
