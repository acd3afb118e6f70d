"""Hugging Face interop: our text transformers <-> `config.json` + `model.safetensors`.

Torch-free: tensors go through safetensors' numpy API. `convert.import_hf` / `export_hf`
are the library entry points; `python -m pretrain.hf.convert` the command line.
"""
