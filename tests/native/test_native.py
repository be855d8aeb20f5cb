"""The C decode-attention kernel (rftkit/native) against the PyTorch path it replaces, its build and its fallback."""

import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaConfig, LlamaRotaryEmbedding

from rftkit import native
from rftkit.rollout import decode


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """The module as if never loaded, building into an empty cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_tried", False)
    return tmp_path / "rftkit" / "native"


def test_the_kernel_builds_where_a_c_compiler_exists_and_is_cached(fresh_native):
    assert native.available() == (native._compiler() is not None)
    if not native.available():
        return
    built = sorted(fresh_native.glob("decode_attention-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native._tried = False  # a new process: found in the cache, not rebuilt
    assert native.available()
    assert [p.stat().st_mtime_ns for p in fresh_native.glob("*.so")] == [stamp]


def test_no_compiler_or_opting_out_means_the_pytorch_path(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert not native.available()
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("RFTKIT_NATIVE", "0")
    assert not native.available()


def test_a_failing_compiler_means_the_pytorch_path(fresh_native, monkeypatch):
    false = shutil.which("false")
    monkeypatch.setenv("CC", false)
    assert not native.available()
    assert not list(fresh_native.glob("*.so"))


def _case(seed, heads, kv_heads, head_dim, prompt_lengths, rows_per_prompt, length, max_new=9):
    """Random prompts' keys/values (left-padded), rows' own caches filled to `length`, one new token per row."""
    g = torch.Generator().manual_seed(seed)
    width = max(prompt_lengths)
    units = len(prompt_lengths)
    mask = torch.zeros(units, width, dtype=torch.long)
    for u, n in enumerate(prompt_lengths):
        mask[u, width - n:] = 1
    # the prefill's keys are transposed views ([U, P, H, D] in memory), as transformers leaves them
    keys = torch.randn(units, width, kv_heads, head_dim, generator=g).transpose(1, 2)
    values = torch.randn(units, width, kv_heads, head_dim, generator=g).transpose(1, 2)
    prefix = SimpleNamespace(layers=[SimpleNamespace(keys=keys, values=values)])
    group = torch.tensor([u for u, k in enumerate(rows_per_prompt) for _ in range(k)])
    rows = len(group)
    own_k = torch.randn(rows, kv_heads, max_new, head_dim, generator=g)
    own_v = torch.randn(rows, kv_heads, max_new, head_dim, generator=g)
    q = torch.randn(rows, 1, heads * head_dim, generator=g)
    k = torch.randn(rows, 1, kv_heads * head_dim, generator=g)
    v = torch.randn(rows, 1, kv_heads * head_dim, generator=g)
    cfg = LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, head_dim=head_dim, rope_theta=10000.0)
    positions = mask.sum(-1)[group][:, None] + length  # [b, 1]
    rotary = LlamaRotaryEmbedding(cfg)(q, positions)
    attn = SimpleNamespace(head_dim=head_dim, scaling=head_dim ** -0.5)
    return dict(prefix=prefix, mask=mask, group=group, own=(own_k, own_v), qkv=(q, k, v), rotary=rotary, attn=attn,
                length=length, max_new=max_new)


def _cache(c, use_native):
    cache = decode.SplitCache(c["prefix"], c["mask"], c["group"], c["max_new"], use_native=use_native)
    cache.keys[0].copy_(c["own"][0])
    cache.values[0].copy_(c["own"][1])
    cache.length = c["length"]
    return cache


def _native_attention(c, cache):
    q, k, v = c["qkv"]
    b = q.shape[0]
    cos, sin = (t.reshape(b, -1).contiguous() for t in c["rotary"])
    return native.decode_attention(q.reshape(b, -1), k.reshape(b, -1), v.reshape(b, -1), cos, sin,
                                   cache.prefix_keys[0], cache.prefix_values[0], cache.prompt_mask, cache.group,
                                   cache.cache_row, cache.keys[0], cache.values[0], cache.length, c["attn"].scaling)


needs_kernel = pytest.mark.skipif(not native.available(), reason="no C compiler on this machine")


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 64), (4, 2, 16), (6, 2, 8), (2, 1, 32)])
@pytest.mark.parametrize("length", [0, 1, 5])
def test_kernel_equals_the_pytorch_attention_and_writes_the_same_cache(heads, kv_heads, head_dim, length):
    # three prompts of different lengths (left padding), 3 + 1 + 4 rows: uneven groups
    c = _case(heads * 100 + length, heads, kv_heads, head_dim, [5, 2, 7], [3, 1, 4], length)
    reference_cache = _cache(c, use_native=False)
    reference = decode.attention(c["attn"], *c["qkv"], c["rotary"], reference_cache, 0)
    cache = _cache(c, use_native=True)
    assert cache.native
    out = _native_attention(c, cache)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    end = length + 1  # the new token's rotated key and value are in slot `length`, the rest untouched
    torch.testing.assert_close(cache.keys[0][:, :, :end], reference_cache.keys[0][:, :, :end], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache.values[0][:, :, :end], reference_cache.values[0][:, :, :end], rtol=0, atol=0)


@needs_kernel
def test_rows_that_left_the_batch_are_skipped_without_moving_the_cache():
    c = _case(7, 4, 2, 16, [4, 6], [4, 4], length=3)
    keep = torch.tensor([0, 2, 5, 7])
    reference_cache = _cache(c, use_native=False)
    reference_cache.select(keep)
    q, k, v = (t[keep] for t in c["qkv"])
    rotary = tuple(t[keep] for t in c["rotary"])
    reference = decode.attention(c["attn"], q, k, v, rotary, reference_cache, 0)
    cache = _cache(c, use_native=True)
    storage = cache.keys[0].data_ptr()
    cache.select(keep)
    assert cache.keys[0].data_ptr() == storage and cache.cache_row.tolist() == keep.tolist()
    c2 = dict(c, qkv=(q, k, v), rotary=rotary)
    out = _native_attention(c2, cache)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.keys[0][keep, :, :4], reference_cache.keys[0][:, :, :4], rtol=1e-5, atol=1e-6)


def test_loading_the_kernel_leaves_the_processs_floating_point_mode_alone():
    """A library linked with -ffast-math turns on flush-to-zero for the whole process when it loads."""
    script = ("from rftkit import native\nimport sys\nok = native.available()\n"
              "tiny = 1e-310\nsys.exit(0 if (not ok or tiny * 0.5 != 0) else 3)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, "subnormal floats are flushed to zero after the kernel loaded"
