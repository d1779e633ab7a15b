"""Follow-up questions: what to search with when a question leans on the previous turns of a conversation.

"Et en 2020 ?" or "Quand a-t-elle été construite ?" name nothing to search for. :func:`contextual_query`
keeps a question that names its subject (or repeats what the previous questions named) as it is, and adds to
one that leans on the conversation (an opening such as "et", "and", "what about"; a pronoun, possessive or
demonstrative; no named subject; a single content word) the salient terms of the previous questions: every
content word of the last one, the names of the older ones, and a few names of the last answer. It is
deterministic, needs no model, and reads French and English (the stop words come from the project's
per-language analysis; the interrogatives and pronouns it lacks are listed here). Measured in
bench/README.md ("Follow-up questions").

When a real chat model is configured, :func:`rewrite_messages` asks it for a standalone question instead
and :func:`rewrite_parse` reads its reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from ingestion.language import TextAnalyzer, fold

__all__ = ["contextual_query", "rewrite_messages", "rewrite_parse"]

#: how many previous turns are read (the product passes a few; older ones rarely hold the subject)
MAX_TURNS = 3
#: at most this many terms are added to a question
MAX_ADDED_TERMS = 12
#: at most this many names are taken from the last answer (an answer also names things not asked about)
MAX_ANSWER_TERMS = 3
#: a question with this many content words or fewer is taken for an ellipsis ("Et à Lyon ?")
SHORT_QUESTION_TERMS = 1
#: a question sharing this many content words with the previous one (or one of its names) names its subject
SHARED_TERMS = 2


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# The stop-word lists of ingestion/language.py (bm25s's) drop articles and auxiliaries but keep
# interrogatives and, in French, several pronouns and demonstratives: they carry no subject either.
_INTERROGATIVES = _set(
    "quel quelle quels quelles lequel laquelle lesquels lesquelles combien quand où comment pourquoi quoi "
    "qu what when where who whom whose which why how"
)
#: words that stand for something named before (the French inversion clitics "-t-il" are handled apart)
_ANAPHORS = _set(
    "il elle ils elles lui leur leurs eux celui celle ceux celles ce cet cette ces ci "
    "là son sa ses y it its they them their theirs this that these those he she him her his hers"
)
#: other words that name nothing, missing from the stop-word lists
_FILLERS = _set(
    "a fait faire font peut peuvent doit doivent faut va vont cela ça ceci chose choses quelqu autre "
    "autres tout tous toute toutes aussi alors ensuite puis encore déjà plus moins très bien also then "
    "still yet else more less much many did does do done was were been being is are has have had can "
    "could would should will may might"
)
_NOT_SALIENT = _INTERROGATIVES | _ANAPHORS | _FILLERS
#: openings that continue the previous question ("et en 2020 ?", "what about Lyon?")
_CONTINUATION = re.compile(
    r"^\s*(?:et|and|also|aussi|or|mais|but|sinon|puis|then|"
    r"what\s+about|how\s+about|what\s+else|quid|qu['’]\s*en\s+est[- ]il|"
    r"même\s+question|same\s+question)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")
_PREFERRED = ("fr", "en")
#: French subject inversion: the pronoun of "a-t-elle", "est-il", "sont-ils" repeats a subject, named or not
_INVERSION_CLITIC = frozenset({"il", "elle", "ils", "elles"})
_IMPERSONAL = frozenset({"y", "faut", "existe", "semble"})


@lru_cache(maxsize=1)
def _analyzer() -> TextAnalyzer:
    return TextAnalyzer()


@dataclass(frozen=True)
class _Word:
    text: str  # as written
    key: str  # case-folded
    start: int
    end: int


@dataclass(frozen=True)
class _Term:
    text: str
    stem: str
    named: bool  # a name (capitalised inside a sentence, an acronym) or a number


def _words(text: str) -> list[_Word]:
    return [_Word(m.group(), m.group().casefold(), m.start(), m.end()) for m in _WORD.finditer(text)]


def _languages(analyzer: TextAnalyzer, texts: Sequence[str]) -> tuple[str, ...]:
    """The languages the stop words of ``texts`` vote for, French and English first.

    A tie is common ("de la" is French, Spanish and Italian alike); with no vote, the analyzer's first language.
    """
    winners = analyzer.winners(analyzer.votes([word for text in texts for word in analyzer.words(text)]))
    preferred = [code for code in _PREFERRED if code in winners]
    return tuple(preferred + [code for code in winners if code not in preferred]) or (analyzer.languages[0],)


def _sentence_initial(text: str, word: _Word) -> bool:
    before = text[: word.start].rstrip(" \t\"'«“(¿¡-–—")
    return not before or before[-1] in ".!?…:\n"


def _is_name(text: str, word: _Word) -> bool:
    """Whether ``word`` is written as a name: an acronym, a capital inside a sentence, or a number."""
    written = word.text
    if written.isdigit():
        return True
    if not written[:1].isupper():
        return False
    if len(written) > 1 and written.isupper():
        return True  # DPSD, UNESCO
    return not _sentence_initial(text, word)


def _terms(text: str, languages: Sequence[str]) -> list[_Term]:
    """The salient terms of ``text``: no stop word, interrogative, pronoun or filler, first occurrence each.

    A stop word of any of ``languages`` is left out; terms are stemmed as the first language's.
    """
    analyzer = _analyzer()
    terms: list[_Term] = []
    seen: set[str] = set()
    for word in _words(text):
        if word.key in _NOT_SALIENT or fold(word.key) in _NOT_SALIENT:
            continue
        if len(word.key) < 2 and not word.key.isdigit():
            continue
        if any(not analyzer.tokens([word.key], code) for code in languages[1:]):
            continue
        stems = analyzer.tokens([word.key], languages[0])
        if not stems or stems[0] in seen:
            continue  # a stop word, or said already
        seen.add(stems[0])
        terms.append(_Term(word.text, stems[0], _is_name(text, word)))
    return terms


def _has_anaphor(text: str, words: Sequence[_Word]) -> bool:
    """Whether ``text`` has a pronoun, possessive or demonstrative that points outside it."""
    for i, word in enumerate(words):
        if word.key not in _ANAPHORS:
            continue
        following = words[i + 1].key if i + 1 < len(words) else ""
        before = text[: word.start]
        # "Quand Jakob Böhme tombe-t-il malade ?" repeats a subject named before it; "Comment a-t-il
        # permis ... en Europe ?" does not
        if (
            word.key in _INVERSION_CLITIC
            and before.endswith("-")
            and any(_is_name(text, w) and not w.text.isdigit() for w in words[:i])
        ):
            continue
        if word.key == "ce" and (before.endswith("-") or following in {"que", "qu", "qui"}):
            continue  # "qu'est-ce que", "ce qui"
        if word.key == "il" and following in _IMPERSONAL:
            continue  # "il y a", "il faut"
        if word.key == "y" and i > 0 and words[i - 1].key == "il":
            continue
        if word.key == "that" and following:
            continue  # English "that" inside a sentence is mostly a relative or a conjunction
        return True
    return False


def _leans_on_context(question: str, terms: Sequence[_Term], previous: Sequence[Sequence[_Term]]) -> bool:
    """Whether ``question`` (with its salient ``terms``) needs the previous turns (their questions' terms).

    It does when it opens with a continuation ("et", "and", "what about"). It does not when it repeats a name
    of the previous questions or ``SHARED_TERMS`` words of the last one: it names what the conversation is
    about. Otherwise it does when it has a pronoun, possessive or demonstrative pointing outside it, names
    nothing (no capitalised word inside the sentence, no acronym), or has at most ``SHORT_QUESTION_TERMS``
    content words ("Lyon ?", "Qui est-ce ?").
    """
    if _CONTINUATION.match(question):
        return True
    stems = {term.stem for term in terms}
    named_before = {term.stem for turn in previous for term in turn if term.named and not term.text.isdigit()}
    if stems & named_before or (SHARED_TERMS and len(stems & {t.stem for t in previous[-1]}) >= SHARED_TERMS):
        return False
    if _has_anaphor(question, _words(question)) or len(terms) <= SHORT_QUESTION_TERMS:
        return True
    return not any(term.named and not term.text.isdigit() for term in terms)


def contextual_query(question: str, history: Sequence[tuple[str, str]], *, answer_terms: int = MAX_ANSWER_TERMS) -> str:
    """The text to search with for ``question`` asked after ``history`` ((question, answer) pairs, oldest first).

    A question that stands alone (it names its subject, or repeats what the previous questions named, with no
    opening such as "et" / "and" that points back) is returned as it is, and so is any question without
    history. Otherwise the salient terms of the previous questions (all of the last one's, the names in the
    older ones) and up to ``answer_terms`` names of the last answer are appended, leaving out those the
    question has: "Quand a-t-elle été construite ?" after "Qui a conçu la tour Eiffel ?" searches
    "Quand a-t-elle été construite ? conçu tour Eiffel".
    """
    question = question.strip()
    turns = [(asked, answered) for asked, answered in history if asked.strip()][-MAX_TURNS:]
    if not question or not turns:
        return question
    languages = _languages(_analyzer(), [question, *(asked for asked, _ in turns)])
    own = _terms(question, languages)
    previous = [_terms(asked, languages) for asked, _ in turns]
    if not _leans_on_context(question, own, previous):
        return question

    have = {term.stem for term in own}
    added: list[str] = []

    def add(terms: Sequence[_Term], limit: int = MAX_ADDED_TERMS) -> None:
        for term in terms:
            if limit <= 0 or len(added) >= MAX_ADDED_TERMS:
                return
            if term.stem not in have:
                have.add(term.stem)
                added.append(term.text)
                limit -= 1

    add(previous[-1])
    for terms in reversed(previous[:-1]):
        add([term for term in terms if term.named])
    last_answer = turns[-1][1]
    if answer_terms > 0 and last_answer.strip():
        add([t for t in _terms(last_answer, languages) if t.named and not t.text.isdigit()], answer_terms)
    return f"{question} {' '.join(added)}" if added else question


# ---- rewriting by a chat model -----------------------------------------------------------------

#: a rewritten question longer than this many times the follow-up (and this many characters) is not one
_REWRITE_MAX_CHARS = 400
_REWRITE_MAX_RATIO = 6
#: how much of each previous answer the model is shown
_REWRITE_ANSWER_CHARS = 500
_REWRITE_SYSTEM = (
    "You rewrite the last question of a conversation as a standalone question for a search engine. "
    "Replace pronouns and references (it, they, this, il, elle, ce, celui-ci...) by what they refer to in the "
    "conversation, and add the subject the question leaves implicit. Keep the question's language, meaning and "
    "wording otherwise; if it already stands alone, repeat it unchanged. Never answer it. "
    "Reply with the rewritten question only, on one line."
)
_REWRITE_PREFIX = re.compile(
    r"^\s*(?:(?:standalone|rewritten|reformulated)?\s*question(?:\s+(?:autonome|réécrite|reformulée))?|"
    r"rewrite|rewritten|réécriture|reformulation|output|answer|réponse)\s*[:：-]\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'`«»“”‘’ "


def rewrite_messages(question: str, history: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Chat messages asking a model to rewrite ``question`` as a standalone question, given ``history``.

    ``history`` is the conversation's previous (question, answer) pairs, oldest first (the last
    ``MAX_TURNS`` are shown, each answer cut to a few hundred characters). The model's reply goes to
    :func:`rewrite_parse`.
    """
    lines = []
    for asked, answered in [(a, b) for a, b in history if a.strip()][-MAX_TURNS:]:
        answer = " ".join(answered.split())
        if len(answer) > _REWRITE_ANSWER_CHARS:
            answer = answer[:_REWRITE_ANSWER_CHARS].rsplit(" ", 1)[0] + " …"
        lines.append(f"User: {' '.join(asked.split())}")
        if answer:
            lines.append(f"Assistant: {answer}")
    conversation = "\n".join(lines) or "(none)"
    content = (
        f"Conversation so far:\n{conversation}\n\nLast question: {' '.join(question.split())}\n\nStandalone question:"
    )
    return [{"role": "system", "content": _REWRITE_SYSTEM}, {"role": "user", "content": content}]


def rewrite_parse(text: str, question: str) -> str:
    """The standalone question in a model's reply to :func:`rewrite_messages`, or ``question`` when there is none.

    The first non-empty line is read, without a "Standalone question:" prefix or surrounding quotes; an
    empty reply, or one far longer than a question (the model answered instead), gives ``question`` back.
    """
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    for _ in range(2):  # a prefix inside quotes, or quotes after a prefix
        line = _REWRITE_PREFIX.sub("", line.strip()).strip(_QUOTES)
    if not _WORD.search(line):
        return question
    if len(line) > max(_REWRITE_MAX_CHARS, _REWRITE_MAX_RATIO * len(question.strip())):
        return question
    return line
