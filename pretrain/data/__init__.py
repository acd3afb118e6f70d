"""Data: built-in corpora, tokenizers, packing, example sources and the grain pipeline.

Modules: corpora (real offline text/images), idx (IDX files), tokenizer (trained, cached),
packing (concatenate-then-split), sources (random-access examples, user files, tfds),
pipeline (config -> source, source -> resumable per-process batches).
"""
