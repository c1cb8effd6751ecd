"""Base models: finding and checking them, and the tiny ones built on the spot for tests and the demo."""
