"""Chapter 13 — DeepSeek-V3's FP8 recipe: float8 e4m3 numbers with fine-grained float32 scales.

DeepSeek-V3 [DeepSeek-AI, 2024, arXiv:2412.19437, §3.3] trains and serves its matrix products in
float8 e4m3 (largest number 448), and keeps the range in **scales** shared by small blocks:

- activations: one scale per **1 × 128 tile** (per token, per 128 channels), computed on the fly
  (:func:`act_quant`, Exercise 13.4);
- weights: one scale per **128 × 128 block** (:func:`weight_quant`, Exercise 13.3), stored in the
  checkpoint beside each weight as ``<name>.weight_scale_inv``, a float32 matrix
  (``README_WEIGHTS.md`` of deepseek-ai/DeepSeek-V3);
- products: each 128-wide slice of the inner dimension multiplied in FP8, its partial sum taken in
  float32, times the two scales, and added to a float32 accumulator (:func:`fp8_gemm`, Exercise 13.5;
  §3.3.2's "increasing accumulation precision").

The reference code is ``inference/kernel.py`` of deepseek-ai/DeepSeek-V3 (Triton kernels
``act_quant``, ``weight_quant``, ``weight_dequant``, ``fp8_gemm``); here the same arithmetic runs on
the CPU in PyTorch, which has float8 tensors but no block-scaled product. Around them:
:func:`weight_dequant`, :func:`fp8_linear` (DeepSeek's ``linear``), :func:`quantize_state_dict` /
:func:`dequantize_state_dict` (a checkpoint in DeepSeek's format and back, after
``inference/bf16_cast_fp8.py`` and ``fp8_cast_bf16.py``), and :func:`model_bytes` (the memory of a
:class:`~course_lib.deepseek.DeepSeekConfig` model per format).

Exercises in this module: 13.3 :func:`weight_quant`, 13.4 :func:`act_quant`, 13.5 :func:`fp8_gemm`.
"""

from __future__ import annotations

import math
import re

import torch

from .deepseek import DeepSeekConfig, count_parameters
from .exercises import exercise
from .quantization import FLOAT_FORMATS
from .rope import _describe

FP8 = torch.float8_e4m3fn
#: The largest float8 e4m3fn number, computed from its bits (:class:`~course_lib.quantization.FloatFormat`).
FP8_MAX = FLOAT_FORMATS["float8_e4m3fn"].max  # 448.0
#: DeepSeek-V3's block size: 1 × 128 activation tiles, 128 × 128 weight blocks (``weight_block_size``).
BLOCK_SIZE = 128
#: The floor of an activation tile's largest magnitude in ``act_quant`` (DeepSeek-V3's ``kernel.py``
#: since its V3.1 update: ``amax = max(amax, 1e-4)``), so that a tile of zeros gets a finite scale.
AMAX_FLOOR = 1e-4
#: The weights DeepSeek keeps in bfloat16 when it casts a checkpoint to FP8 (``SKIP_QUANT_PATTERNS`` of
#: ``inference/bf16_cast_fp8.py``): norms, embeddings, the output head, the MTP projection and the router.
#: Every other 2-D weight is quantized.
SKIP_PATTERNS = (
    r".*norm\.weight$",
    r".*embed_tokens\.weight$",
    r".*(^|\.)head\.weight$",
    r".*lm_head\.weight$",
    r".*\.eh_proj\.weight$",
    r".*\.gate\.e_score_correction_bias$",
    r".*\.gate\.weight$",
)


def _check_block_size(block_size) -> None:
    if type(block_size) is not int or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")


# --------------------------------------------------------------------------------------
# Weights: 128 × 128 blocks
# --------------------------------------------------------------------------------------


@exercise("13.3", "Block-wise FP8 weights, as DeepSeek-V3 stores them", points=3)
def weight_quant(w: torch.Tensor, block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a weight matrix to float8 e4m3fn with one float32 scale per ``block_size × block_size`` block.

    Block ``(i, j)`` holds rows ``i·bs ... (i+1)·bs - 1`` and columns ``j·bs ... (j+1)·bs - 1`` of ``w``
    (``bs = block_size``). A matrix whose sides are not multiples of ``bs`` has smaller blocks along its
    last rows and columns (DeepSeek's checkpoints have them: V3's ``kv_a_proj_with_mqa`` has 576 rows).
    For each block, in float32:

        amax  = the largest |w| in the block
        scale = amax / 448                       # 448: the largest float8 e4m3fn number
        block = (w_block / scale), cast to torch.float8_e4m3fn

    so the block's largest magnitude becomes ±448. The one exception: a block of zeros gets ``scale = 1``
    (DeepSeek's kernel would divide 0 by 0). ``scale`` is what DeepSeek's checkpoints call
    ``weight_scale_inv``: the number to *multiply* the float8 block by to get the weights back
    (:func:`weight_dequant`).

    Args:
        w: a 2-D floating-point tensor ``(rows, cols)`` (float32, float64, float16 or bfloat16).
        block_size: a positive ``int``.

    Returns:
        ``(w_fp8, scale)``: ``w_fp8`` a ``torch.float8_e4m3fn`` tensor of the shape of ``w``; ``scale`` a
        ``torch.float32`` tensor of shape ``(ceil(rows / bs), ceil(cols / bs))``.

    Raises:
        ValueError: if ``w`` is not a 2-D floating-point tensor (a float8 tensor is refused: it is
            quantized already), or ``block_size`` is not a positive ``int`` (a ``bool`` is refused).

    Example:
        >>> w_fp8, scale = weight_quant(torch.tensor([[1.0, -2.0], [0.5, 0.25]]), block_size=2)
        >>> w_fp8.float(), scale     # one block; 2 / 448 is its scale
        (tensor([[ 224., -448.], [ 112.,   56.]]), tensor([[0.0045]]))
    """
    raise NotImplementedError


def weight_dequant(
    w_fp8: torch.Tensor, scale: torch.Tensor, block_size: int = BLOCK_SIZE, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The weights a block-quantized matrix stands for: each block times its scale (``weight_scale_inv``).

    The inverse of :func:`weight_quant` up to float8's rounding, and what DeepSeek's ``weight_dequant``
    computes: ``w_fp8`` (``(rows, cols)``, any float8 or float dtype) in float32, times ``scale``
    (``(ceil(rows / bs), ceil(cols / bs))``) repeated over each block, returned in ``dtype``.
    """
    _check_block_size(block_size)
    if not isinstance(w_fp8, torch.Tensor) or w_fp8.ndim != 2 or not isinstance(scale, torch.Tensor):
        raise ValueError(f"w_fp8 must be a 2-D tensor and scale a tensor, got {_describe(w_fp8)}, {_describe(scale)}")
    rows, cols = w_fp8.shape
    blocks = (math.ceil(rows / block_size), math.ceil(cols / block_size))
    if tuple(scale.shape) != blocks:
        raise ValueError(
            f"a ({rows}, {cols}) matrix in blocks of {block_size} has {blocks} scales, got {_describe(scale)}"
        )
    per_number = scale.float().repeat_interleave(block_size, 0)[:rows].repeat_interleave(block_size, 1)[:, :cols]
    return (w_fp8.float() * per_number).to(dtype)


# --------------------------------------------------------------------------------------
# Activations: 1 × 128 tiles
# --------------------------------------------------------------------------------------


@exercise("13.4", "The activation quantizer: 1 x 128 tiles", points=2)
def act_quant(
    x: torch.Tensor, block_size: int = BLOCK_SIZE, scale_fmt: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations to float8 e4m3fn with one float32 scale per tile of ``block_size`` along the last dim.

    Each tile is ``block_size`` consecutive numbers of one row (one token's channels ``j·bs ... (j+1)·bs - 1``),
    and ``block_size`` must divide ``x.shape[-1]`` (DeepSeek's ``act_quant`` asserts it). For each tile, in
    float32, as DeepSeek-V3's ``act_quant`` kernel does:

        amax  = max(the largest |x| in the tile, 1e-4)      # the floor keeps a tile of zeros finite
        scale = amax / 448
        if scale_fmt == "ue8m0": scale = 2 ** ceil(log2(scale))   # a power of two, rounded *up*
        tile  = (x_tile / scale), cast to torch.float8_e4m3fn

    With ``"ue8m0"`` the scale is a power of two (it fits an 8-bit exponent with no mantissa, the "UE8M0"
    format), and rounding it up, never to the nearest, keeps ``|x / scale| ≤ 448``.

    Args:
        x: a floating-point tensor with at least one dimension, ``(..., K)``.
        block_size: a positive ``int`` dividing ``K``.
        scale_fmt: ``None`` (scales as computed) or ``"ue8m0"`` (scales rounded up to powers of two).

    Returns:
        ``(x_fp8, scale)``: ``x_fp8`` a ``torch.float8_e4m3fn`` tensor of the shape of ``x``; ``scale`` a
        ``torch.float32`` tensor of shape ``(..., K // block_size)``.

    Raises:
        ValueError: if ``x`` is not a floating-point tensor with at least one dimension (float8 refused),
            ``block_size`` is not a positive ``int`` dividing ``K``, or ``scale_fmt`` is neither ``None``
            nor ``"ue8m0"``.

    Example:
        >>> x_fp8, scale = act_quant(torch.tensor([[0.0, 0.0, 3.5, -7.0]]), block_size=2)
        >>> x_fp8.float(), scale * 448   # the first tile's amax is floored at 1e-4
        (tensor([[   0.,    0.,  224., -448.]]), tensor([[1.0000e-04, 7.0000e+00]]))
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# The block-scaled product
# --------------------------------------------------------------------------------------


@exercise("13.5", "The block-scaled FP8 matrix product", points=4)
def fp8_gemm(
    a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor, block_size: int = BLOCK_SIZE
) -> torch.Tensor:
    """``a @ b.T`` for block-quantized operands, accumulated in float32 one ``block_size`` slice of K at a time.

    ``a`` holds activations as :func:`act_quant` returns them (tiles of ``bs = block_size`` along ``K``),
    ``b`` a weight as :func:`weight_quant` returns it (``bs × bs`` blocks). Within one slice ``k`` of the
    inner dimension (columns ``k·bs ... (k+1)·bs - 1``), every row of ``a`` has one scale and every block of
    ``bs`` rows of ``b`` has one, so the slice's product can be taken on the float8 numbers and scaled
    afterwards. As DeepSeek-V3's ``fp8_gemm`` kernel does:

        acc = zeros (..., N), float32
        for each slice k:
            partial = a[..., slice k] @ b[:, slice k].T           # the float8 numbers, summed in float32
            acc    += partial * a_scale[..., k, None] * b_scale[row block of n, k]
        return acc

    (Dequantizing both operands and multiplying once gives the same numbers up to float32 rounding, but
    is not what the hardware does: the tensor cores multiply float8 numbers, and the scales are applied
    per slice.) ``K`` need not be a multiple of ``bs``: the last slice is then narrower. ``N`` need not
    be one either: the last row block of ``b`` is then smaller.

    Args:
        a: ``(..., K)``, ``torch.float8_e4m3fn``, at least one dimension.
        a_scale: ``(..., ceil(K / bs))``, ``torch.float32``: one scale per row and slice.
        b: ``(N, K)``, ``torch.float8_e4m3fn``.
        b_scale: ``(ceil(N / bs), ceil(K / bs))``, ``torch.float32``: one scale per block.
        block_size: a positive ``int``.

    Returns:
        A ``torch.float32`` tensor ``(..., N)``. It matches, to float32 rounding, the float64 product of the
        dequantized operands.

    Raises:
        ValueError: if ``a`` or ``b`` is not a ``torch.float8_e4m3fn`` tensor (``b`` 2-D, ``a`` at least
            1-D), their ``K`` differ, a scale is not float32 or not of its shape above, or ``block_size`` is
            not a positive ``int``.
    """
    raise NotImplementedError


def fp8_linear(x: torch.Tensor, w_fp8: torch.Tensor, scale: torch.Tensor, block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """DeepSeek-V3's ``linear`` for an FP8 weight: quantize ``x`` in 1 × 128 tiles, then the block-scaled product.

    ``x`` ``(..., K)`` (any floating dtype), ``w_fp8`` ``(N, K)`` with its ``scale`` from
    :func:`weight_quant`; returns ``(..., N)`` in float32.
    """
    x_fp8, x_scale = act_quant(x, block_size)
    return fp8_gemm(x_fp8, x_scale, w_fp8, scale, block_size)


# --------------------------------------------------------------------------------------
# Checkpoints in DeepSeek's format
# --------------------------------------------------------------------------------------


def is_quantized_name(name: str) -> bool:
    """Whether DeepSeek's FP8 cast quantizes parameter ``name`` (if it is a matrix): not in :data:`SKIP_PATTERNS`."""
    return not any(re.match(pattern, name) for pattern in SKIP_PATTERNS)


def quantize_state_dict(state_dict: dict, block_size: int = BLOCK_SIZE) -> dict:
    """A state dict in DeepSeek-V3's FP8 checkpoint format.

    Every 2-D floating-point tensor whose name :func:`is_quantized_name` accepts becomes a float8 e4m3fn
    tensor of the same name plus ``<name>_scale_inv`` (float32 block scales, :func:`weight_quant`);
    every other tensor is kept as it is. After ``inference/bf16_cast_fp8.py`` of deepseek-ai/DeepSeek-V3.
    """
    out = {}
    for name, tensor in state_dict.items():
        if tensor.ndim == 2 and tensor.is_floating_point() and is_quantized_name(name):
            out[name], out[f"{name}_scale_inv"] = weight_quant(tensor, block_size)
        else:
            out[name] = tensor
    return out


def dequantize_state_dict(state_dict: dict, block_size: int = BLOCK_SIZE, dtype: torch.dtype = torch.float32) -> dict:
    """A state dict with every FP8 weight dequantized and its ``*_scale_inv`` dropped.

    Each ``<name>_scale_inv`` (``<name>`` usually ends in ``.weight``) is applied to the float8 tensor
    ``<name>`` by :func:`weight_dequant`; the result, and every floating-point tensor that was not
    quantized, is returned in ``dtype``; other tensors (integer buffers) are kept. What DeepSeek's
    ``inference/fp8_cast_bf16.py`` does to a checkpoint, for one state dict.

    Raises:
        ValueError: for a ``*_scale_inv`` without its weight, or a float8 tensor without its scales.
    """
    _check_block_size(block_size)
    scales = {name[: -len("_scale_inv")]: t for name, t in state_dict.items() if name.endswith("_scale_inv")}
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith("_scale_inv"):
            if name[: -len("_scale_inv")] not in state_dict:
                raise ValueError(f"{name} has no weight {name[: -len('_scale_inv')]} to scale")
            continue
        if name in scales:
            out[name] = weight_dequant(tensor, scales[name], block_size, dtype)
        elif tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise ValueError(f"{name} is {tensor.dtype} but has no {name}_scale_inv")
        else:
            out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out


# --------------------------------------------------------------------------------------
# The memory of a DeepSeek model per format
# --------------------------------------------------------------------------------------


def fp8_matrices(config: DeepSeekConfig, mtp: bool = False) -> list[tuple[str, int, int, int]]:
    """The weight matrices DeepSeek stores in FP8, as ``(name, rows, cols, how many in the model)``.

    Per layer: MLA's projections (``q_a_proj``, ``q_b_proj`` or ``q_proj``, ``kv_a_proj_with_mqa``,
    ``kv_b_proj``, ``o_proj``); the dense SwiGLU of the first ``n_dense_layers``; each routed expert's and
    the shared experts' SwiGLU in the others. Not the embeddings, the output head, the norms, the router
    or MTP's ``eh_proj`` (:data:`SKIP_PATTERNS`). With ``mtp=True``, the blocks of the MTP modules too.
    """
    if not isinstance(config, DeepSeekConfig):
        raise ValueError(f"config must be a DeepSeekConfig, got {type(config).__name__}")
    c = config
    d, heads = c.d_model, c.n_heads
    layers = c.n_layers + (c.n_mtp_layers if mtp else 0)
    moe_layers = c.n_moe_layers + (c.n_mtp_layers if mtp else 0)  # an MTP module's block is an MoE block
    if c.q_lora_rank is None:
        query = [("q_proj", heads * c.qk_head_dim, d, layers)]
    else:
        query = [("q_a_proj", c.q_lora_rank, d, layers), ("q_b_proj", heads * c.qk_head_dim, c.q_lora_rank, layers)]
    matrices = query + [
        ("kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, d, layers),
        ("kv_b_proj", heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, layers),
        ("o_proj", d, heads * c.v_head_dim, layers),
    ]
    ffns = [("mlp", c.d_ff, c.n_dense_layers), ("experts", c.moe_d_ff, moe_layers * c.n_routed_experts)]
    if c.n_shared_experts:
        ffns.append(("shared_experts", c.moe_d_ff * c.n_shared_experts, moe_layers))
    for name, width, count in ffns:
        matrices += [(f"{name}.gate_proj", width, d, count), (f"{name}.up_proj", width, d, count)]
        matrices.append((f"{name}.down_proj", d, width, count))
    return [m for m in matrices if m[3]]


def model_bytes(config: DeepSeekConfig, fmt: str, mtp: bool = False, block_size: int = BLOCK_SIZE) -> int:
    """The bytes of a DeepSeek model's parameters stored in ``fmt``.

    - ``"float32"``, ``"bfloat16"``: every parameter in that format (4 or 2 bytes).
    - ``"fp8"``: DeepSeek's checkpoint format: the matrices of :func:`fp8_matrices` one byte a number plus
      one float32 scale per ``block_size × block_size`` block (partial blocks included); every other
      parameter in bfloat16.
    - ``"int4"``: the same matrices at half a byte a number plus one bfloat16 scale per group of
      ``block_size`` along each row (a common 4-bit layout; DeepSeek released no 4-bit weights); the rest
      in bfloat16.

    Parameters are counted as :func:`~course_lib.deepseek.count_parameters` counts them (``mtp`` adds the
    MTP modules); the routing-bias buffers are not parameters.
    """
    n = count_parameters(config, mtp=mtp)
    if fmt in ("float32", "bfloat16"):
        return n * (4 if fmt == "float32" else 2)
    if fmt not in ("fp8", "int4"):
        raise ValueError(f"fmt must be 'float32', 'bfloat16', 'fp8' or 'int4', got {fmt!r}")
    _check_block_size(block_size)
    matrices = fp8_matrices(config, mtp=mtp)
    quantized = sum(rows * cols * count for _, rows, cols, count in matrices)
    rest = 2 * (n - quantized)  # bfloat16
    if fmt == "fp8":
        scales = sum(
            math.ceil(rows / block_size) * math.ceil(cols / block_size) * count for _, rows, cols, count in matrices
        )
        return quantized + 4 * scales + rest
    groups = sum(rows * math.ceil(cols / block_size) * count for _, rows, cols, count in matrices)
    return quantized // 2 + 2 * groups + rest
