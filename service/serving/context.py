"""What a running server holds: the catalog of targets, the batcher that owns the model, the
deployments board and the response log; and how a request becomes a batcher row.

Kept apart from HTTP (:mod:`.app`), so another front end (a Ray Serve replica) can drive the
same model loop; every piece of state that replicas share is in the store.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from db.store import Store
from engine.continuous import ContinuousBatcher, RowRequest
from engine.decoding import Decoding
from engine.fields import short
from engine.prompting import render_marked_prompt
from service.serving.deployment_board import DeploymentBoard
from service.serving.errors import bad_request
from service.serving.options import ServeOptions
from service.serving.protocol import ApiRequest
from service.serving.response_log import ResponseLog
from service.serving.targets import Catalog, Target


@dataclass
class ServingContext:
    store: Store
    catalog: Catalog
    options: ServeOptions
    board: DeploymentBoard = field(init=False)
    batcher: ContinuousBatcher = field(init=False)
    responses: ResponseLog = field(init=False)
    _started: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.board = DeploymentBoard(self.store, set(self.catalog.experiments))
        self.batcher = ContinuousBatcher(self.catalog.model, self.options.max_rows, self.options.max_waiting)
        self.responses = ResponseLog(self.store)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.board.refresh(force=True)
        self.responses.start()
        self.batcher.start()

    def close(self) -> None:
        """End running rows, then store every response still queued."""
        self.batcher.close()
        self.responses.close()

    def row_request(self, target: Target, request: ApiRequest) -> RowRequest:
        """The batcher row of ``request`` for ``target``: its framed prompt, decoding and edits."""
        model = self.catalog.model
        rendered = render_marked_prompt(model, request.prompt, target.framing, target.chat_template)
        prompt = tuple(rendered.tokens)
        if not prompt:
            raise bad_request("The prompt has no tokens once rendered; send some text.", "prompt")
        sampling = request.sampling
        context = getattr(model.model.config, "max_position_embeddings", None)
        room = (context - len(prompt)) if isinstance(context, int) else self.options.max_tokens
        param = "max_tokens"
        if sampling.max_tokens is not None and sampling.max_tokens > self.options.max_tokens:
            raise bad_request(
                f"max_tokens {short(str(sampling.max_tokens), 24)} is above this server's limit of {self.options.max_tokens} "
                f"new tokens; ask for {self.options.max_tokens} or fewer.",
                param,
            )
        wanted = sampling.max_tokens or min(self.options.max_tokens, room)
        if isinstance(context, int) and (len(prompt) + wanted > context or wanted < 1):
            raise bad_request(
                f"The prompt is {len(prompt)} tokens and {max(wanted, 1)} new tokens were asked for, more than the "
                f"model's context of {context} tokens together; shorten the prompt or ask for fewer tokens.",
                "messages" if request.endpoint == "chat" else "prompt",
                "context_length_exceeded",
            )
        greedy = sampling.temperature == 0.0
        decoding = Decoding(
            max_new_tokens=wanted,
            do_sample=not greedy,
            temperature=1.0 if greedy else sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            stop_at_eos=not sampling.ignore_eos,
        )
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(62)
        assistant = tuple(rendered.assistant) if any(rendered.assistant) else None
        return RowRequest(prompt, decoding, seed, target.edits, assistant)

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.catalog.model.tokenizer.decode(list(tokens), skip_special_tokens=True))
