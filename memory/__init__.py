"""The example memory: few-shot references and class notes per category, in Chroma.

- `memory.examples`: `MemoryExample`, `ClassNote`, and rendering them into in-context messages.
- `memory.store`: `ExampleStore`, `ChromaStore` (embedded or a shared server), `open_store(config)`.
- `memory.embed`: the retrieval embedder (CLIP when its weights resolve, else EfficientNet-Lite0).
- `memory.importer`: MVTec-style tree import and JSON export/import.

Submodules are imported on use (chromadb and torch are heavy).
"""
