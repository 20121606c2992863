"""Feast definitions: entities, push sources, feature views and versioned feature services per design."""
