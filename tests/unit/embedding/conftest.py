"""Shared set-up for the sensitivity unit tests: one torch thread (the ops are tiny; extra threads only
contend on a shared 2-core machine), seeded global RNGs."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def build_tiny_bert(path, hidden=32, layers=2, positions=64, seed=0):
    """A randomly initialised BertModel with a WordPiece tokenizer trained on the synthetic reviews,
    saved under `path` (what tasks.common's "tiny-bert" is, smaller; no network)."""
    import itertools

    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from tasks.embedding.data import synthetic_reviews

    corpus = [t for t, _ in itertools.islice(synthetic_reviews(123), 400)]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=200, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]", model_max_length=positions)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=positions,
                        pad_token_id=tok.token_to_id("[PAD]"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """(model, tokenizer) of a tiny BERT built in this session, read-only by convention."""
    from transformers import AutoModel, AutoTokenizer

    path = build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
