"""Where model weights come from: a hub id or local folder (passed through), a model shipped inside an installed
Python package (``package:NAME``), or a GGUF checkpoint de-quantised once into a cached Hugging Face folder; and
the checks that a local model folder's files are whole before a loader meets them (an empty, truncated or garbage
``config.json`` or ``model.safetensors`` is named in one sentence, not a traceback from deep inside a library)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

from distill.errors import DistillError

_GGUF_CACHE_FORMAT = 1
_DAMAGED = ("it was probably cut short by an interrupted copy, download or export, or overwritten; copy the model "
            "folder again from its source (or re-export it)")
# weight files a Hugging Face folder may hold, one of which from_pretrained needs
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """``path`` parsed as a JSON object, or a DistillError naming the file and what is wrong with it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DistillError(f"{what} {path} cannot be read: {error}") from None
    if not text.strip():
        raise DistillError(f"{what} {path} is empty; {_DAMAGED}")
    try:
        data = json.loads(text)
    except ValueError as error:
        raise DistillError(f"{what} {path} is not valid JSON ({error}); {_DAMAGED}") from None
    if not isinstance(data, dict):
        raise DistillError(f"{what} {path} holds a JSON {type(data).__name__}, not an object of settings; {_DAMAGED}")
    return data


def check_safetensors_file(path: Path) -> None:
    """Refuse a weights file that is missing, empty, truncated or not safetensors, naming it (the header is read,
    not the tensors: cheap for any size)."""
    if not path.is_file():
        raise DistillError(f"weights file {path} not found")
    size = path.stat().st_size
    if size == 0:
        raise DistillError(f"weights file {path} is empty (0 bytes); {_DAMAGED}")
    try:
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > size - 8:
                raise ValueError("its header is longer than the file")
            header = json.loads(handle.read(header_size))
        end = max((info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise DistillError(f"weights file {path} is not a readable safetensors file ({error}); {_DAMAGED}") from None
    if 8 + header_size + end > size:
        raise DistillError(f"weights file {path} is truncated: {size:,} bytes where its header promises "
                           f"{8 + header_size + end:,}; {_DAMAGED}")


def check_model_folder(folder: Path, kind: str) -> dict[str, Any]:
    """A local model folder's ``config.json``, checked, for ``kind`` (what the recipe says the folder is)."""
    if not folder.exists():
        raise DistillError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise DistillError(f"model folder {folder} is a file, not a folder: {kind} models are folders holding "
                           "config.json and model.safetensors")
    config_file = folder / "config.json"
    if not config_file.is_file():
        found = ", ".join(sorted(path.name for path in folder.iterdir())[:6]) or "nothing"
        raise DistillError(f"{folder} is not a model folder: it holds no config.json (it holds {found}). A {kind} "
                           "model folder holds config.json and model.safetensors, as `distill train` exports and "
                           "save_pretrained writes them")
    return read_json_object(config_file, "model config")


def check_hf_weights(folder: Path) -> None:
    """A local Hugging Face folder holds weights, and its model.safetensors (when that is the one) is whole."""
    if not any((folder / name).is_file() for name in HF_WEIGHT_FILES):
        raise DistillError(f"{folder} holds a config.json but no weights ({' or '.join(HF_WEIGHT_FILES[:2])} "
                           "missing); copy the whole model folder")
    if (folder / "model.safetensors").is_file():
        check_safetensors_file(folder / "model.safetensors")


def _is_local_path(name_or_path: str) -> bool:
    """A path, not a hub id: hub ids are NAME or OWNER/NAME, never absolute, relative to . or ~, or deeper."""
    return name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1


def resolve_hf_path(name_or_path: str) -> str:
    """``package:NAME`` is a model shipped inside an installed Python package (found without importing it); a
    local ``.gguf`` file, or a folder holding one and no config.json, is de-quantised once into a cached Hugging
    Face folder; anything else is a hub id or a local folder, passed through."""
    if not name_or_path.startswith("package:"):
        local = Path(name_or_path).expanduser()
        if not local.exists() and _is_local_path(name_or_path):
            raise DistillError(f"model {name_or_path!r}: no such folder (a path, not a hub id: hub ids are "
                               "OWNER/NAME). Train or copy the model there first, or give another path")
        if local.is_file() and local.suffix == ".gguf":
            return gguf_folder(local)
        if local.is_dir() and not (local / "config.json").is_file():
            checkpoints = sorted(local.glob("*.gguf"))
            if checkpoints:
                return gguf_folder(checkpoints[0])
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


