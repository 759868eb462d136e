"""Reference solutions for Chapter 5 (course_lib/sampling.py)."""

from __future__ import annotations

import torch


def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None):
    if not isinstance(logits, torch.Tensor) or logits.ndim < 1 or not logits.dtype.is_floating_point:
        raise ValueError(
            "logits must be a floating-point tensor of shape (..., vocab), "
            f"got {getattr(logits, 'shape', type(logits).__name__)}"
        )
    if type(temperature) not in (int, float) or not temperature > 0:
        raise ValueError(f"temperature must be > 0 here (use generate(temperature=0) for greedy), got {temperature!r}")
    if top_k is not None and (type(top_k) is not int or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (type(top_p) not in (int, float) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    scaled = logits / temperature  # (..., vocab)
    if top_k is not None:
        kth = torch.topk(scaled, min(top_k, scaled.shape[-1]), dim=-1).values[..., -1:]  # (..., 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if top_p is not None:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # the mass strictly before each token
        keep_sorted = before < top_p  # the first token has 0 before it: always kept
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def generate(model, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
    from course_lib.sampling import next_token_probs

    if (
        not isinstance(ids, torch.Tensor)
        or ids.ndim != 2
        or ids.shape[1] < 1
        or ids.dtype.is_floating_point
        or ids.dtype == torch.bool
    ):
        raise ValueError(
            "ids must be an integer tensor of shape (batch, seq) with seq >= 1, "
            f"got {getattr(ids, 'shape', type(ids).__name__)}"
        )
    if type(max_new_tokens) is not int or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if type(temperature) not in (int, float) or temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or positive, got {temperature!r}")
    context = model.config.context_length
    g = None if seed is None else torch.Generator(device=ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = ids
            for _ in range(max_new_tokens):
                logits = model(out[:, -context:])[:, -1, :]  # (batch, vocab)
                if temperature == 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)  # (batch, 1)
                else:
                    probs = next_token_probs(logits, temperature, top_k, top_p)
                    nxt = torch.multinomial(probs, num_samples=1, generator=g)  # (batch, 1)
                out = torch.cat([out, nxt.to(out.dtype)], dim=1)
    finally:
        model.train(was_training)
    return out
