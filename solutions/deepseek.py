"""Reference solutions for Chapter 14 (course_lib/deepseek.py)."""

from __future__ import annotations

from course_lib import moe as _moe
from course_lib import mtp as _mtp
from course_lib import sampling as _sampling

import math

import torch
import torch.nn.functional as F


class DeepSeekBlock:
    def forward(self, x, cache=None, layer=0, offset=0):
        h = self.input_layernorm(x)  # (batch, seq, d_model)
        if cache is None:
            x = x + self.self_attn(h, offset)  # naive MLA, causal over these positions
        else:
            x = x + self.self_attn.forward_absorbed(h, cache, offset, layer)  # reads and extends the latent cache
        return x + self.mlp(self.post_attention_layernorm(x))  # dense SwiGLU or MoE, called alike


class DeepSeek:
    def forward(self, ids, cache=None, offset=0, mtp=False):
        self._check_ids(ids, cache, offset, mtp)
        hidden = self.model(ids, cache, offset)  # (batch, T, d_model), after the final norm
        logits = self.lm_head(hidden)  # (batch, T, vocab)
        if not mtp:
            return logits
        # Module k pairs the first T - k states of depth k - 1 with the tokens ids[:, k:].
        return logits, _mtp.chain_depths(self.mtp, hidden, ids, self.model.embed_tokens, self.lm_head)

    def generate(self, ids, max_new_tokens, temperature=0.0, top_k=None, top_p=None, seed=None):
        if type(max_new_tokens) is not int or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if type(temperature) not in (int, float) or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        self._check_ids(ids)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                batch, length = ids.shape
                n_new = min(max_new_tokens, self.config.context_length - length)
                if n_new == 0:
                    return ids.clone()
                generator = None if seed is None else torch.Generator(device=ids.device).manual_seed(seed)
                cache = self.new_cache(batch)
                logits = self(ids, cache, 0)[:, -1]  # prefill: (batch, vocab) at the last prompt position
                out = [ids]
                for step in range(n_new):
                    if temperature == 0:
                        token = logits.argmax(dim=-1, keepdim=True)  # (batch, 1), the lowest id on a tie
                    else:
                        probs = _sampling.next_token_probs(logits, temperature, top_k, top_p)  # (batch, vocab)
                        token = torch.multinomial(probs, 1, generator=generator)  # (batch, 1)
                    out.append(token)
                    if step + 1 < n_new:  # the last token needs no forward pass
                        logits = self(token, cache, length + step)[:, -1]
                return torch.cat(out, dim=1)  # (batch, T + n_new)
        finally:
            self.train(was_training)


def train_step(model, optimizer, ids, mtp_weight=0.3, bias_rate=1e-3, max_norm=1.0, reduce_load=None):
    for name, value, low, allow_none in (
        ("mtp_weight", mtp_weight, "zero", False),
        ("bias_rate", bias_rate, "positive", True),
        ("max_norm", max_norm, "positive", True),
    ):
        if value is None and allow_none:
            continue
        number = type(value) in (int, float) and math.isfinite(value)
        if not number or value < 0 or (low == "positive" and value == 0):
            raise ValueError(f"{name} must be a finite number {'>= 0' if low == 'zero' else '> 0'}, got {value!r}")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(f"ids must be a (batch, T + 1) tensor with T >= 1, got {getattr(ids, 'shape', ids)!r}")
    core = getattr(model, "module", model)  # the DeepSeek inside a DistributedDataParallel wrapper
    optimizer.zero_grad()
    inputs, targets = ids[:, :-1], ids[:, 1:]  # (batch, T) each: position i predicts ids[:, i + 1]
    logits, per_depth = model(inputs, mtp=True)  # through the wrapper: DDP synchronises in backward
    main = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    mtp = _mtp.mtp_loss(per_depth, targets, 1.0) if per_depth else logits.new_zeros(())  # mean over depths
    loss = main + mtp_weight * mtp
    loss.backward()
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(core.parameters(), max_norm)
    optimizer.step()
    if bias_rate is not None:  # the routing bias is a buffer moved by a rule, not by gradient
        for moe in _moe.moe_layers(core):  # the main stack's MoE layers, then the MTP modules'
            moe.update_bias(bias_rate, None if reduce_load is None else reduce_load(moe.last_load.clone()))
    return {"loss": float(loss.detach()), "main": float(main.detach()), "mtp": float(mtp.detach())}
