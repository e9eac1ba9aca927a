"""The typed recipe: every knob, its default and what it does, validated before anything heavy starts.

A recipe is YAML (parsed with ``yaml.safe_load``: no tags, no code) or a dict, checked by pydantic with unknown
keys refused. Errors are turned into one paragraph that names the field and, for a misspelt key, the closest
valid one.


The package, section by section: ``specs`` (model specs by ``kind``), ``sections`` (data, training, teacher,
student, objective, evaluation, compress, output), ``modes`` (one section per regime), ``recipe`` (the whole
recipe and its cross-section checks) and ``loading`` (YAML, overrides, built-in recipes, error messages).
"""

from distill.config.base import StrictSection
from distill.config.generation import (
    DecodingConfig,
    EndpointConfig,
    FilePromptsConfig,
    FilterSpec,
    GenerationConfig,
    LengthFilter,
    SelfInstructConfig,
    TaskPromptsConfig,
)
from distill.config.loading import (
                                    RECIPES_DIR,
                                    builtin_recipe_names,
                                    describe_builtin_recipes,
                                    format_validation_error,
                                    load_recipe,
                                    parse_overrides,
                                    read_yaml,
                                    resolve_recipe_path,
)
from distill.config.modes import (
                                    AssistantChainMode,
                                    BornAgainMode,
                                    CounterfactualMode,
                                    DataFreeMode,
                                    ModeSpec,
                                    MultiTeacherMode,
                                    MutualMode,
                                    NamedTeacher,
                                    SelfDistillationMode,
                                    TransferSetMode,
                                    UnlabelledData,
)
from distill.config.recipe import Recipe
from distill.config.sections import (
                                    AugmentConfig,
                                    CompressConfig,
                                    DataConfig,
                                    EvaluationConfig,
                                    FromTeacherSpec,
                                    LMDataConfig,
                                    ObjectiveConfig,
                                    OutputConfig,
                                    StudentConfig,
                                    TaskSuiteEvaluation,
                                    TeacherConfig,
                                    TermConfig,
                                    TrainingConfig,
)
from distill.config.specs import (
                                    CNNSpec,
                                    HFConfigSpec,
                                    HFSpec,
                                    MLPSpec,
                                    ModelSpec,
                                    SavedSpec,
)

__all__ = ["DecodingConfig", "EndpointConfig", "FilePromptsConfig", "FilterSpec", "GenerationConfig", "LengthFilter",
    "SelfInstructConfig", "TaskPromptsConfig", "TaskSuiteEvaluation",
    "AssistantChainMode", "AugmentConfig", "BornAgainMode", "CNNSpec", "CompressConfig", "CounterfactualMode",
    "DataConfig", "DataFreeMode", "EvaluationConfig", "FromTeacherSpec", "HFConfigSpec", "HFSpec",
    "LMDataConfig", "MLPSpec", "ModeSpec", "ModelSpec", "MultiTeacherMode", "MutualMode", "NamedTeacher",
    "ObjectiveConfig", "OutputConfig", "RECIPES_DIR", "Recipe", "SavedSpec", "SelfDistillationMode",
    "StrictSection", "StudentConfig", "TeacherConfig", "TermConfig", "TrainingConfig", "TransferSetMode",
    "UnlabelledData", "builtin_recipe_names", "describe_builtin_recipes", "format_validation_error",
    "load_recipe", "parse_overrides", "read_yaml", "resolve_recipe_path",
]
