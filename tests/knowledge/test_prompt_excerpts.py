"""A generative prompt shows each source's excerpt (RAG_PROMPT_SOURCE_TOKENS), not its whole chunk."""

from __future__ import annotations

from typing import Any

from knowledge.services import engines
from knowledge.services.answering import Source, _rag_messages

PARAGRAPH = (
    "Le phare se dresse sur un rocher au large de la côte nord. Il fut dessiné par l'ingénieur Robert Smith "
    "au printemps 1850. Son feu fut allumé pour la première fois en 1854 et se voyait à vingt milles. "
    "Des gardiens y vécurent jusqu'à l'automatisation de la station en 1991. "
)


def _source(number: int, text: str) -> Source:
    return Source(id=number, document_id=number, title=f"Phare {number}", page=None, score=0.8, text=text, highlight="")


def test_a_generative_prompt_with_excerpts_is_shorter_and_keeps_the_sources_in_order(settings: Any) -> None:
    question = "Jusqu'à quand des gardiens vécurent-ils dans la station ?"
    # whole chunks of about 350 tokens, as ingestion writes them; the answer is in each
    sources = [_source(i, f"[{i}] " + PARAGRAPH * 4) for i in range(1, 4)]
    llm = engines.get_llm()  # the packaged model's tokenizer counts; no model is loaded to build a prompt

    settings.RAG_PROMPT_SOURCE_TOKENS = 0
    whole, whole_used = _rag_messages(question, sources, (), 64)
    settings.RAG_PROMPT_SOURCE_TOKENS = 60
    cut, cut_used = _rag_messages(question, sources, (), 64)

    assert whole_used == cut_used == sources
    assert llm.count_message_tokens(cut) < llm.count_message_tokens(whole) * 0.5
    prompt = cut[-1]["content"]
    assert prompt.count("automatisation de la station en 1991") == 3
    assert prompt.index('<source id="1"') < prompt.index('<source id="2"') < prompt.index('<source id="3"')
    # each excerpt says that sentences were left out before and after it
    assert prompt.count("\n… ") == 3 and prompt.count(" …\n</source>") == 3
    # a source's own bracketed numbers still do not read as citations
    assert "［1］" in whole[-1]["content"] and "[1]" not in prompt.split("<sources>", 1)[1]


def test_evaluate_reports_the_median_cost_of_the_answers_a_model_wrote() -> None:
    from knowledge.services.evaluation_answers import AnswerCounts

    counts = AnswerCounts(mode="generative")
    for prompt_tokens, first, seconds in ((900, 2.0, 5.0), (300, 0.5, 2.0), (600, 1.0, 3.0), (0, None, 0.1)):
        counts.add("Une réponse [1].", ["réponse"])
        counts.add_cost(prompt_tokens=prompt_tokens, first_piece_s=first, seconds=seconds)
    metrics = counts.metrics()
    # the answer no model wrote ("not found") costs no prompt and is left out of the medians
    assert metrics["prompt_tokens_median"] == 600
    assert metrics["first_token_seconds_median"] == 1.0
    assert metrics["answer_seconds_median"] == 3.0
    assert metrics["answers"] == 4
