"""Reference solutions for Chapter 12 (course_lib/mtp.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class MTPModule:
    def forward(self, hidden, next_ids, embed, head, **block_kwargs):
        if (
            not isinstance(hidden, torch.Tensor)
            or not hidden.is_floating_point()
            or hidden.ndim != 3
            or hidden.shape[1] < 1
            or hidden.shape[2] != self.d_model
        ):
            got = f"{hidden.dtype} of shape {tuple(hidden.shape)}" if isinstance(hidden, torch.Tensor) else "no tensor"
            raise ValueError(f"hidden must be a floating-point tensor (batch, n >= 1, {self.d_model}), got {got}")
        integer = isinstance(next_ids, torch.Tensor) and not next_ids.is_floating_point() and not next_ids.is_complex()
        if not integer or next_ids.dtype == torch.bool or tuple(next_ids.shape) != tuple(hidden.shape[:2]):
            got = f"{next_ids.dtype} of shape {tuple(next_ids.shape)}" if isinstance(next_ids, torch.Tensor) else "none"
            raise ValueError(f"next_ids must be integer ids of shape {tuple(hidden.shape[:2])}, got {got}")
        # The released weights put the embedding's half first: [enorm(Emb(t_{i+k})); hnorm(h_i)].
        both = torch.cat([self.enorm(embed(next_ids)), self.hnorm(hidden)], dim=-1)  # (batch, n, 2 d)
        h = self.block(self.eh_proj(both), **block_kwargs)  # (batch, n, d): causal over the n positions
        return head(self.shared_head.norm(h)), h


def mtp_loss(depth_logits, targets, weight):
    if not isinstance(depth_logits, (list, tuple)) or not depth_logits:
        raise ValueError("depth_logits must be a non-empty list of tensors, one per MTP depth")
    if not all(isinstance(x, torch.Tensor) and x.is_floating_point() for x in depth_logits):
        raise ValueError("every element of depth_logits must be a floating-point tensor")
    integer = isinstance(targets, torch.Tensor) and not targets.is_floating_point() and not targets.is_complex()
    if not integer or targets.dtype == torch.bool or targets.ndim != 2:
        raise ValueError("targets must be an integer tensor of shape (batch, T)")
    if type(weight) not in (int, float) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    batch, window = targets.shape
    depths = len(depth_logits)
    if window <= depths:
        raise ValueError(f"a window of T = {window} tokens is too short for {depths} MTP depths (T must exceed D)")
    total = 0.0
    for k, logits in enumerate(depth_logits, start=1):
        if logits.ndim != 3 or tuple(logits.shape[:2]) != (batch, window - k):
            raise ValueError(
                f"depth {k}'s logits must have shape ({batch}, {window - k}, vocab), got {tuple(logits.shape)}"
            )
        aligned = targets[:, k:]  # depth k at position i predicts t_{i+k+1} = targets[:, i + k]
        if not (aligned != -100).any():
            raise ValueError(f"depth {k} has no valid target (all are -100)")
        total = total + F.cross_entropy(logits.flatten(0, 1), aligned.flatten(), ignore_index=-100)
    return total * (weight / depths)


def speculative_generate(trunk, mtp, ids, max_new_tokens):
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] < 1:
        raise ValueError(f"ids must be a tensor of shape (1, T) with T >= 1, got {getattr(ids, 'shape', ids)!r}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"ids must hold integer token ids, got {ids.dtype}")
    if type(max_new_tokens) is not int or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    context = trunk.config.context_length
    if ids.shape[1] + max_new_tokens > context:
        raise ValueError(f"{ids.shape[1]} prompt tokens + {max_new_tokens} new ones exceed the context of {context}")
    stats = {"forwards": 0, "drafted": 0, "accepted": 0}
    out = ids.to(torch.int64)
    if max_new_tokens == 0:
        return out.clone(), stats
    modes = (trunk.training, mtp.training)
    trunk.eval()
    mtp.eval()
    embed, head, rope = trunk.model.embed_tokens, trunk.lm_head, trunk.model.rotary_emb
    try:
        with torch.no_grad():
            hidden = trunk.model(out)  # the prefill: (1, T, d), the hidden states lm_head reads
            logits = trunk.lm_head(hidden)  # (1, T, vocab)
            stats["forwards"] += 1
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1): the main head's greedy token
            produced = 0
            while True:
                out = torch.cat([out, nxt], dim=1)
                produced += 1
                if produced == max_new_tokens:
                    break
                # hidden covers every position but the newest; pair each with the token after it.
                draft_logits, _ = mtp(hidden, out[:, 1:], embed, head, rope=rope)
                draft = draft_logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1): the token after nxt
                stats["drafted"] += 1
                hidden = trunk.model(torch.cat([out, draft], dim=1))  # one pass checks the draft
                logits = trunk.lm_head(hidden)
                stats["forwards"] += 1
                check = logits[:, -2].argmax(dim=-1, keepdim=True)  # the greedy token after nxt
                if torch.equal(check, draft):
                    stats["accepted"] += 1
                    out = torch.cat([out, draft], dim=1)
                    produced += 1
                    if produced == max_new_tokens:
                        break
                    nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # a bonus: the token after the draft
                else:
                    nxt = check
                    hidden = hidden[:, :-1]  # the rejected draft's position is discarded
    finally:
        trunk.train(modes[0])
        mtp.train(modes[1])
    return out, stats
