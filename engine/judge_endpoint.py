"""A judge behind an OpenAI-compatible endpoint (``/chat/completions``), through the ``openai`` client.

The API key is read from the environment variable the judge names (``api_key_env``) when
the judge starts, never from the file and never stored. Each reading is one request at
temperature 0 (and seed 0, which endpoints that support it use to be repeatable); a batch's
requests go out a few at a time.

The label is read from the reply's text (:func:`find_label`): a reply that is only the
label, one that starts with it ("B. It is ..."), "Answer: A", or "B is better". When the
endpoint returns log-probabilities, the reading also gets ``p_left``/``p_right`` from the
label token's alternatives, and decides from them as a local judge does. An endpoint that
refuses ``logprobs`` is asked again without them (and not asked for them again).

A reply that names no label counts as a tie reading, with the reply kept (``answer``), so
one odd reply does not stop a long run; :mod:`service.judging` fails the run when a whole
batch of replies names none, as that is a judge that does not follow the instructions.
An endpoint that cannot be reached, times out, refuses the key or answers with an error
fails the run with one sentence; what was stored before stays.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from engine.errors import SteerLabError
from engine.fields import printable, short
from engine.judge import LABELS, PairText, Reading, decide, judge_messages
from engine.judge_spec import EndpointSpec

log = logging.getLogger(__name__)

MAX_PARALLEL_REQUESTS = 4
MAX_ANSWER_CHARS = 2000  # of a reply kept with its reading
RETRIES = 2  # the client's own, with backoff: for a busy endpoint (429, 5xx) or a dropped connection

_WHOLE = re.compile(r"^\W*([AB])\W*$")
_OPENING = re.compile(r"^[\s*_\"'(\[]*([AB])(?:[\s*_\"')\]]*(?:[.:,;!\n]|$))")
_NAMED = re.compile(r"\b(?:answer|response|reply|output|option|choice)\s*[:\-]?\s*[*_\"'(\[]*([AB])\b", re.IGNORECASE)
_BETTER = re.compile(r"\b([AB])\b[*_\"')\]]*\s+is\s+(?:the\s+)?better\b")
_TRIM = " \t\n*_\"'()[]:.,;!"


def find_label(text: str) -> tuple[str, int] | None:
    """The label a reply names and where it stands, or None: a whole-reply label, an opening
    one ("A." or "B:"), "Answer: A", or "B is better" (the article "A" alone is no label)."""
    for pattern in (_WHOLE, _OPENING, _NAMED):
        match = pattern.search(text)
        if match is not None:
            return match.group(1), match.start(1)
    labels = {m.group(1): m.start(1) for m in _BETTER.finditer(text)}
    if len(labels) == 1:
        label, at = next(iter(labels.items()))
        return label, at
    return None


class EndpointJudge:
    """Reads pairs by asking an OpenAI-compatible chat completions endpoint."""

    def __init__(self, spec: EndpointSpec, name: str, rubric: str, question: str) -> None:
        self.spec, self.name, self.rubric, self.question = spec, name, rubric, question
        key = os.environ.get(spec.api_key_env, "").strip()
        if not key:
            raise SteerLabError(
                f"Judge '{name}' reads its API key from the environment variable {spec.api_key_env}, which is "
                f"not set; set it where the judge runs (the worker's environment for a queued run), "
                f"for example `export {spec.api_key_env}=...`."
            )
        self._client = openai.OpenAI(
            base_url=spec.base_url, api_key=key, timeout=spec.timeout_seconds, max_retries=RETRIES
        )
        self._ask_logprobs = True

    def read(self, pairs: Sequence[PairText]) -> list[Reading]:
        """One reading per pair; a failed request fails the whole batch with one sentence."""
        if not pairs:
            return []
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_REQUESTS, len(pairs))) as pool:
            return list(pool.map(self._read_one, pairs))

    def _read_one(self, pair: PairText) -> Reading:
        messages = [m.to_dict() for m in judge_messages(self.rubric, self.question, pair)]
        response = self._complete(messages)
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise SteerLabError(
                f"Judge '{self.name}': the endpoint {self.spec.base_url} answered without any choice; "
                "check that it serves OpenAI-compatible chat completions."
            )
        choice = choices[0]
        text = str(getattr(choice.message, "content", None) or "")
        return reading_of(text, _token_logprobs(choice))

    def _complete(self, messages: list[dict[str, str]]) -> Any:
        asked = self._ask_logprobs  # other threads may change it meanwhile: this request's own
        try:
            return self._create(messages, asked)
        except openai.BadRequestError:
            if not asked:
                raise self._explain_bad_request() from None
            # Some endpoints refuse logprobs: ask once more without, and never again.
            log.info("Judge '%s': the endpoint refused logprobs; reading labels from the text only", self.name)
            self._ask_logprobs = False
            try:
                return self._create(messages, False)
            except openai.BadRequestError:
                raise self._explain_bad_request() from None

    def _create(self, messages: list[dict[str, str]], logprobs: bool) -> Any:
        url = self.spec.base_url
        extra: dict[str, Any] = {"logprobs": True, "top_logprobs": 5} if logprobs else {}
        try:
            return self._client.chat.completions.create(
                model=self.spec.model,
                messages=messages,  # type: ignore[arg-type]  # plain role/content dicts are what it sends
                temperature=0.0,
                seed=0,
                max_tokens=self.spec.max_tokens,
                **extra,
            )
        except openai.APITimeoutError as exc:
            raise SteerLabError(
                f"Judge '{self.name}': the endpoint {url} did not answer within {self.spec.timeout_seconds:g} s; "
                "check that it is running and reachable, or raise the judge's endpoint.timeout_seconds."
            ) from exc
        except openai.APIConnectionError as exc:
            reason = short(printable(str(exc.__cause__ or exc)), 120)
            raise SteerLabError(
                f"Judge '{self.name}': the endpoint {url} could not be reached ({reason}); "
                "check the judge's endpoint.base_url and that the server is running."
            ) from exc
        except openai.AuthenticationError as exc:
            raise SteerLabError(
                f"Judge '{self.name}': the endpoint {url} refused the API key from {self.spec.api_key_env} "
                f"(HTTP {exc.status_code}); set that variable to a valid key."
            ) from exc
        except openai.BadRequestError:
            raise
        except openai.APIStatusError as exc:
            raise SteerLabError(
                f"Judge '{self.name}': the endpoint {url} answered with HTTP {exc.status_code} "
                f"({short(printable(exc.message), 120)}); check the judge's endpoint.model and base_url."
            ) from exc

    def _explain_bad_request(self) -> SteerLabError:
        return SteerLabError(
            f"Judge '{self.name}': the endpoint {self.spec.base_url} refused the request (HTTP 400) for model "
            f"'{self.spec.model}'; check the judge's endpoint.model and endpoint.max_tokens."
        )


def reading_of(text: str, logprobs: Sequence[tuple[str, float, dict[str, float]]] | None) -> Reading:
    """A reading from a reply's text and, when given, its tokens' (text, logprob, alternatives).

    With log-probabilities, the label's token decides through the probabilities of A and B
    among its alternatives; without, the label in the text decides.
    """
    answer = text[:MAX_ANSWER_CHARS]
    found = find_label(text)
    if found is None:
        return Reading("tie", answer=answer, labelled=False)
    label, at = found
    probabilities = _label_probabilities(logprobs, at) if logprobs else None
    if probabilities is not None:
        p_left, p_right = probabilities
        return Reading(decide(p_left, p_right), p_left, p_right, answer)
    return Reading("left" if label == LABELS[0] else "right", answer=answer)


def _label_probabilities(tokens: Sequence[tuple[str, float, dict[str, float]]], at: int) -> tuple[float, float] | None:
    """P(A) and P(B) at the token that holds the character ``at`` of the reply, if that token is a label."""
    offset = 0
    for token, logprob, alternatives in tokens:
        end = offset + len(token)
        if offset <= at < end:
            if token.strip(_TRIM) not in LABELS:
                return None  # the label shares its token with other text: the text decides
            sums = dict.fromkeys(LABELS, 0.0)
            for alternative, value in {**alternatives, token: logprob}.items():
                label = alternative.strip(_TRIM)
                if label in sums:
                    sums[label] += math.exp(value)
            return sums[LABELS[0]], sums[LABELS[1]]
        offset = end
    return None


def _token_logprobs(choice: Any) -> list[tuple[str, float, dict[str, float]]] | None:
    """(token, logprob, {alternative: logprob}) of each token of a choice, or None without logprobs."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    out = []
    for item in content:
        alternatives = {str(t.token): float(t.logprob) for t in (getattr(item, "top_logprobs", None) or [])}
        out.append((str(item.token), float(item.logprob), alternatives))
    return out
