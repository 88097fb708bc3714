"""Importers: turn public or exported contact histories into the contract's events (pure: files in, JSON out)."""
