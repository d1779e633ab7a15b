"""Follow-up questions: retrieval of questions whose subject was named in an earlier turn (issue 20).

    .venv/bin/python bench/bench_followups.py [--data ../shared/eval/piaf-dev] [--limit 300] [--seed 20]
        [--collection-slug SLUG] [--keep] [--embed-cache DIR] [--show 10] [--json FILE]

A two-turn set is built at run time from PIAF's questions (read from ``../shared/eval``, never stored; see
"Follow-up questions" in bench/README.md for the exact construction): turn 1 is another question about the
same article, or the article's title as a question; turn 2 is a question with the words of the article's
title taken out ("Combien de chambres possède le parlement de Nouvelle-Zélande ?" becomes "Combien de
chambres possède le parlement ?"). The corpus is ingested into a throw-away collection through the product
(``documents_ingest_texts``, as ``manage.py evaluate`` does), or a collection kept by
``manage.py evaluate --data ../shared/eval/piaf-dev --keep --collection-slug SLUG`` is read with
``--collection-slug SLUG``. Each question is searched through the product's searcher restricted to the
collection, documents ranked by their best chunk, and Recall@10 is printed for the original questions, the
follow-ups alone, the follow-ups through ``ingestion.followup.contextual_query`` given turn 1, and two
checks: the follow-ups with the whole previous question pasted in front, and the original questions
through ``contextual_query`` (a question that names its subject should lose nothing). The last line is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import random
import re
import secrets
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ingestion.followup import contextual_query  # noqa: E402
from ingestion.language import TextAnalyzer  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "eval" / "piaf-dev"
K = 10
#: documents ranked per question, as manage.py evaluate ranks them (so the figures are comparable)
RANKED_DOCUMENTS = 100
CHUNKS_PER_DOCUMENT_MARGIN = 1.5
GOAL = 0.90


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_WORD = re.compile(r"\w+")
_TAG = re.compile(r"<[^>]+>")
_PARENTHESIS = re.compile(r"\s*\([^)]*\)\s*$")
#: words that may sit inside a multi-word subject ("Guerre d'indépendance des États-Unis")
_JOINERS = _set("de d des du la le les l et à au aux en")
#: what may come before a subject, read backwards from it: an article, then a preposition
_ARTICLES = _set("le la les l un une")
_GENITIVE = _set("de d du des")
_PLACE = _set("à au aux en dans")
_PREPOSITIONS = _set("chez par pour sur avec sous entre vers contre selon depuis parmi")
#: the stressed pronoun after a preposition, by the article of the subject
_STRESSED = {"la": "elle", "les": "eux"}
#: after these a subject starts ("Quand l'Irak ...", "est-ce que la tour ...")
_SUBJECT_BEFORE = _set("quand comment pourquoi où combien que qu quel quelle quels quelles qui ce lequel laquelle")
_INTERROGATIVES = "quel quelle quels quelles quand comment pourquoi combien quoi lequel laquelle lesquels lesquelles"
_CLITIC = re.compile(r"-(?:t-)?(?:il|elle|ils|elles|on)\b", re.IGNORECASE)


# ---- the two-turn set ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One follow-up: the question in full, its subject-less form, and the turn before it."""

    query_id: str
    relevant: str  # the corpus id of the paragraph that answers it
    full: str
    followup: str
    previous_question: str
    previous_answer: str


def _jsonl(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def plain_title(title: str) -> str:
    """An article title without HTML markup or a trailing disambiguation ("John McLaughlin (musicien)")."""
    text = html.unescape(_TAG.sub("", title))
    return " ".join(_PARENTHESIS.sub("", text).split())


class SubjectRemover:
    """Takes the words of an article's title out of a French question, as a person asking a follow-up would."""

    def __init__(self) -> None:
        self.analyzer = TextAnalyzer(("fr", "en"))
        self.interrogatives = frozenset(self.analyzer.tokens(_INTERROGATIVES.split(), "fr"))

    def stem(self, word: str) -> str | None:
        tokens = self.analyzer.tokens([word.casefold()], "fr")
        return tokens[0] if tokens else None

    def subject_stems(self, title: str) -> set[str]:
        return {s for s in (self.stem(w) for w in _WORD.findall(title)) if s}

    def names(self, question: str, subject: set[str]) -> bool:
        """Whether ``question`` names the subject (see :meth:`remove`)."""
        return self.remove(question, subject) is not None

    def remove(self, question: str, subject: set[str]) -> str | None:
        """``question`` with its mentions of ``subject`` replaced by a pronoun or dropped; None when it has none.

        A mention is a run of question words whose stems are the title's, joined by small words ("de",
        "des", "l'") and hyphens ("Berlin-Ouest"); it counts when it holds every content word of the title
        or a word written with a capital in the question, other than its first word (so a lowercase
        "guerre" is not taken for the article "Guerre de Cent Ans"). With the article and preposition in
        front of it, a mention after "de / du / des / d'" is dropped ("le parlement de Nouvelle-Zélande" →
        "le parlement"); after "à / au / aux / en / dans" it becomes "là-bas"; after another preposition,
        that preposition and "lui" / "elle" / "eux"; at the start of the question or after an interrogative
        or "que" it is the subject and becomes "il", "elle" or "ils" after its article, unless the verb
        carries its own pronoun ("Quand Jakob Böhme tombe-t-il malade ?" → "Quand tombe-t-il malade ?");
        anywhere else (an object, an inverted subject) it is dropped. The result must keep a content word.
        """
        words = list(_WORD.finditer(question))
        stems = [self.stem(w.group()) for w in words]
        hits = [s is not None and s in subject for s in stems]

        def hyphenated(n: int) -> bool:  # words n and n + 1 make one name ("Berlin-Ouest"), not "a-t-il"
            return question[words[n].end() : words[n + 1].start()] == "-" and not _CLITIC.match(
                question, words[n].end()
            )

        runs: list[tuple[int, int]] = []  # word index ranges [first, last]
        i = 0
        while i < len(words):
            if not hits[i]:
                i += 1
                continue
            first = i
            while first > 0 and hyphenated(first - 1):
                first -= 1
            last = j = i
            while j + 1 < len(words) and (hits[j + 1] or hyphenated(j) or words[j + 1].group().casefold() in _JOINERS):
                j += 1
                if hits[j] or hyphenated(j - 1):
                    last = j
            runs.append((first, last))
            i = last + 1
        edits: list[tuple[int, int, str]] = []  # character spans and their replacements
        for first, last in runs:
            covered = {stems[n] for n in range(first, last + 1) if hits[n]}
            capital = any(words[n].group()[:1].isupper() for n in range(first, last + 1) if hits[n] and n > 0)
            if covered != subject and not capital:
                continue  # a common word of the title, or a capital only because it starts the question
            start = first
            article = ""
            if start > 0 and words[start - 1].group().casefold() in _ARTICLES:
                start -= 1
                article = words[start].group().casefold()
            before = words[start - 1].group().casefold() if start > 0 else ""
            end = words[last].end()
            if before in _GENITIVE or before in _PLACE or before in _PREPOSITIONS:
                start -= 1
            begin = words[start].start()
            if before in _GENITIVE:
                replacement = ""
            elif before in _PLACE:
                replacement = "là-bas"
            elif before in _PREPOSITIONS:
                replacement = f"{words[start].group()} {_STRESSED.get(article, 'lui')}"
            elif (start == 0 or before in _SUBJECT_BEFORE) and not _CLITIC.search(question, end):
                replacement = {"la": "elle", "les": "ils"}.get(article, "il")  # the subject, as a pronoun
            else:
                replacement = ""  # an inverted or repeated subject, an object: left implicit
            edits.append((begin, end, replacement))
        if not edits:
            return None
        out = question
        for begin, end, replacement in reversed(edits):
            out = f"{out[:begin].rstrip()} {replacement} {out[end:].lstrip()}"
        out = re.sub(r"\s+([?.!,])", r"\1", " ".join(out.split())).strip()
        out = re.sub(r"^(?:il|elle|ils)\b", lambda m: m.group().capitalize(), out)
        if out[:1].islower() and question[:1].isupper():
            out = out[0].upper() + out[1:]
        content = [w for w in self.analyzer.tokens(self.analyzer.words(out), "fr") if w not in self.interrogatives]
        return out if content and out != question else None


def build_pairs(data: Path, limit: int, seed: int) -> tuple[list[Pair], dict[str, int]]:
    """The two-turn set of ``data`` (a PIAF folder): at most ``limit`` pairs, in an order drawn from ``seed``."""
    corpus = {str(r["_id"]): r for r in _jsonl(data / "corpus.jsonl")}
    queries = {str(r["_id"]): str(r["text"]) for r in _jsonl(data / "queries.jsonl")}
    answers = {str(r["_id"]): [str(a) for a in r.get("answers") or []] for r in _jsonl(data / "answers.jsonl")}  # type: ignore[attr-defined]
    relevant: dict[str, str] = {}
    with (data / "qrels.tsv").open(encoding="utf-8") as file:
        next(file)
        for line in file:
            qid, cid, score = line.rstrip("\n").split("\t")[:3]
            if float(score) > 0:
                relevant[qid] = cid
    article_of = {cid: cid.rsplit("-", 1)[0] for cid in corpus}  # piaf-012-03 -> piaf-012
    questions_of: dict[str, list[str]] = defaultdict(list)
    for qid in queries:
        if qid in relevant:
            questions_of[article_of[relevant[qid]]].append(qid)
    first_paragraph: dict[str, str] = {}
    for cid in sorted(corpus):
        first_paragraph.setdefault(article_of[cid], str(corpus[cid]["text"]))

    remover = SubjectRemover()
    rng = random.Random(seed)
    order = sorted(relevant)
    rng.shuffle(order)
    counts = {"questions": len(order), "naming": 0, "previous_named": 0, "previous_title": 0}
    pairs: list[Pair] = []
    for qid in order:
        cid = relevant[qid]
        article = article_of[cid]
        title = plain_title(str(corpus[cid]["title"]))
        subject = remover.subject_stems(title)
        followup = remover.remove(queries[qid], subject) if subject else None
        if followup is None:
            continue
        counts["naming"] += 1
        if len(pairs) >= limit:
            continue
        others = [o for o in questions_of[article] if o != qid and remover.names(queries[o], subject)]
        if others:
            other = rng.choice(sorted(others))
            previous, answer = queries[other], (answers.get(other) or [""])[0]
            counts["previous_named"] += 1
        else:
            previous = f"Qu'est-ce que {title} ?"
            answer = re.split(r"(?<=[.!?])\s", first_paragraph[article], maxsplit=1)[0]
            counts["previous_title"] += 1
        pairs.append(Pair(qid, cid, queries[qid], followup, previous, answer))
    return pairs, counts


# ---- retrieval through the product ------------------------------------------------------------------


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()


def ingest(data: Path, collection: object, embed_cache: str, say: Callable[[str], None]) -> dict[int, list[str]]:
    """Ingest the corpus into ``collection`` as ``manage.py evaluate`` does; the corpus ids of each document."""
    from knowledge.services.bulk import TextDocument, documents_ingest_texts

    corpus = [
        (str(r["_id"]), str(r.get("title") or ""), str(r.get("text") or "")) for r in _jsonl(data / "corpus.jsonl")
    ]
    say(f"Ingesting {len(corpus)} documents (embedding cache: {embed_cache or 'off'})")
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] % 100 < n:
            say(f"  {done[0]}/{len(corpus)}")

    outcomes = documents_ingest_texts(
        items=[TextDocument(title=title, text=text, name=f"{cid}.md") for cid, title, text in corpus],
        collection=collection,  # type: ignore[arg-type]
        embed_cache_dir=embed_cache,
        progress=progress,
    )
    corpus_ids: dict[int, list[str]] = {}
    for (cid, _, _), outcome in zip(corpus, outcomes, strict=True):
        if outcome.document_id is not None:
            corpus_ids.setdefault(outcome.document_id, []).append(cid)
    return corpus_ids


def ranked_documents(text: str, collection_id: int, chunks: int, corpus_ids: dict[int, list[str]]) -> list[str]:
    """Corpus ids ranked by their best chunk, as ``manage.py evaluate`` ranks them."""
    from knowledge.services import engines

    ranked: list[str] = []
    seen: set[int] = set()
    for hit in engines.get_searcher().search(text, k=chunks, collections={collection_id}):
        if hit.document_id not in seen:
            seen.add(hit.document_id)
            ranked.extend(corpus_ids.get(hit.document_id, ()))
    return ranked


def scores(texts: Sequence[str], pairs: Sequence[Pair], search: Callable[[str], list[str]]) -> tuple[float, float]:
    """Recall@K and MRR@K of ``texts`` (one per pair; each pair has one relevant paragraph)."""
    found = reciprocal = 0.0
    for text, pair in zip(texts, pairs, strict=True):
        ranked = search(text)[:K]
        if pair.relevant in ranked:
            found += 1
            reciprocal += 1 / (ranked.index(pair.relevant) + 1)
    return found / len(pairs), reciprocal / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="a PIAF folder (default ../shared/eval/piaf-dev)"
    )
    parser.add_argument("--limit", type=int, default=300, help="pairs to measure (default 300)")
    parser.add_argument("--seed", type=int, default=20, help="draws the order of the questions and turn 1 (default 20)")
    parser.add_argument("--collection-slug", default="", help="read this kept collection instead of ingesting")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away collection (its slug is printed)")
    parser.add_argument("--embed-cache", default=None, help="embedding cache folder (default VAR_DIR/embed-cache)")
    parser.add_argument("--show", type=int, default=5, help="print this many pairs with their search texts")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    pairs, counts = build_pairs(args.data, args.limit, args.seed)
    if not pairs:
        raise SystemExit(f"No follow-up could be made from {args.data}")
    say(
        f"{len(pairs)} pairs from {counts['questions']} questions ({counts['naming']} name their article's subject); "
        f"turn 1: {counts['previous_named']} another question naming it, {counts['previous_title']} the title"
    )
    history = [[(pair.previous_question, pair.previous_answer)] for pair in pairs]
    contextual_query(pairs[0].followup, history[0])  # loads the stop-word lists: not a figure
    timings: list[float] = []
    contextual: list[str] = []
    for pair, turns in zip(pairs, history, strict=True):
        started = time.perf_counter()
        contextual.append(contextual_query(pair.followup, turns))
        timings.append(time.perf_counter() - started)
    full_contextual = [contextual_query(pair.full, turns) for pair, turns in zip(pairs, history, strict=True)]
    variants: dict[str, list[str]] = {
        "full": [pair.full for pair in pairs],
        "followup": [pair.followup for pair in pairs],
        "followup_contextual": contextual,
        "followup_after_previous": [f"{pair.previous_question} {pair.followup}" for pair in pairs],
        "full_contextual": full_contextual,
    }
    for pair, text in list(zip(pairs, contextual, strict=True))[: args.show]:
        say(f"  full: {pair.full}\n  turn 1: {pair.previous_question}  ->  {pair.previous_answer[:80]}")
        say(f"  turn 2: {pair.followup}\n  search: {text}\n")

    setup_django()
    from django.conf import settings

    from knowledge.models import Collection, Document
    from knowledge.services.bulk import documents_delete_many

    embed_cache = args.embed_cache
    if embed_cache is None:
        embed_cache = settings.RAG_EMBED_CACHE_DIR or str(Path(settings.VAR_DIR) / "embed-cache")
    reuse = bool(args.collection_slug)
    slug = args.collection_slug or f"followups-{secrets.token_hex(4)}"
    if reuse:
        collection = Collection.objects.filter(slug=slug).first()
        if collection is None:
            raise SystemExit(f"There is no collection {slug}: keep one with manage.py evaluate --keep first")
    else:
        collection = Collection.objects.create(slug=slug, name=f"Follow-up benchmark ({slug})", is_public=False)
    started = time.perf_counter()
    try:
        if reuse:
            rows = Document.objects.filter(collection=collection).values_list("pk", "original_name")
            corpus_ids = {pk: [name.removesuffix(".md")] for pk, name in rows}
            say(f"Reading the {len(corpus_ids)} documents of the collection {slug}")
        else:
            corpus_ids = ingest(args.data, collection, embed_cache, say)
            say(f"Ingested in {time.perf_counter() - started:.0f} s")
        ready = Document.objects.filter(collection=collection, status=Document.Status.READY)
        per_document = max(1.0, sum(ready.values_list("chunk_count", flat=True)) / max(1, ready.count()))
        chunks = math.ceil(RANKED_DOCUMENTS * per_document * CHUNKS_PER_DOCUMENT_MARGIN)

        def search(text: str) -> list[str]:
            return ranked_documents(text, collection.pk, chunks, corpus_ids)

        search(pairs[0].full)  # the first search builds the lexical side: not a figure
        results: dict[str, float] = {}
        mrr: dict[str, float] = {}
        for name, texts in variants.items():
            searched = time.perf_counter()
            found, reciprocal = scores(texts, pairs, search)
            results[name], mrr[name] = round(found, 4), round(reciprocal, 4)
            say(f"{name}: Recall@{K} {found:.3f}, MRR@{K} {reciprocal:.3f} ({time.perf_counter() - searched:.0f} s)")
    finally:
        if args.keep or reuse:
            say(f"Kept the collection {slug}")
        else:
            documents_delete_many(documents=Document.objects.filter(collection=collection))
            collection.delete()

    expanded = sum(text != pair.followup for text, pair in zip(contextual, pairs, strict=True)) / len(pairs)
    unchanged = sum(text == pair.full for text, pair in zip(full_contextual, pairs, strict=True)) / len(pairs)
    ratio = results["followup_contextual"] / results["full"] if results["full"] else 0.0
    summary = {
        "pairs": len(pairs),
        "seed": args.seed,
        **{f"recall@{K}_{name}": value for name, value in results.items()},
        **{f"mrr@{K}_{name}": value for name, value in mrr.items()},
        "ratio_contextual_to_full": round(ratio, 4),
        "ratio_followup_to_full": round(results["followup"] / results["full"], 4) if results["full"] else 0.0,
        "followups_expanded": round(expanded, 4),
        "full_questions_unchanged": round(unchanged, 4),
        "contextual_query_ms_p50": round(1000 * statistics.median(timings), 3),
        "contextual_query_ms_max": round(1000 * max(timings), 3),
    }
    print(f"| search text ({len(pairs)} pairs, seed {args.seed}) | Recall@{K} | / full | MRR@{K} |")
    print("|---|---|---|---|")
    labels = {
        "full": "original question (names its subject)",
        "followup": "follow-up alone",
        "followup_contextual": "follow-up through contextual_query",
        "followup_after_previous": "previous question + follow-up (pasted)",
        "full_contextual": "original question through contextual_query",
    }
    for name, label in labels.items():
        share = results[name] / results["full"] if results["full"] else 0.0
        print(f"| {label} | {results[name]:.3f} | {share:.3f} | {mrr[name]:.3f} |")
    verdict = "met" if ratio >= GOAL else "not met"
    print(f"follow-up with context / full: {ratio:.3f} (goal {GOAL:.2f}: {verdict})")
    print(json.dumps(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
