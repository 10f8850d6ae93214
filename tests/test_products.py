"""`nmt.fast.products`: packed, 8-bit and deferred-gradient products against F.linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nmt.fast import products
from nmt.fast.products import PLAIN

from conftest import fast_only


def test_a_loops_packed_products_equal_plain_ones_and_follow_weight_updates():
    """Each loop packs the weights as they are then: fused Adam updates them in place without
    bumping their version counter, and a later loop still sees the update."""
    torch.manual_seed(6)
    weight = torch.nn.Parameter(torch.randn(96, 80))
    x = torch.randn(5, 80)
    adam = torch.optim.Adam([weight], lr=0.1, fused=True)
    weight.grad = torch.ones_like(weight)
    for update in (lambda: None, adam.step, lambda: weight.data.mul_(2)):
        update()
        with torch.no_grad():
            loop = products.for_loop()
            assert torch.allclose(loop.linear(x, weight), F.linear(x, weight), atol=1e-5)


@fast_only
def test_inference_products_pack_once_and_keep_the_pack():
    """A translator's products keep their packs for as long as they live (so the weights must
    not change meanwhile: shown here by changing them); new products see the new weights."""
    torch.manual_seed(9)
    weight = torch.nn.Parameter(torch.randn(96, 80))
    x = torch.randn(5, 80)
    with torch.no_grad():
        kept = products.for_inference()
        first = kept.linear(x, weight)
        assert torch.allclose(first, F.linear(x, weight), atol=1e-5)
        weight.mul_(2)
        assert torch.equal(kept.linear(x, weight), first)  # the pack of the old weights
        assert torch.allclose(products.for_inference().linear(x, weight), 2 * first, atol=1e-4)
        made = []
        assert kept.kept(weight, "table", lambda: made.append(1) or 7) == 7
        assert kept.kept(weight, "table", lambda: made.append(1) or 8) == 7 and made == [1]
    assert PLAIN.kept(weight, "table", lambda: 7) is None  # plain products keep nothing


@fast_only
def test_int8_products_are_close_to_fp32_ones():
    torch.manual_seed(7)
    weight = torch.randn(128, 256) * 0.05
    x = torch.randn(40, 256)
    exact = F.linear(x, weight)
    with torch.no_grad():
        approx = products.for_inference(int8=True).linear(x, weight)
    assert not torch.equal(approx, exact)
    assert (approx - exact).abs().max() < 0.03 * exact.abs().max()


def test_deferred_gradient_equals_the_per_step_sum():
    """A weight used at 4 steps gets one gradient equal to autograd's per-step sum."""
    torch.manual_seed(8)
    weight = torch.nn.Parameter(torch.randn(64, 64) / 8)
    h0 = torch.randn(3, 64)

    def run(linear) -> torch.Tensor:
        weight.grad = None
        h = h0
        for _ in range(4):
            h = torch.tanh(linear(h, weight))
        h.sum().backward()
        return weight.grad.clone()

    assert torch.allclose(run(products.for_loop().linear), run(F.linear), atol=1e-5)


def test_private_operators_are_probed_and_fall_back_to_plain_products(monkeypatch, caplog):
    """Where torch lacks (or breaks) the oneDNN or int8 operators, the probe says so once and
    products are the plain, supported ones, with the same results."""

    def broken(*args, **kwargs):
        raise RuntimeError("operator not available")

    for probe in (products.onednn_packing, products.int8_products):
        probe.cache_clear()
    monkeypatch.setattr(products._Packed, "__init__", broken)
    monkeypatch.setattr(products._PackedInt8, "__init__", broken)
    try:
        assert not products.onednn_packing() and not products.int8_products()
        assert not products.onednn_packing()  # asked again: the answer is kept, not re-probed
        warnings = [r.message for r in caplog.records if "not available" in r.message]
        assert len(warnings) == 2, warnings
        torch.manual_seed(3)
        weight, x = torch.randn(96, 80), torch.randn(5, 80)
        with torch.no_grad():
            for made in (products.for_loop(), products.for_inference(False),
                         products.for_inference(True)):
                assert torch.equal(made.linear(x, weight), F.linear(x, weight))
    finally:
        for probe in (products.onednn_packing, products.int8_products):
            probe.cache_clear()


def test_the_probes_pass_where_the_operators_work():
    import platform

    assert products.onednn_packing() == torch.backends.mkldnn.is_available()
    if platform.machine() in ("x86_64", "AMD64"):
        assert products.int8_products()  # fbgemm ships with torch's CPU builds on x86
