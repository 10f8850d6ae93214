"""`nmt.fast.int8`: a search's 8-bit weight products against F.linear, kept packs, and the
probe of torch's private int8 operators with its fallback."""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F

from nmt.fast import int8
from nmt.model.operations import PLAIN

from conftest import fast_only


@fast_only
def test_int8_products_are_close_to_fp32_ones():
    torch.manual_seed(7)
    weight = torch.randn(128, 256) * 0.05
    x = torch.randn(40, 256)
    exact = F.linear(x, weight)
    with torch.no_grad():
        approx = int8.products().linear(x, weight)
    assert not torch.equal(approx, exact)
    assert (approx - exact).abs().max() < 0.03 * exact.abs().max()


@fast_only
def test_int8_products_pack_once_and_keep_the_pack():
    """A translator's products keep their packs for as long as they live (so the weights must
    not change meanwhile: shown here by changing them); new products see the new weights;
    small weights and products that need a gradient stay F.linear."""
    torch.manual_seed(9)
    weight = torch.nn.Parameter(torch.randn(96, 80))
    small = torch.randn(8, 80)
    x = torch.randn(5, 80)
    with torch.no_grad():
        kept = int8.products()
        first = kept.linear(x, weight)
        assert torch.allclose(first, F.linear(x, weight), atol=0.05 * first.abs().max())
        weight.mul_(2)
        assert torch.equal(kept.linear(x, weight), first)  # the pack of the old weights
        assert torch.allclose(int8.products().linear(x, weight), 2 * first,
                              atol=0.1 * first.abs().max())
        assert torch.equal(kept.linear(x, small), F.linear(x, small))
    assert torch.equal(kept.linear(x, weight), F.linear(x, weight))  # grad mode: exact


@fast_only
def test_the_probe_falls_back_to_plain_products(monkeypatch, caplog):
    """Where torch lacks (or breaks) the int8 operators, the probe says so once and a search's
    products are the plain ones, with the same results."""

    def broken(*args, **kwargs):
        raise RuntimeError("operator not available")

    int8._works.cache_clear()
    monkeypatch.setattr(int8._PackedInt8, "__init__", broken)
    try:
        assert not int8.available()
        assert not int8.available()  # asked again: the answer is kept, not re-probed
        warnings = [r.message for r in caplog.records if "not available" in r.message]
        assert len(warnings) == 1, warnings
        assert int8.products() is PLAIN
    finally:
        int8._works.cache_clear()


@fast_only
def test_the_probe_passes_where_the_operators_work():
    if platform.machine() in ("x86_64", "AMD64"):
        assert int8.available()  # fbgemm ships with torch's CPU builds on x86
