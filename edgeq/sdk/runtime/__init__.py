"""Serving: ``Runtime`` over a version catalog, generation, tokenizer and the execution backends."""
