"""The jobs: `ask`, `summarize` (with its report, its workers on several devices, and on Ray), built on the engine
(docs/architecture.md)."""
