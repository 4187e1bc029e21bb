"""document_mask: the mask and segment starts by hand, attention equal to attending each document
alone (GQA), the varlen boundaries, and in a model: a document after its BOS as if alone."""

import torch
import torch.nn.functional as F
from golf_plugins.document_mask import DocumentMask, DocumentMaskedAttention, cu_seqlens, document_mask

import golfcore as golf
from tests.helpers import build


def test_mask_by_hand():
    tokens = torch.tensor([[5, 1, 7, 1]])
    expected = torch.tensor(
        [[1, 0, 0, 0],
         [0, 1, 0, 0],
         [0, 1, 1, 0],
         [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(document_mask(tokens, 1)[0, 0], expected)


def test_cu_seqlens_static_and_padded():
    tokens = torch.tensor([[5, 1, 7, 1], [1, 2, 3, 4]])
    assert cu_seqlens(tokens, 1).tolist() == [0, 1, 3, 4, 8, 8, 8, 8, 8]  # starts 0,1,3 | 4 (row 2, a BOS), then 8s


def test_attention_equals_each_document_alone():
    torch.manual_seed(0)
    tokens = torch.tensor([[4, 4, 1, 4, 4, 4, 1, 4], [1, 4, 4, 4, 4, 4, 4, 4]])
    q, k, v = torch.randn(2, 8, 4, 16), torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16)
    out = DocumentMaskedAttention(bos_id=1)(q, k, v, golf.ForwardContext(tokens))
    for b, segments in ((0, [(0, 2), (2, 6), (6, 8)]), (1, [(0, 8)])):
        for s, e in segments:
            alone = F.scaled_dot_product_attention(
                q[b:b + 1, s:e].transpose(1, 2), k[b:b + 1, s:e].transpose(1, 2), v[b:b + 1, s:e].transpose(1, 2),
                is_causal=True, enable_gqa=True,
            ).transpose(1, 2)
            torch.testing.assert_close(out[b:b + 1, s:e], alone)
    # without a BOS it is plain causal attention
    plain = F.scaled_dot_product_attention(q[1:].transpose(1, 2), k[1:].transpose(1, 2), v[1:].transpose(1, 2), is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out[1:], plain.transpose(1, 2))


def test_wired_a_document_sees_nothing_before_its_bos():
    _, _, model = build(DocumentMask)
    _, _, plain = build()
    assert all(isinstance(b.kernel, DocumentMaskedAttention) for b in model.blocks)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():  # blocks start as the identity: perturb everything so attention matters
        for m in (model, plain):
            torch.manual_seed(0)
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    doc = torch.tensor([[1, 7, 9, 3, 5, 2]])
    row = torch.cat((torch.tensor([[4, 8, 6, 9]]), doc), dim=1)  # another document's tail, then the BOS
    with torch.no_grad():
        alone, packed = model.logits(doc), model.logits(row)[:, 4:]
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)  # RoPE is relative: only rounding differs
        assert (plain.logits(row)[:, 4:] - plain.logits(doc)).abs().max() > 1e-3  # the control: causal attention leaks
