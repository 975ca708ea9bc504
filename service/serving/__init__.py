"""``steerlab serve``: an OpenAI-compatible HTTP server of an experiment's steered variants.

The pieces, one concern each:

- :mod:`.options`: what the operator sets (host, keys, limits of per-request steering);
- :mod:`.protocol`: OpenAI request bodies read into plain requests, and response bodies;
- :mod:`.targets`: what a request's ``model`` (and ``steering``) field picks: a variant,
  a deployment's arm, a per-request steering spec or the plain model;
- :mod:`.deployment_board`: the live deployments, polled from the store;
- :mod:`.text_stream`: tokens to text, incrementally, cut at stop strings;
- :mod:`.rows`: one request's row in :class:`engine.continuous.ContinuousBatcher`, on the event loop;
- :mod:`.response_log`: every served response stored (group commits) before its last byte;
- :mod:`.app`: the Starlette routes; :mod:`.server`: loading and running under uvicorn.

All state that replicas must share (deployments, weights, kill switches, responses,
feedback) lives in the store; a server process holds only the model and its batcher.
"""
