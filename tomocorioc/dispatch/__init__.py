"""Dispatcher and supervised worker processes (one per GPU slot)."""
