"""`text_similarity`: OpenAI's similarity grader; the reward is the metric's score in [0, 1].

    >>> g = TextSimilarityGrader(name="sim", input="{{sample.output_text}}", reference="{{item.reference_answer}}",
    ...                          evaluation_metric="rouge_1", pass_threshold=0.5)
    >>> g.grade(Item(id="q", messages=[], reference_answer="the cat sat"), "the cat ran").breakdown
    {'rouge_1': 0.6666666666666666, 'passed': 1.0}

The metrics are our own short implementations, written from the papers, so there is no
NLTK or sacrebleu dependency; the tests check each against numbers worked by hand.
Where a paper leaves a choice open, or we differ from OpenAI's (unpublished) code:

- Tokens: `re.findall(r"\\w+", text.lower())` - lowercase word tokens, punctuation dropped.
  Every metric but `fuzzy_match` and `cosine` works on these.
- `fuzzy_match`: `rapidfuzz.fuzz.ratio(input, reference) / 100` on the raw strings
  (normalised Indel similarity, 1 - edits / total length; case and punctuation count).
- `bleu`: sentence BLEU (Papineni et al. 2002), 1..4-grams, uniform weights, clipped
  counts, brevity penalty exp(1 - r/c) when c <= r. Smoothing for zero counts: add one to
  the matched and total counts of the 2..4-gram precisions (Lin & Och 2004), so one missing
  4-gram does not zero a good sentence; a hypothesis with no unigram match scores 0.
- `gleu`: Google's sentence GLEU (Wu et al. 2016): matched 1..4-grams over all hypothesis
  1..4-grams (precision) and over all reference ones (recall); the score is the minimum.
- `meteor`: METEOR (Banerjee & Lavie 2005) with exact unigram matching only - no Porter
  stems, no WordNet synonyms, so inflected forms ("cats"/"cat") do not match and scores can
  sit below NLTK's. Fmean = 10PR / (R + 9P) (alpha 0.9), penalty 0.5 * (chunks/matches)^3.
  The alignment is greedy: each hypothesis word takes the reference position that extends
  the current chunk if it can, else the first free one.
- `rouge_1`..`rouge_5`: ROUGE-N F1 over clipped n-gram counts; `rouge_l`: F1 of the longest
  common subsequence of tokens.
- `cosine`: cosine similarity of sentence embeddings from a local `sentence_transformers`
  model (option `embedding_model`: a local path or model name already in its cache),
  clipped at 0 so the reward stays in [0, 1]. Without one, building the grader fails.

`breakdown` holds the metric's score under its name and, with `pass_threshold`,
`passed` (1.0 when score >= pass_threshold).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from typing import Callable

from rapidfuzz import fuzz

from rftkit.graders import template
from rftkit.graders.openai import TemplateFields, check_choice, check_name, is_number
from rftkit.types import Item, Score

_WORD_RE = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def overlap(hyp: list[str], ref: list[str], n: int) -> tuple[int, int, int]:
    """(clipped matches, hypothesis n-grams, reference n-grams) for order n."""
    h, r = ngrams(hyp, n), ngrams(ref, n)
    return sum((h & r).values()), sum(h.values()), sum(r.values())


def f1(matches: float, hyp_total: float, ref_total: float) -> float:
    if matches == 0:
        return 0.0
    precision, recall = matches / hyp_total, matches / ref_total
    return 2 * precision * recall / (precision + recall)


def fuzzy_match(hypothesis: str, reference: str) -> float:
    return fuzz.ratio(hypothesis, reference) / 100.0


def bleu(hypothesis: str, reference: str, max_n: int = 4) -> float:
    hyp, ref = tokens(hypothesis), tokens(reference)
    if not hyp or not ref:
        return 0.0
    log_precisions = []
    for n in range(1, max_n + 1):
        matches, total, _ = overlap(hyp, ref, n)
        if n > 1:  # Lin & Och add-one smoothing, higher orders only
            matches, total = matches + 1, total + 1
        if matches == 0:
            return 0.0
        log_precisions.append(math.log(matches / total))
    c, r = len(hyp), len(ref)
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(sum(log_precisions) / max_n)


def gleu(hypothesis: str, reference: str, max_n: int = 4) -> float:
    hyp, ref = tokens(hypothesis), tokens(reference)
    counts = [overlap(hyp, ref, n) for n in range(1, max_n + 1)]
    matches, hyp_total, ref_total = (sum(c[i] for c in counts) for i in range(3))
    if matches == 0:
        return 0.0
    return min(matches / hyp_total, matches / ref_total)


def align(hyp: list[str], ref: list[str]) -> list[tuple[int, int]]:
    """Greedy exact-match alignment [(hyp index, ref index)], preferring to extend a chunk."""
    free: dict[str, list[int]] = {}
    for j, word in enumerate(ref):
        free.setdefault(word, []).append(j)
    pairs: list[tuple[int, int]] = []
    for i, word in enumerate(hyp):
        spots = free.get(word)
        if not spots:
            continue
        follow = pairs[-1][1] + 1 if pairs and pairs[-1][0] == i - 1 else None
        j = follow if follow in spots else spots[0]
        spots.remove(j)
        pairs.append((i, j))
    return pairs


def meteor(hypothesis: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> float:
    hyp, ref = tokens(hypothesis), tokens(reference)
    pairs = align(hyp, ref)
    matches = len(pairs)
    if matches == 0:
        return 0.0
    precision, recall = matches / len(hyp), matches / len(ref)
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    # a chunk is a run of matches adjacent in both sentences
    chunks = 1 + sum(1 for (i0, j0), (i1, j1) in zip(pairs, pairs[1:]) if not (i1 == i0 + 1 and j1 == j0 + 1))
    return fmean * (1 - gamma * (chunks / matches) ** beta)


def rouge_n(n: int) -> Callable[[str, str], float]:
    def score(hypothesis: str, reference: str) -> float:
        return f1(*overlap(tokens(hypothesis), tokens(reference), n))

    return score


def lcs_length(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)  # one row of the usual DP table, reused
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    hyp, ref = tokens(hypothesis), tokens(reference)
    return f1(lcs_length(hyp, ref), len(hyp), len(ref))


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{f"rouge_{n}": rouge_n(n) for n in range(1, 6)},
    "rouge_l": rouge_l,
    "cosine": lambda hypothesis, reference: 0.0,  # replaced per grader by an EmbeddingCosine
}


class EmbeddingCosine:
    """Cosine similarity of two texts' embeddings; the model loads on first use."""

    def __init__(self, model: object):
        if not isinstance(model, str) or not model:
            raise ValueError("evaluation_metric: cosine needs an installed local embedding model: set "
                             "`embedding_model` to a sentence-transformers model path "
                             "(pip install sentence-transformers)")
        try:
            import sentence_transformers  # noqa: F401  (checked now, loaded on first use)
        except ImportError:
            raise ValueError("evaluation_metric: cosine needs an installed local embedding model, and "
                             "sentence_transformers is not installed: pip install sentence-transformers, then set "
                             f"`embedding_model` (now {model!r}) to a local model path") from None
        self.model_name, self._model, self._lock = model, None, threading.Lock()

    def __call__(self, hypothesis: str, reference: str) -> float:
        with self._lock:  # one load, and one encode at a time (the model is not known to be thread-safe)
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(self.model_name)
            a, b = (list(map(float, v)) for v in self._model.encode([hypothesis, reference]))
        norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        return 0.0 if norm == 0 else max(0.0, sum(x * y for x, y in zip(a, b)) / norm)


class TextSimilarityGrader:
    def __init__(self, name: str = "text_similarity", input: str = "{{sample.output_text}}",
                 reference: str = "{{item.reference_answer}}", evaluation_metric: str = "fuzzy_match",
                 pass_threshold: float | None = None, embedding_model: str | None = None):
        self.name = check_name(name)
        self.evaluation_metric = check_choice("evaluation_metric", evaluation_metric, METRICS)
        if embedding_model is not None and evaluation_metric != "cosine":
            raise ValueError(f"embedding_model: only used by evaluation_metric: cosine (not {evaluation_metric!r})")
        self.metric = EmbeddingCosine(embedding_model) if evaluation_metric == "cosine" else METRICS[evaluation_metric]
        if pass_threshold is not None and not (is_number(pass_threshold) and 0.0 <= pass_threshold <= 1.0):
            raise ValueError(f"pass_threshold: must be a number within [0, 1] (got {pass_threshold!r})")
        self.pass_threshold = pass_threshold
        self.templates = TemplateFields({"input": input, "reference": reference})
        self.needs_reference = self.templates.needs_reference

    def grade(self, item: Item, text: str) -> Score:
        try:
            filled = self.templates.render(item, text)
        except template.TemplateError as exc:
            return Score.failed(str(exc))
        score = float(self.metric(filled["input"], filled["reference"]))
        breakdown = {self.evaluation_metric: score}
        if self.pass_threshold is not None:
            breakdown["passed"] = float(score >= self.pass_threshold)
        return Score(reward=score, breakdown=breakdown)

    def check_item(self, item: Item) -> list[str]:
        return self.templates.check_item(item)
