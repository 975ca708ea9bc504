"""Vector extraction against a plain reference, and the safetensors file format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.errors import SteerLabError
from engine.extract import extract_vector, read_activations
from engine.models import LoadedModel
from engine.vectors import SteeringVector, hash_pairs, load_vector, save_vector
from tests.helpers import tokens

PAIRS = [
    ("Lily was very sad and she cried.", "Lily was very happy and she smiled."),
    ("Tom felt lonely.", "Tom felt glad."),
    ("The sad dog cried all night long in the rain.", "The happy dog played."),
]


def reference_activations(model: LoadedModel, text: str) -> torch.Tensor:
    """Each block's output for one text alone (no padding), via the model's own hidden states."""
    ids = torch.tensor([tokens(model, text)])
    with torch.no_grad():
        out = model.model(input_ids=ids, output_hidden_states=True)
    # hidden_states[i + 1] is block i's output; Llama applies its final norm after the
    # tuple is collected except for the last entry, so read the last block by hook.
    states = [out.hidden_states[i + 1][0] for i in range(model.n_layers - 1)]
    captured: list[torch.Tensor] = []
    handle = model.layers[-1].register_forward_hook(lambda _m, _a, o: captured.append(o[0]))
    try:
        with torch.no_grad():
            model.model(input_ids=ids)
    finally:
        handle.remove()
    return torch.stack([*states, captured[0]])  # [layers, tokens, hidden]


@pytest.mark.parametrize("read", ["last", "mean"])
def test_padded_batch_reads_match_single_texts(stories260k: LoadedModel, read: str) -> None:
    texts = [t for pair in PAIRS for t in pair]
    batched = read_activations(stories260k, [tokens(stories260k, t) for t in texts], read)
    for i, text in enumerate(texts):
        ref = reference_activations(stories260k, text)
        expected = ref[:, -1, :] if read == "last" else ref.mean(dim=1)
        torch.testing.assert_close(batched[i], expected, rtol=1e-4, atol=1e-4)


def test_mean_difference_matches_reference(stories260k: LoadedModel) -> None:
    vector = extract_vector(stories260k, "sad", PAIRS, lambda t: tokens(stories260k, t))
    expected = torch.stack(
        [reference_activations(stories260k, p)[:, -1] - reference_activations(stories260k, n)[:, -1] for p, n in PAIRS]
    ).mean(0)
    torch.testing.assert_close(vector.directions, expected, rtol=1e-4, atol=1e-4)
    assert vector.layers == tuple(range(5)) and vector.extraction_seconds > 0
    assert vector.pairs_hash == hash_pairs(PAIRS)


def test_pca_points_to_the_positive_side_and_single_pair_uses_one_pair(stories260k: LoadedModel) -> None:
    tok = lambda t: tokens(stories260k, t)  # noqa: E731
    mean = extract_vector(stories260k, "v", PAIRS, tok, method="mean_diff")
    pca = extract_vector(stories260k, "v", PAIRS, tok, method="pca")
    for layer in range(stories260k.n_layers):
        assert float(pca.directions[layer] @ mean.directions[layer]) > 0
    single = extract_vector(stories260k, "v", PAIRS, tok, method="single_pair", pair_index=1)
    only = extract_vector(stories260k, "v", PAIRS[1:2], tok, method="mean_diff")
    torch.testing.assert_close(single.directions, only.directions)
    # With one pair there is no spread: PCA falls back to that pair's difference.
    one_pca = extract_vector(stories260k, "v", PAIRS[1:2], tok, method="pca")
    torch.testing.assert_close(one_pca.directions, only.directions, rtol=1e-4, atol=1e-4)


def test_vector_file_round_trip_and_hidden_size_check(tmp_path: Path, stories260k: LoadedModel) -> None:
    vector = extract_vector(stories260k, "sad", PAIRS, lambda t: tokens(stories260k, t))
    path = tmp_path / "sad.safetensors"
    save_vector(vector, path)
    loaded = load_vector(path)
    assert torch.equal(loaded.directions, vector.directions)
    assert (loaded.model_id, loaded.method, loaded.pairs_hash, loaded.layers) == (
        vector.model_id,
        "mean_diff",
        vector.pairs_hash,
        vector.layers,
    )
    with pytest.raises(SteerLabError, match=r"hidden size 64.*hidden size 128"):
        loaded.check_fits(128, "raincandy-u/TinyStories-656K", "file")
    with pytest.raises(SteerLabError, match="no direction for layer 7"):
        loaded.for_layer(7)


def test_unreadable_vector_file_is_one_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tensor file")
    with pytest.raises(SteerLabError, match="not a readable safetensors vector file"):
        load_vector(bad)
    one = SteeringVector("x", torch.ones(1, 4), (0,))
    assert SteeringVector.from_bytes(one.to_bytes(), "mem").hidden_size == 4
