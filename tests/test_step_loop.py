"""`nmt.fast.deferred`: packed and int8 products inside a step loop against F.linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nmt.fast.deferred import keep_packs, linear, step_loop

from conftest import fast_only


def test_packed_products_equal_plain_ones_and_follow_weight_updates():
    torch.manual_seed(6)
    weight = torch.nn.Parameter(torch.randn(96, 80))
    x = torch.randn(5, 80)
    # fused Adam updates the weight in place without bumping its version counter
    adam = torch.optim.Adam([weight], lr=0.1, fused=True)
    weight.grad = torch.ones_like(weight)
    for update in (lambda: None, adam.step, lambda: weight.data.mul_(2)):
        update()
        with torch.no_grad(), step_loop():
            assert torch.allclose(linear(x, weight), F.linear(x, weight), atol=1e-5)


@fast_only
def test_keep_packs_reuses_one_pack_until_the_block_ends():
    torch.manual_seed(9)
    weight = torch.nn.Parameter(torch.randn(96, 80))
    x = torch.randn(5, 80)
    with torch.no_grad():
        with keep_packs():
            with step_loop():
                first = linear(x, weight)
            weight.mul_(2)  # not allowed inside the block: shows that the pack is reused
            with keep_packs(), step_loop():  # nested blocks share the outer packs
                assert torch.equal(linear(x, weight), first)
        with step_loop():
            assert torch.allclose(linear(x, weight), 2 * first, atol=1e-4)


@fast_only
def test_int8_products_are_close_to_fp32_ones():
    torch.manual_seed(7)
    weight = torch.randn(128, 256) * 0.05
    x = torch.randn(40, 256)
    exact = F.linear(x, weight)
    with torch.no_grad(), step_loop(int8=True):
        approx = linear(x, weight)
        with step_loop():  # nested loops inherit int8
            inner = linear(x, weight)
    assert not torch.equal(approx, exact)
    assert torch.equal(inner, approx)
    assert (approx - exact).abs().max() < 0.03 * exact.abs().max()


def test_deferred_gradient_equals_the_per_step_sum():
    """A weight used at 4 steps gets one gradient equal to autograd's per-step sum."""
    torch.manual_seed(8)
    weight = torch.nn.Parameter(torch.randn(64, 64) / 8)
    h0 = torch.randn(3, 64)

    def run(loop: bool) -> torch.Tensor:
        weight.grad = None
        h = h0
        with step_loop() if loop else torch.enable_grad():
            for _ in range(4):
                h = torch.tanh(linear(h, weight) if loop else F.linear(h, weight))
        h.sum().backward()
        return weight.grad.clone()

    assert torch.allclose(run(True), run(False), atol=1e-5)


def test_private_operators_are_probed_and_fall_back_to_plain_products(monkeypatch, caplog):
    """Where torch lacks (or breaks) the oneDNN or int8 operators, the probe says so once and
    products are the plain, supported ones, with the same results."""
    from nmt.fast import deferred

    def broken(*args, **kwargs):
        raise RuntimeError("operator not available")

    for probe in (deferred.onednn_packing, deferred.int8_products):
        probe.cache_clear()
    monkeypatch.setattr(deferred._Packed, "__init__", broken)
    monkeypatch.setattr(deferred._PackedInt8, "__init__", broken)
    try:
        assert not deferred.onednn_packing() and not deferred.int8_products()
        assert not deferred.onednn_packing()  # asked again: the answer is kept, not re-probed
        warnings = [r.message for r in caplog.records if "not available" in r.message]
        assert len(warnings) == 2, warnings
        torch.manual_seed(3)
        weight, x = torch.randn(96, 80), torch.randn(5, 80)
        for int8 in (False, True):
            with torch.no_grad(), step_loop(int8=int8):
                assert torch.equal(linear(x, weight), F.linear(x, weight))
    finally:
        for probe in (deferred.onednn_packing, deferred.int8_products):
            probe.cache_clear()


def test_the_probes_pass_where_the_operators_work():
    import platform

    from nmt.fast import deferred

    assert deferred.onednn_packing() == torch.backends.mkldnn.is_available()
    if platform.machine() in ("x86_64", "AMD64"):
        assert deferred.int8_products()  # fbgemm ships with torch's CPU builds on x86
