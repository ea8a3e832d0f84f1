"""Runnable demos built from registered components (no plugin is imported)."""
