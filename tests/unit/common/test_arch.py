"""Architecture table: the right modules, with sensible shapes, for every supported model type."""

from __future__ import annotations

import pytest
import torch

from tasks.common import arch

D_MODEL = 64


@pytest.fixture(scope="module")
def tiny_models(tiny_dirs):
    from transformers import AutoModel, AutoModelForCausalLM

    return {
        "gpt2": AutoModelForCausalLM.from_pretrained(tiny_dirs["gpt2"]).eval(),
        "llama": AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval(),
        "bert": AutoModel.from_pretrained(tiny_dirs["bert"]).eval(),
    }


def test_gpt2_modules_are_the_named_ones(tiny_models):
    # gpt2: wte, h, h[i].mlp, h[i].attn, h[i].mlp.c_proj, ln_f, lm_head, from the LM model or its base.
    model = tiny_models["gpt2"]
    body = model.transformer
    for m in (model, body):
        assert arch.embedding(m) is body.wte
        assert arch.layers(m) is body.h and arch.num_layers(m) == 2
        assert arch.mlp(m, 1) is body.h[1].mlp and arch.attention(m, 0) is body.h[0].attn
        assert arch.mlp_out_proj(m, -1) is body.h[1].mlp.c_proj
        assert arch.final_norm(m) is body.ln_f
    assert arch.lm_head(model) is model.lm_head


def test_llama_modules_are_the_named_ones(tiny_models):
    # llama: embed_tokens, layers, mlp, self_attn, mlp.down_proj, norm, lm_head.
    model = tiny_models["llama"]
    body = model.model
    assert arch.embedding(model) is body.embed_tokens
    assert arch.mlp(model, 0) is body.layers[0].mlp and arch.attention(model, 1) is body.layers[1].self_attn
    assert arch.mlp_out_proj(model, 1) is body.layers[1].mlp.down_proj
    assert arch.final_norm(model) is body.norm and arch.lm_head(model) is model.lm_head


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_shapes_make_sense(tiny_models, name):
    # Embedding is (vocab, d_model); MLP and attention outputs are (batch, seq, d_model); the MLP output
    # projection maps d_ff -> d_model; the LM head maps d_model -> vocab.
    model = tiny_models[name]
    vocab = model.config.vocab_size
    assert arch.embedding(model).weight.shape == (vocab, D_MODEL)
    seen = {}
    hooks = [
        arch.mlp(model, 1).register_forward_hook(lambda mod, args, out: seen.setdefault("mlp", out)),
        arch.attention(model, 0).register_forward_hook(lambda mod, args, out: seen.setdefault("attn", out)),
    ]
    try:
        with torch.no_grad():
            model(torch.tensor([[5, 6, 7]]))
    finally:
        for hook in hooks:
            hook.remove()
    attn = seen["attn"][0] if isinstance(seen["attn"], tuple) else seen["attn"]
    assert seen["mlp"].shape == attn.shape == (1, 3, D_MODEL)
    proj = arch.mlp_out_proj(model, 0)
    x = torch.zeros(1, 128 if name != "gpt2" else 4 * D_MODEL)
    assert proj(x).shape == (1, D_MODEL)
    if name != "bert":
        assert arch.lm_head(model).out_features == vocab
        assert tuple(arch.final_norm(model).weight.shape) == (D_MODEL,)


def test_bert_has_no_final_norm_or_head_and_says_so(tiny_models):
    # Post-LN BERT: no final norm; the base BertModel has no LM head. Both errors explain.
    model = tiny_models["bert"]
    assert arch.mlp(model, 0) is model.encoder.layer[0].output
    assert arch.mlp_out_proj(model, 0) is model.encoder.layer[0].output.dense
    with pytest.raises(arch.UnsupportedArchitectureError, match="'bert' has no final_norm"):
        arch.final_norm(model)
    with pytest.raises(arch.UnsupportedArchitectureError, match="base model without an LM head"):
        arch.lm_head(model)


def test_errors_name_the_problem(tiny_models):
    # Unknown architectures list the supported ones; out-of-range layers give the layer count.
    class Config:
        model_type = "mamba"

    class Fake(torch.nn.Module):
        config = Config()

    with pytest.raises(arch.UnsupportedArchitectureError, match=r"'mamba'.*supported model types: bert, gemma, gpt2"):
        arch.layers(Fake())
    with pytest.raises(IndexError, match="layer index 2 out of range for a model with 2 layers"):
        arch.mlp(tiny_models["gpt2"], 2)
    with pytest.raises(ValueError, match="give a layer index"):
        arch.module_name(tiny_models["gpt2"], "mlp")


_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)
_EXTRA = {
    "gptj": dict(rotary_dim=8),
    "opt": dict(ffn_dim=64, word_embed_proj_dim=32),
    "gemma": dict(head_dim=16, num_key_value_heads=2),
    "qwen3": dict(head_dim=16, num_key_value_heads=2),
}


@pytest.mark.parametrize("model_type", sorted(arch.ARCHS))
def test_every_table_row_matches_its_architecture(model_type):
    # For each row, every site resolves on a tiny random model (with head and base), and module_name
    # names that same module in named_modules(); missing sites raise the table's error.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config = AutoConfig.for_model(model_type, **_SMALL, **_EXTRA.get(model_type, {}))
    auto = AutoModelForMaskedLM if model_type in ("bert", "roberta") else AutoModelForCausalLM
    model = auto.from_config(config)
    for m in (model, model.base_model):
        names = dict(m.named_modules())
        for site in arch.SITES:
            if site == "lm_head" and m is model.base_model:
                continue
            i = 1 if site in ("layer", "mlp", "attention", "mlp_out_proj") else None
            if getattr(arch.ARCHS[model_type], "lm_head" if site == "lm_head" else site, "x") is None:
                with pytest.raises(arch.UnsupportedArchitectureError):
                    arch.module_name(m, site, i)
                continue
            module = names[arch.module_name(m, site, i)]
            getter = {"layer": arch.layer}.get(site, getattr(arch, site))
            assert (getter(m, i) if i is not None else getter(m)) is module
    assert arch.num_layers(model) == 2
