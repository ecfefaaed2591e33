"""Infrastructure: memory measurement and reports, output files and locks, signals, and the checked torch /
transformers internals (docs/architecture.md)."""
