"""Automatic start: watch tomoScan (Channel Access) or folders, queue complete scans."""
