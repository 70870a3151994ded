import pytest
import torch

from invemb.backbone.hf import BackboneConfig, HFBackbone
from invemb.em.model import HeadConfig, TokenEmbeddingModel, TokenHead, build_head, load_head, save_head, word_start_table


@pytest.mark.parametrize("kind", ["mlp", "attention", "transformer", "bind"])
def test_head_shapes_norm_and_mean_pool_init(kind):
    torch.manual_seed(0)
    cfg = HeadConfig.preset("tiny", head=kind, hidden=16, vocab_size=50)
    head = TokenHead(cfg).eval()
    states = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    out = head(pooled, states, mask)
    assert out.embedding.shape == (3, cfg.embed_dim) and out.reconstruction.shape == (3, 16)
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(3))
    # every aggregator starts out as mean pooling
    torch.testing.assert_close(out.aggregated, pooled, rtol=1e-5, atol=1e-5)
    assert head.last_projection.bias is None


@pytest.mark.parametrize("kind", ["transformer", "bind"])
def test_order_aware_heads_see_order_after_perturbation(kind):
    torch.manual_seed(0)
    head = TokenHead(HeadConfig.preset("tiny", head=kind, hidden=16, dropout=0.0, vocab_size=50))
    for p in head.parameters():
        p.data += torch.randn_like(p) * 0.1
    head.eval()
    states = torch.randn(1, 4, 16)
    mask = torch.ones(1, 4, dtype=torch.bool)
    swapped = states[:, [1, 0, 2, 3]]
    a, b = head(states.mean(1), states, mask).embedding, head(swapped.mean(1), swapped, mask).embedding
    assert (a - b).abs().max() > 1e-3
    mlp = TokenHead(HeadConfig.preset("tiny", head="mlp", hidden=16)).eval()
    torch.testing.assert_close(mlp(states.mean(1)).embedding, mlp(swapped.mean(1)).embedding)


@pytest.mark.parametrize("kind", ["mlp", "bind"])
def test_skip_head_starts_with_the_backbones_cosines(kind):
    torch.manual_seed(0)
    cfg = HeadConfig.preset("tiny", head=kind, hidden=16, vocab_size=50)  # embed_dim 32 >= 16: the skip keeps norms exactly
    assert cfg.skip
    head = TokenHead(cfg).eval()
    pooled = torch.randn(6, 16)
    states, mask = pooled[:, None].expand(6, 3, 16).contiguous(), torch.ones(6, 3, dtype=torch.bool)
    z = head(pooled, states, mask).embedding
    unit = torch.nn.functional.normalize(pooled, dim=-1)
    torch.testing.assert_close(z @ z.T, unit @ unit.T, rtol=1e-5, atol=1e-5)
    # training moves it from there: the MLP's last layer starts at zero but gets a gradient
    z.sum().backward()
    assert head.last_projection.weight.grad.abs().sum() > 0


def test_heads_saved_before_the_skip_load_without_it(tmp_path):
    old = {k: v for k, v in HeadConfig.preset("tiny", hidden=16, positions="tokens").to_dict().items() if k != "skip"}
    cfg = HeadConfig.from_dict(old)
    assert not cfg.skip
    head = TokenHead(cfg)
    save_head(head, tmp_path)
    again = load_head(tmp_path)
    assert again.skip is None
    x = torch.randn(2, 16)
    torch.testing.assert_close(again(x, x[:, None], torch.ones(2, 1, dtype=torch.bool)).embedding,
                               head.eval()(x, x[:, None], torch.ones(2, 1, dtype=torch.bool)).embedding)


@pytest.mark.parametrize("skip", [False, True])
def test_mlp_head_exports_to_sentence_transformers_with_or_without_skip(tmp_path, tiny_bert_dir, skip):
    from sentence_transformers import SentenceTransformer

    from invemb.em.st_export import export

    torch.manual_seed(0)
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    head = build_head(HeadConfig.preset("tiny", head="mlp", skip=skip), backbone)
    for p in head.parameters():  # off the zero init, so the MLP path counts
        p.data += torch.randn_like(p) * 0.1
    model = TokenEmbeddingModel(backbone, head).eval()
    export(model, tmp_path / "st")
    modules = (tmp_path / "st/modules.json").read_text()
    assert ("EMHeadModule" in modules) == skip  # without a skip: stock modules only
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    texts = ["bank", "the cat sat on the mat"]
    torch.testing.assert_close(st.encode(texts, convert_to_tensor=True), model.encode(texts), rtol=1e-5, atol=1e-5)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="unknown head"):
        TokenHead(HeadConfig(head="lstm"))


def test_save_load_identical(tmp_path, tiny_bert_dir):
    torch.manual_seed(0)
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    head = build_head(HeadConfig.preset("tiny"), backbone)
    model = TokenEmbeddingModel(backbone, head).eval()
    save_head(head, tmp_path)
    again = TokenEmbeddingModel(backbone, load_head(tmp_path)).eval()
    texts = ["bank", "new york", "the cat sat on the mat"]
    torch.testing.assert_close(model.encode(texts), again.encode(texts))


def test_encode_in_context_separates_occurrences(tiny_bert_dir):
    torch.manual_seed(0)
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    model = TokenEmbeddingModel(backbone, build_head(HeadConfig.preset("tiny"), backbone)).eval()
    a = model.encode_in_context("we sat on the river bank", "bank")
    b = model.encode_in_context("the bank gave a loan", "bank")
    assert a.shape == (model.dim,) and float(a @ b) < 0.9999
    with pytest.raises(ValueError, match="not found"):
        model.encode_in_context("no such word", "bank")
    # A word is matched as a whole word: the "bank" inside "banker" is skipped for the real one.
    torch.testing.assert_close(model.encode_in_context("the banker sat by the bank", "bank"),
                               model.encode_in_context("the banker sat by the bank", (22, 26)))
    with pytest.raises(ValueError, match="not found as whole words"):
        model.encode_in_context("the banker sat", "bank")


class _ArrayCache:
    """The three reads head_forward makes of a FeatureCache, over in-memory ragged token states."""

    def __init__(self, states: list[torch.Tensor]):
        self.states = states

    def lengths(self, rows):
        import numpy as np

        return np.array([len(self.states[r]) for r in rows])

    def pooled(self, rows):
        return torch.stack([self.states[r].mean(0) for r in rows])

    def tokens(self, rows, max_tokens=0):
        T = min(max(len(self.states[r]) for r in rows), max_tokens or 10**9)
        out, mask = torch.zeros(len(rows), T, self.states[0].shape[1]), torch.zeros(len(rows), T, dtype=torch.bool)
        for b, r in enumerate(rows):
            n = min(len(self.states[r]), T)
            out[b, :n], mask[b, :n] = self.states[r][:n], True
        return out, mask


@pytest.mark.parametrize("kind", ["attention", "transformer", "bind"])
def test_length_buckets_give_the_same_vectors_in_the_same_order(kind):
    """head_forward runs a token head once per length bucket; rows come back in the given order,
    equal to one padded call, and gradients flow through the regrouping."""
    import numpy as np

    from invemb.em.train import _head_forward, head_forward

    g = torch.Generator().manual_seed(0)
    lengths = [1, 3, 17, 2, 9, 4, 30, 5, 1]
    cache = _ArrayCache([torch.randn(n, 16, generator=g) for n in lengths])
    torch.manual_seed(0)
    head = TokenHead(HeadConfig(head=kind, hidden=16, proj_hidden=32, embed_dim=8, agg_heads=2, agg_ff=32,
                                max_tokens=32, dropout=0.0))
    for p in head.parameters():  # move off the mean-pool initialisation so positions matter
        p.data.add_(0.1 * torch.randn(p.shape, generator=g))
    rows = np.array([6, 0, 4, 2, 8, 1, 3, 7, 5])
    bucketed, single = head_forward(head, cache, rows), _head_forward(head, cache, rows)
    for a, b in zip(bucketed, single):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    (bucketed.embedding[2].sum() + bucketed.reconstruction[2].sum()).backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


def test_bind_swap_moves_the_vector_by_the_bound_difference():
    """Two tokens trading places move the bind aggregator's output by O((V(LN a) - V(LN b)) * (P_j - P_i)) / n."""
    from invemb.em.model import BindAggregator

    torch.manual_seed(0)
    agg = BindAggregator(HeadConfig.preset("tiny", head="bind", hidden=8, bind_width=6, vocab_size=50))
    torch.nn.init.normal_(agg.out.weight)
    states = torch.randn(1, 4, 8)
    mask = torch.ones(1, 4, dtype=torch.bool)
    swapped = states[:, [2, 1, 0, 3]]
    v = agg.value(agg.norm(states[0]))  # (4, W)
    expected = agg.out.weight @ ((v[2] - v[0]) * (agg.pos[0] - agg.pos[2])) / 4
    pos = torch.arange(4).unsqueeze(0)
    torch.testing.assert_close(agg(swapped, mask, pos)[0][0] - agg(states, mask, pos)[0][0], expected, rtol=1e-4, atol=1e-5)


def test_word_positions_give_every_piece_its_words_position(tiny_bert_dir):
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    tok = backbone.tokenizer
    table = word_start_table(tok)
    assert table.shape == (len(tok),)
    assert not table[tok.convert_tokens_to_ids("##e")] and table[tok.convert_tokens_to_ids("bank")] and table[tok.cls_token_id]
    head = build_head(HeadConfig.preset("tiny"), backbone)
    batch = backbone.tokenize(["the banker sat", "the bank sat"])
    assert tok.convert_ids_to_tokens(batch["input_ids"][0].tolist()) == ["[CLS]", "the", "bank", "##e", "##r", "sat", "[SEP]"]
    pos = head.positions(batch["attention_mask"].bool(), batch["input_ids"])
    assert pos[0].tolist() == [0, 1, 2, 2, 2, 3, 4]  # "sat" keeps position 3 whatever "banker" splits into
    assert pos[1, :5].tolist() == [0, 1, 2, 3, 4]
    # without token ids (or with a token-position head) every token counts
    assert head.positions(batch["attention_mask"].bool(), None)[0].tolist() == list(range(7))


def test_word_position_bind_head_round_trips_save_load_and_sentence_transformers(tmp_path, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    from invemb.em.st_export import export

    torch.manual_seed(0)
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    head = build_head(HeadConfig.preset("tiny", head="bind"), backbone)
    for p in head.parameters():  # off the zero init, so positions count
        p.data += torch.randn_like(p) * 0.1
    model = TokenEmbeddingModel(backbone, head).eval()
    texts = ["the banker sat on the mat", "a dog runs fast"]
    vecs = model.encode(texts)
    token_positions = TokenHead(head.cfg.replace(positions="tokens"))
    token_positions.load_state_dict({k: v for k, v in head.state_dict().items() if k != "word_start"})
    assert not torch.allclose(TokenEmbeddingModel(backbone, token_positions.eval()).encode(texts)[0], vecs[0], atol=1e-4)
    save_head(head, tmp_path / "head")
    again = load_head(tmp_path / "head")
    assert torch.equal(again.word_start, head.word_start)
    torch.testing.assert_close(TokenEmbeddingModel(backbone, again).encode(texts), vecs)
    export(model, tmp_path / "st")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    torch.testing.assert_close(st.encode(texts, convert_to_tensor=True), vecs, rtol=1e-5, atol=1e-5)


def test_word_positions_need_the_tokenizer_size():
    with pytest.raises(ValueError, match="vocab_size"):
        TokenHead(HeadConfig.preset("tiny", head="bind", hidden=16))
    with pytest.raises(ValueError, match="positions must be"):
        TokenHead(HeadConfig.preset("tiny", head="bind", hidden=16, vocab_size=50, positions="chars"))


def _perturbed_order_model(tiny_bert_dir, order_dims=8):
    torch.manual_seed(0)
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    head = build_head(HeadConfig.preset("tiny", order_dims=order_dims, dropout=0.0), backbone)
    for p in head.parameters():  # off the zero init, so the sub-space is not all zero
        p.data += torch.randn_like(p) * 0.1
    return TokenEmbeddingModel(backbone, head).eval()


def test_order_subspace_is_zero_for_single_words_and_carries_swaps(tiny_bert_dir):
    model = _perturbed_order_model(tiny_bert_dir)
    E = model.head.cfg.embed_dim
    assert model.dim == E + 8
    assert model.head.special[model.backbone.tokenizer.cls_token_id] and not model.head.special[5]
    words = model.encode(["bank", "banker", "cat"])  # one position each ("banker" is two pieces on the tiny vocab)
    assert words.shape == (3, E + 8)
    torch.testing.assert_close(words[:, E:], torch.zeros(3, 8))
    # the same token states in another order (the backbone itself is contextual, so swap at the head)
    tok = model.backbone.tokenizer
    ids = torch.tensor([[tok.cls_token_id, *tok.convert_tokens_to_ids(["dog", "chased", "cat"]), tok.sep_token_id]])
    states, mask = torch.randn(1, 5, model.backbone.hidden), torch.ones(1, 5, dtype=torch.bool)
    order = [0, 3, 2, 1, 4]
    a = model.head(states.mean(1), states, mask, ids).embedding[0]
    b = model.head(states.mean(1), states[:, order], mask, ids[:, order]).embedding[0]
    assert (a[E:] - b[E:]).abs().max() > 1e-3  # the swap moves the order sub-space ...
    torch.testing.assert_close(a[:E] / a[:E].norm(), b[:E] / b[:E].norm(), rtol=1e-5, atol=1e-5)  # ... and only it
    # so the order sub-space cannot change how a sentence ranks single words
    sentence = model.encode(["the dog chased the cat"])[0]
    sub = torch.nn.functional.normalize(sentence[:E], dim=-1)
    torch.testing.assert_close((words @ sentence).argsort(), (words[:, :E] @ sub).argsort())


def test_order_subspace_round_trips_save_load_and_export(tmp_path, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    from invemb.em.st_export import export

    model = _perturbed_order_model(tiny_bert_dir)
    save_head(model.head, tmp_path / "head")
    again = TokenEmbeddingModel(model.backbone, load_head(tmp_path / "head")).eval()
    texts = ["bank", "the cat sat on the mat", "the mat sat on the cat"]
    torch.testing.assert_close(again.encode(texts), model.encode(texts))
    export(model, tmp_path / "st")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    assert st.get_embedding_dimension() == model.dim
    torch.testing.assert_close(st.encode(texts, convert_to_tensor=True), model.encode(texts), rtol=1e-5, atol=1e-5)


def test_order_subspace_needs_the_bind_head():
    with pytest.raises(ValueError, match="order_dims"):
        TokenHead(HeadConfig.preset("tiny", head="transformer", order_dims=4, vocab_size=50))


def test_fixed_order_share_splits_the_norm_of_sentences_not_of_words(tiny_bert_dir):
    torch.manual_seed(0)
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    head = build_head(HeadConfig.preset("tiny", order_dims=8, order_share=0.2, dropout=0.0), backbone)
    for p in head.parameters():
        p.data += torch.randn_like(p) * 0.1
    model = TokenEmbeddingModel(backbone, head).eval()
    E = head.cfg.embed_dim
    z = model.encode(["bank", "banker", "the cat sat on the mat", "a b"])
    torch.testing.assert_close(z[:2, E:].norm(dim=-1), torch.zeros(2))
    torch.testing.assert_close(z[2:, E:].norm(dim=-1) ** 2, torch.full((2,), 0.2))
    with pytest.raises(ValueError, match="order_share"):
        TokenHead(HeadConfig.preset("tiny", order_share=0.2, vocab_size=50))
