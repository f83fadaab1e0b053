"""Data: the procedural world, dataset adapters and loaders."""
