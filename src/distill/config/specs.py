"""Model specs: what a teacher, a student or a regime's extra model is built from (chosen by ``kind``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field

from distill.config.base import StrictSection

# The transformers Auto class each HF task is loaded or built with.
HF_AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "base": "AutoModel",
}


class MLPSpec(StrictSection):
    """A multilayer perceptron on flattened inputs."""
    kind: Literal["mlp"] = Field("mlp", description="Selects this spec.")
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [256], description="Hidden layer widths, input side first (each followed by a "
        "ReLU); [] is a linear classifier. Widen or deepen for a stronger teacher, narrow for a smaller student.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability after each hidden layer (0: none).")
    input_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability on the flattened input (0: "
                                 "none; Hinton 2012 used 0.2 for large MNIST nets).")


class CNNSpec(StrictSection):
    """A small convolutional net: conv-BN-ReLU-pool blocks, global average pooling, a linear head.
    1-D convolutions for inputs shaped (C, L), 2-D for (C, H, W)."""
    kind: Literal["cnn"] = Field("cnn", description="Selects this spec.")
    channels: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [32, 64], description="Output channels of each conv block, input side first; "
        "every block but the last halves the spatial size (while it is at least 4).")
    kernel_size: int = Field(3, gt=0, description="Convolution kernel size, padded by kernel_size // 2 (odd sizes "
                             "keep the spatial size).")
    batch_norm: bool = Field(True, description="Batch norm after each convolution; a data_free deep_inversion "
                             "teacher needs it.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability before the linear head (0: none).")


class HFSpec(StrictSection):
    """Any Hugging Face model, by hub id or local folder."""
    kind: Literal["hf"] = Field("hf", description="Selects this spec.")
    name_or_path: str = Field(description="Hub id, local folder with config.json, or package:NAME for a model "
                              "shipped inside an installed Python package.")
    task: Literal["sequence-classification", "causal-lm", "masked-lm", "base"] = Field(
        "sequence-classification", description="Which head is loaded (the AutoModelFor... class); "
        "sequence-classification gets as many labels as the data has classes; base is the bare model (AutoModel), "
        "e.g. for embeddings.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint (off unless you "
                                    "trust it).")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="The dtype the weights are loaded in; auto keeps the checkpoint's own. A half dtype "
        "halves the memory of a large frozen teacher.")
    revision: str | None = Field(None, description="Hub branch, tag or commit to load (null: the default branch).")


class SavedSpec(StrictSection):
    """A model exported by an earlier run (``RUN/student``, ``RUN/teacher``) or any folder holding a distill
    ``config.json`` and ``model.safetensors``."""
    kind: Literal["saved"] = Field("saved", description="Selects this spec.")
    path: str = Field(description="Folder of the exported model, e.g. runs/NAME/student; built-in nets, Hugging "
                      "Face models and int8 variants are rebuilt from the config.json it holds.")


class HFConfigSpec(StrictSection):
    """A fresh, randomly initialised Hugging Face model built from a config: tiny models for tests and CI, or a
    small student of your own shape (a causal LM, or an encoder classifier such as a 2-layer BERT). ``config``
    holds fields of the architecture's config class (``hidden_size``, ``num_hidden_layers``, ...); ``vocab_size``
    defaults to the tokenizer's, and a classifier gets as many labels as the data has classes."""
    kind: Literal["hf-config"] = Field("hf-config", description="Selects this spec.")
    architecture: str = Field("llama", description="The config's model_type: llama, qwen2, mistral, gpt2 for "
                              "causal LMs; bert, distilbert, roberta, ... for encoders.")
    task: Literal["causal-lm", "sequence-classification", "masked-lm", "base"] = Field(
        "causal-lm", description="Which head is built (the AutoModelFor... class, as for kind hf): causal-lm, "
        "sequence-classification (labels from the data), masked-lm or base.")
    config: dict[str, Any] = Field(default_factory=dict, description="Fields of the architecture's config class, "
                                   "e.g. {hidden_size: 64, num_hidden_layers: 2}; vocab_size defaults to the "
                                   "tokenizer's.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="The dtype of the new model's "
                                                             "weights.")


ModelSpec = Annotated[Union[MLPSpec, CNNSpec, HFSpec, SavedSpec, HFConfigSpec], Field(discriminator="kind")]
