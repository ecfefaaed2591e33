"""Model families: the frame-model interface, the registry, one folder per family (docs/families.md)."""
