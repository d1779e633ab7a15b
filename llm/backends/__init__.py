"""Generation backends. Each module is imported only when its backend is configured."""
