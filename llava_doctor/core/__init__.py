"""The bundled LLaVA training/model core: tiny, real, CPU-friendly (see DESIGN.md §2)."""
