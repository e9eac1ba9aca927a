"""Where model weights come from: a hub id or local folder (passed through), a model shipped inside an installed
Python package (``package:NAME``), or a GGUF checkpoint de-quantised once into a cached Hugging Face folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from distill.errors import DistillError

_GGUF_CACHE_FORMAT = 1


def resolve_hf_path(name_or_path: str) -> str:
    """``package:NAME`` is a model shipped inside an installed Python package (found without importing it);
    anything else is a hub id or a local folder, passed through."""
    if not name_or_path.startswith("package:"):
        return name_or_path
    import importlib.util

    package = name_or_path.removeprefix("package:")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(f"model {name_or_path!r}: the Python package {package!r} is not installed "
                           f"(pip install {package.replace('_', '-')})")
    for root in spec.submodule_search_locations:
        configs = sorted(Path(root).rglob("config.json"), key=lambda path: len(path.parts))
        if configs:
            return str(configs[0].parent)
    for root in spec.submodule_search_locations:
        checkpoints = sorted(Path(root).rglob("*.gguf"))
        if checkpoints:  # de-quantised once into a cached Hugging Face folder
            return gguf_folder(checkpoints[0])
    raise DistillError(f"model {name_or_path!r}: no config.json or .gguf file inside the package {package!r}")


def gguf_folder(gguf_file: Path, cache_dir: str | Path | None = None) -> str:
    """A Hugging Face folder (fp32 safetensors + tokenizer) made once from a GGUF checkpoint, cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.data.builtin import resolve_cache_dir

    folder = (resolve_cache_dir(cache_dir)
              / f"gguf-{gguf_file.stem}-{gguf_file.stat().st_size}-v{_GGUF_CACHE_FORMAT}")
    if (folder / "model.safetensors").is_file():
        return str(folder)
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise DistillError(f"{gguf_file.name} is a GGUF checkpoint; reading it needs the package gguf "
                           "(pip install gguf)") from None
    import transformers

    transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                     dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained: rebuild a plain one from its config and copy the weights.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + "."))
    try:
        plain.save_pretrained(str(temporary), safe_serialization=True)
        tokenizer.save_pretrained(str(temporary))
        (temporary / "distill_source.json").write_text(json.dumps({
            "gguf_file": str(gguf_file), "note": "weights de-quantised from the GGUF file to float32; not the "
                                                 "original checkpoint"}, indent=2))
        try:
            os.replace(temporary, folder)
        except OSError:
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(temporary)
    return str(folder)


