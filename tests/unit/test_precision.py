"""--precision: detection of native bf16 from the CPU's flags (faked here), fp32 where it is absent, bf16
outputs close to fp32 ones, determinism per precision, and the setting reaching the train step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dae import precision
from dae.forward import denoise_images
from dae.inference_spec import InferenceSpec
from dae.models import create_model
from dae.train.loop import _forward


@pytest.fixture
def fake_cpu(monkeypatch):
    """fake_cpu("avx512f amx_bf16"): this process's CPU flags for the test."""
    def fake(flags: str):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags.split()))
    return fake


@pytest.mark.parametrize("flags, want", [
    ("fpu sse avx2 avx512f avx512bw avx512_vnni", "fp32"),  # AVX-512 without bf16: emulated, so fp32
    ("fpu avx512f avx512_bf16", "bf16"),
    ("fpu avx512f amx_tile amx_bf16", "bf16"),
    ("", "fp32"),  # no cpuinfo at all (another OS)
])
def test_auto_is_bf16_only_where_the_cpu_has_it_natively(fake_cpu, flags, want):
    fake_cpu(flags)
    assert precision.resolve("auto", "cpu") == want
    assert InferenceSpec().placed("cpu").precision == want
    # an explicit choice is kept whatever the hardware
    assert precision.resolve("fp32", "cpu") == "fp32" and precision.resolve("bf16", "cpu") == "bf16"


def test_the_cpu_flags_come_from_cpuinfo_or_the_override(monkeypatch):
    precision.cpu_flags.cache_clear()
    monkeypatch.setenv("DAE_CPU_FLAGS", "sse avx512_bf16")
    try:
        assert precision.cpu_flags() == {"sse", "avx512_bf16"} and precision.native_bf16("cpu")
        precision.cpu_flags.cache_clear()
        monkeypatch.setenv("DAE_CPU_FLAGS", "")
        assert precision.cpu_flags() == frozenset() and precision.resolve("auto", "cpu") == "fp32"
    finally:
        precision.cpu_flags.cache_clear()
        monkeypatch.delenv("DAE_CPU_FLAGS")
    with open("/proc/cpuinfo") as f:
        line = next(x for x in f if x.startswith("flags"))
    assert precision.cpu_flags() == frozenset(line.split(":", 1)[1].split())


def test_fp32_is_forced_where_bf16_is_absent_and_runs_no_autocast(fake_cpu):
    fake_cpu("avx512f")
    model = create_model("cunet", channels=1, width=4).eval()
    seen = []
    model.inner.body.stem.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    denoise_images(model, [np.full((16, 16, 1), 0.5, np.float32)], InferenceSpec(device="cpu"), sigmas=[0.1])
    fake_cpu("amx_bf16")
    denoise_images(model, [np.full((16, 16, 1), 0.5, np.float32)], InferenceSpec(device="cpu"), sigmas=[0.1])
    assert seen == [torch.float32, torch.bfloat16]


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(ValueError, match="--precision must be one of auto, fp32, bf16, got 'fp16'"):
        InferenceSpec(precision="fp16").check()
    with pytest.raises(ValueError, match="resolve the precision first"):
        precision.autocast("auto", "cpu")


def _photo_and_model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("cunet", channels=3, width=8).eval()
    rng = np.random.default_rng(seed)
    clean = np.clip(np.cumsum(rng.normal(0, 0.05, (3, 72, 56, 3)), axis=1) % 1.0, 0, 1).astype(np.float32)
    noisy = (clean + rng.normal(0, 25 / 255, clean.shape)).astype(np.float32)
    return model, list(noisy)


def test_bf16_outputs_are_within_a_stated_tolerance_of_fp32():
    # Tolerance: bf16 keeps 8 mantissa bits, so a conv's output moves by ~2^-9 relative; through this
    # small U-Net the residual (noise estimate, |r| ~ 0.1) moves by well under 0.02, the mean pixel by
    # under 0.002 (the shipped color model on 12 CBSD68 photos: max 0.006, mean 0.001).
    model, images = _photo_and_model()
    spec = InferenceSpec(device="cpu", tile=48, tile_overlap=8)
    fp32 = denoise_images(model, images, dataclasses.replace(spec, precision="fp32"), sigmas=[0.1] * 3)
    bf16 = denoise_images(model, images, dataclasses.replace(spec, precision="bf16"), sigmas=[0.1] * 3)
    diff = np.abs(np.stack(fp32) - np.stack(bf16))
    assert 0 < diff.max() < 0.02 and diff.mean() < 0.002
    assert all(o.dtype == np.float32 for o in bf16)  # the output (and the clamp) are float32
    assert min(float(o.min()) for o in bf16) >= 0 and max(float(o.max()) for o in bf16) <= 1


@pytest.mark.parametrize("arith", ["fp32", "bf16"])
def test_results_do_not_depend_on_batching_in_either_precision(arith):
    model, images = _photo_and_model(1)
    images = images + [np.ascontiguousarray(im[::-1]) for im in images]  # 6 same-shape images
    spec = InferenceSpec(device="cpu", precision=arith, forward_batch=4)
    together = denoise_images(model, images, spec, sigmas=[0.1] * 6)
    for i in (0, 4, 5):  # alone, and in the other position of a padded chunk
        alone = denoise_images(model, [images[i]], spec, sigmas=[0.1])[0]
        np.testing.assert_array_equal(alone, together[i])
    np.testing.assert_array_equal(denoise_images(model, images[::-1], spec, sigmas=[0.1] * 6)[::-1], together)


def test_the_train_step_runs_the_model_in_the_precision_with_float32_outputs():
    model = precision.prepare_model(create_model("cunet", channels=1, width=4))
    assert model.inner.body.stem.weight.is_contiguous(memory_format=torch.channels_last)
    dtypes = []
    model.inner.body.stem.register_forward_hook(lambda m, i, o: dtypes.append((i[0].dtype, o.dtype)))
    x, s = torch.rand(2, 1, 16, 16), torch.full((2,), 0.1)
    out32 = _forward(model, torch.device("cpu"), "fp32")(x, s)
    out16 = _forward(model, torch.device("cpu"), "bf16")(x, s)
    assert dtypes == [(torch.float32, torch.float32), (torch.float32, torch.bfloat16)]
    assert out32.dtype == out16.dtype == torch.float32
    assert 0 < float((out32 - out16).detach().abs().max()) < 0.05
    out16.mean().backward()  # gradients reach the float32 weights
    assert model.inner.body.stem.weight.grad.dtype == torch.float32


def test_compiled_train_steps_match_eager_ones_and_keep_the_plain_module():
    """--compile: the same losses and weights as eager after a few bf16 steps, through torch.compile's
    tracing and compiled autograd (backend aot_eager: inductor's kernel build costs ~45 s of CPU here;
    the real backend ran in `dae bench-train --runs compile`); the weights are the plain module's."""
    def steps(compile: bool):
        torch.manual_seed(0)
        raw = precision.prepare_model(create_model("cunet", channels=1, width=4, levels=1))
        model = precision.compiled(raw, compile, backend="aot_eager")
        assert (getattr(model, "_orig_mod", None) is raw) == compile  # an OptimizedModule around the module
        run = _forward(model, torch.device("cpu"), "bf16")
        opt = torch.optim.Adam(raw.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(3):
            clean = torch.rand(4, 1, 16, 16, generator=g)
            noisy = clean + 0.1 * torch.randn(4, 1, 16, 16, generator=g)
            loss = torch.nn.functional.mse_loss(run(noisy, torch.full((4,), 0.1)), clean)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return raw, losses

    eager, l_eager = steps(False)
    torch._dynamo.utils.counters.clear()
    comp, l_comp = steps(True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the steps ran a traced graph
    np.testing.assert_allclose(l_comp, l_eager, rtol=0.02)
    assert comp.state_dict().keys() == eager.state_dict().keys()
    assert max(float((a - b).detach().abs().max()) for a, b in zip(comp.parameters(), eager.parameters())) < 0.01


def test_compile_without_a_cpp_compiler_fails_in_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(ValueError, match=r"--compile needs a C\+\+ compiler .*apt-get install g\+\+"):
        precision.check_compiler()
    from dae.config import build_config
    from dae.train import TrainConfig, check_config

    with pytest.raises(ValueError, match="--compile needs"):
        check_config(build_config(TrainConfig, {"data": str(tmp_path), "compile": True}))
    monkeypatch.setenv("CXX", "/opt/cc/bin/g++")
    assert precision.check_compiler() == "/opt/cc/bin/g++"


def test_the_benchmark_counts_flops_once_and_reports_each_variant_against_its_peak(fake_cpu):
    from dae.experiments.bench.compute import count_flops, forward_figures, peaks, report_lines, step_figures

    fake_cpu("avx512f amx_bf16")
    assert peaks(2)["bf16_gflops"] == 32 * peaks(2)["fp32_gflops"]  # AMX: 2,048 vs 64 FLOP per cycle
    model = create_model("cunet", channels=1, width=4)
    fwd = forward_figures(model, (16, 24), channels=1, seconds=0.01, compile=False)
    step = step_figures(model, batch=2, crop=16, channels=1, seconds=0.01, compile=False)
    for figs in (fwd, step):
        assert figs["flops"] > 0 and set(figs) == {"flops", "fp32_nchw", "fp32", "bf16"}
        assert all(figs[v]["per_s"] > 0 and figs[v]["gflops"] > 0 for v in ("fp32_nchw", "fp32", "bf16"))
    forward_of_the_batch = count_flops(lambda: model(torch.rand(2, 1, 16, 16), torch.full((2,), 0.1)))
    assert 2.5 < step["flops"] / forward_of_the_batch < 3.5  # a step: forward + backward (about 2x the forward)
    lines = report_lines(fwd, "photos", "photo")
    assert len(lines) == 4 and "% of peak" in lines[1] and "(AMX)" in lines[0]
