"""Variants: add, edit and delete variants and the vectors they use.

The steering-edit editor is built from each method's declared settings (one pydantic
declaration per method gives its validation, stored form and these fields), so a method
added to the engine's registry, or installed as a plugin, shows up here without changes
to this page.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.common import attempt, chosen_experiment, flash, identity, page_header, store, succeeded
from dashboard.text import md
from dashboard.widgets import field_widget
from service.catalog import load_spec
from service.edit_scale import draft_scales
from service.editing import (
    NULL_ARMS,
    VariantSpec,
    delete_variant,
    delete_vector,
    model_facts,
    save_variant,
    save_vector,
    steering_methods,
    upload_vector,
)
from service.summary import generation_counts


def _flattened(settings: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            out[key] = value
    return out


page_header("Variants")
name = chosen_experiment("owner", "editing variants and vectors")
who = identity()

spec = load_spec(store(), name)
facts = attempt(lambda: model_facts(spec.model))
if facts is None:
    st.stop()
counts = generation_counts(store(), name)
st.caption(
    f"Experiment **{md(name)}** · model {md(spec.model)} · {facts.n_layers} layers · hidden size {facts.hidden_size}"
)


def _done(message: str, form_prefix: str, select: tuple[str, str] | None = None) -> None:
    """After a save or delete: forget the form's typed values, pick what to show next, rerun.

    Widget values are kept per key, so without this a saved "(new variant)" form would
    still show the old values and a deleted variant would still offer "Delete".
    """
    for key in [
        k for k in st.session_state if isinstance(k, str) and (k.endswith(form_prefix) or f"{form_prefix}:" in k)
    ]:
        del st.session_state[key]
    if select is not None:
        st.session_state[f"_next:{select[0]}"] = select[1]
    flash(message)
    st.rerun()


for picker in ("variant_choice", "vector_choice"):  # set before the pickers are drawn
    if f"_next:{picker}" in st.session_state:
        st.session_state[picker] = st.session_state.pop(f"_next:{picker}")


def describe(variant: Any) -> str:
    bits = [f"system: {variant.system!r}"] if variant.system else []
    bits += [f"prefix: {variant.prefix!r}"] if variant.prefix else []
    for i in variant.interventions:
        settings = ", ".join(f"{k}={v}" for k, v in i.to_dict().items() if k != "method")
        bits.append(f"{i.name}({settings})")
    bits += [f"null arms: {', '.join(variant.null_arms)}"] if variant.null_arms else []
    return "; ".join(bits) or "plain model"


table_slot = st.container()  # drawn last, after any change below

# --- variant editor -----------------------------------------------------------------
st.subheader("Add or edit a variant")
choice = st.selectbox("Variant", ["(new variant)"] + [v.name for v in spec.variants], key="variant_choice")
existing = next((v for v in spec.variants if v.name == choice), None)


def show_null_arm(arm: VariantSpec) -> None:
    """A null arm is derived from its variant's null_arms, so it is shown here, not edited or deleted on its own."""
    real = arm.control_of
    st.caption(f"Null arm of '{md(real)}': change {md(real)}'s null arms to change or remove it.")
    st.caption(f"{md(arm.description)} Definition: {md(describe(arm))}.")
    if st.button(f"Edit '{md(real)}'", key=f"edit_real:{name}:{arm.name}"):
        st.session_state["_next:variant_choice"] = real
        st.rerun()


def edit_variant(existing: VariantSpec | None, n_layers: int) -> None:
    """The form of a new variant, or of a declared one: its kind, name, settings, and Save and Delete."""
    k = f"{name}:{existing.name if existing else '(new variant)'}"  # widget keys per edited variant
    kinds = ["baseline", "prompting", "steering", "lora", "finetune"]
    kind = st.radio(
        "Kind", kinds, index=kinds.index(existing.kind) if existing else 2, horizontal=True, key=f"kind:{k}"
    )
    variant_name = st.text_input("Name", value=existing.name if existing else "", key=f"name:{k}")
    raw: dict[str, Any] = {"name": variant_name, "kind": kind}
    if kind == "prompting":
        raw["system"] = st.text_area(
            "System prompt (chat models)", value=existing.system if existing else "", key=f"system:{k}"
        )
        raw["prefix"] = st.text_input(
            "Prefix added before each prompt", value=existing.prefix if existing else "", key=f"prefix:{k}"
        )
    elif kind in ("lora", "finetune"):
        prior_train = existing.train.to_dict() if existing is not None and existing.train is not None else {}
        sources = ["(the experiment's training examples)"] + [v.name for v in spec.vectors if v.pairs]
        source = st.selectbox(
            "Train on",
            sources,
            index=sources.index(prior_train["examples_from"]) if prior_train.get("examples_from") in sources else 0,
            help="A vector's positive texts, or the training_examples of the experiment file.",
            key=f"train_source:{k}",
        )
        c1, c2, c3 = st.columns(3)
        train: dict[str, Any] = {
            "method": kind,
            "epochs": int(c1.number_input("Epochs", 1, 1000, int(prior_train.get("epochs", 4)), key=f"epochs:{k}")),
            "learning_rate": float(
                c2.number_input(
                    "Learning rate",
                    1e-7,
                    1.0,
                    float(prior_train.get("learning_rate", 0.002 if kind == "lora" else 0.0003)),
                    format="%.6f",
                    key=f"lr:{k}",
                )
            ),
        }
        if kind == "lora":
            train["rank"] = int(c3.number_input("LoRA rank", 1, 1024, int(prior_train.get("rank", 8)), key=f"rank:{k}"))
        if source != sources[0]:
            train["examples_from"] = source
        raw["train"] = train
        st.caption("Trained on a copy of the model when the experiment runs (cached, so a re-run does not retrain).")
    elif kind == "steering":
        methods = steering_methods()
        vector_names = [v.name for v in spec.vectors]
        if not vector_names:
            st.warning("This experiment has no vectors yet: add one below first.")
        # Flattened like the form's fields: a nested setting ('condition': {'applies': ...}) is 'condition.applies'.
        old = [_flattened(i.to_dict()) for i in existing.interventions] if existing else []
        count = int(st.number_input("Stacked edits", 1, 8, max(1, len(old)), key=f"count:{k}"))
        edits = []
        for j in range(count):
            prior = old[j] if j < len(old) else {}
            with st.container(border=True):
                method_names = sorted(methods)
                method = st.selectbox(
                    f"Edit {j + 1}: method",
                    method_names,
                    index=method_names.index(prior.get("method", "add"))
                    if prior.get("method", "add") in method_names
                    else 0,
                    format_func=lambda m: f"{methods[m].title} ({m})",
                    key=f"method:{k}:{j}",
                )
                st.caption(methods[method].summary)
                edit: dict[str, Any] = {"method": method}
                for field in methods[method].fields:
                    value = prior.get(field.name, field.default) if prior.get("method") == method else field.default
                    edit[field.name] = field_widget(
                        field, value, f"{field.name}:{k}:{j}:{method}", vector_names, n_layers
                    )
                edits.append(edit)
        raw["interventions"] = edits
        raw["null_arms"] = st.multiselect(
            "Null arms",
            list(NULL_ARMS),
            default=list(existing.null_arms) if existing else [],
            help="Controls run beside this variant as variants of their own: 'random' replaces each vector by a "
            "random direction with the vector's norm at each layer, 'flipped' by the vector with its sign flipped. "
            "Compare shows whether the real vector beats them.",
            key=f"null_arms:{k}",
        )
        for scale in draft_scales(store(), name, raw):
            text = (
                f"Edit {scale.edit} at layer {scale.layer} adds {scale.ratio:.2g}× the typical hidden-state norm there "
                f"({scale.hidden_norm:.3g})."
            )
            if scale.ratio > 2:
                st.warning(text + " That is far more than steering usually needs: expect broken or empty outputs.")
            else:
                st.caption(text)

    if existing is not None and counts.get(existing.name, 0):
        st.caption(
            f"Saving a changed definition discards the {counts[existing.name]} stored outputs of '{existing.name}' (and their votes)."
        )
    arms = [v.name for v in spec.variants if existing is not None and v.control_of == existing.name]
    if arms:
        st.caption(
            f"Its null arms ({md(', '.join(arms))}) have {sum(counts.get(a, 0) for a in arms)} stored outputs: an "
            "arm removed here, or a change to the edits, discards its outputs, and deleting the variant deletes its "
            "arms; changing only the null arms keeps the variant's own outputs."
        )
    save_col, delete_col = st.columns([1, 1])
    if save_col.button("Save variant", type="primary", key=f"save:{k}"):
        saved = attempt(lambda: save_variant(store(), name, raw, existing.name if existing else None, who))
        if saved is not None:
            _done(f"Saved variant '{md(saved.name)}'.", f":{k}", ("variant_choice", saved.name))
    if (
        existing is not None
        and delete_col.button(f"Delete '{md(existing.name)}'", key=f"delete:{k}")
        and succeeded(partial(delete_variant, store(), name, existing.name, who))
    ):
        _done(f"Deleted variant '{md(existing.name)}'.", f":{k}", ("variant_choice", "(new variant)"))


if existing is not None and existing.control_of:
    show_null_arm(existing)
else:
    edit_variant(existing, facts.n_layers)


# --- vectors ----------------------------------------------------------------------------
st.subheader("Vectors")
vectors_slot = st.container()
pairs_tab, upload_tab = st.tabs(["Contrastive pairs", "Upload a vector file"])
with pairs_tab:
    # Chat pairs and personas are edited in the experiment file: the table holds [positive, negative] pairs only.
    editable = [v.name for v in spec.vectors if v.plain_text_pairs]
    vchoice = st.selectbox("Vector", ["(new vector)", *editable], key="vector_choice")
    current = next((v for v in spec.vectors if v.name == vchoice), None)
    vk = f"{name}:{vchoice}"
    vname = st.text_input("Vector name", value=current.name if current else "", key=f"vname:{vk}")
    c1, c2 = st.columns(2)
    methods_x = ["mean_diff", "pca", "single_pair"]
    vmethod = c1.selectbox(
        "Extraction", methods_x, index=methods_x.index(current.method) if current else 0, key=f"vmethod:{vk}"
    )
    vread = c2.selectbox(
        "Read position",
        ["last", "mean", "answer_mean"],
        index=["last", "mean", "answer_mean"].index(current.read) if current else 0,
        key=f"vread:{vk}",
    )
    table = st.data_editor(
        pd.DataFrame(list(current.pairs) if current else [("", "")], columns=["positive", "negative"]),
        num_rows="dynamic",
        width="stretch",
        key=f"pairs:{vk}",
    )
    if st.button("Save vector", type="primary", key=f"vsave:{vk}"):
        rows = [list(row) for row in table.itertuples(index=False)]  # empty cells as they come (None/NaN)
        if succeeded(lambda: save_vector(store(), name, vname, {"method": vmethod, "read": vread, "pairs": rows}, who)):
            _done(
                f"Saved vector '{md(vname.strip())}'; it is extracted at the next run.",
                f":{vk}",
                ("vector_choice", vname.strip()),
            )
    if (
        current is not None
        and st.button(f"Delete vector '{md(current.name)}'", key=f"vdelete:{vk}")
        and succeeded(partial(delete_vector, store(), name, current.name, who))
    ):
        _done(f"Deleted vector '{md(current.name)}'.", f":{vk}", ("vector_choice", "(new vector)"))
with upload_tab:
    up_name = st.text_input("Vector name", key="upload_vector_name")
    file = st.file_uploader(
        "Vector file: SteerLab or per-layer safetensors, llama.cpp/repeng control-vector GGUF, steering-vectors .pt",
        type=["safetensors", "gguf", "pt"],
        key="upload_vector_file",
    )
    if (
        file is not None
        and st.button("Add vector from file", type="primary")
        and attempt(partial(upload_vector, store(), name, up_name, file.getvalue(), file.name, who)) is not None
    ):
        for key in ("upload_vector_name", "upload_vector_file"):
            st.session_state.pop(key, None)
        flash(f"Added vector '{md(up_name.strip())}'.")
        st.rerun()


# Re-read the experiment: the tables show the result of whatever was saved above.
spec = load_spec(store(), name)
counts = generation_counts(store(), name)
with table_slot:
    st.dataframe(
        pd.DataFrame(
            [
                {"variant": v.name, "kind": v.kind, "definition": describe(v), "generations": counts.get(v.name, 0)}
                for v in spec.variants
            ]
        ),
        hide_index=True,
        width="stretch",
    )

with vectors_slot:
    if spec.vectors:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "vector": v.name,
                        "source": "file"
                        if v.file
                        else f"{v.method} over {v.example_count} {'questions' if v.personas else 'pairs'}, read {v.read}",
                    }
                    for v in spec.vectors
                ]
            ),
            hide_index=True,
            width="stretch",
        )
