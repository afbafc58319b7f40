"""Data: sources, image opening, transforms and seeded loaders."""
