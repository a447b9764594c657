"""PyTorch reference of one MM-DINOv2 update at the shapes of a mmdino_jax config (benchmarks only).

Computationally equivalent to `mmdino_jax.ssl.step` (same matmuls, same kinds of ops), not numerically
identical: masks come from torch's RNG (iBOT masks are random token subsets instead of rectangles),
schedules are held at their step-0 values. Backbone: HF `transformers` Dinov2 modules (patch embedding,
encoder, final LayerNorm, as in bench/bench_forward.py) with a 1-channel patch embedding and the
MM-DINOv2 token layout [CLS, seq0 patches, seq1 patches, ...] plus unit-norm sequence embeddings.

    step = TorchStep(load_config("configs/demo.py")); step(make_batch(config)); step(batch) ...

On a GPU: `TorchStep(config, device="cuda", dtype=torch.bfloat16, compile="full")` runs the forward passes
and losses under bf16 autocast (float32 master weights, as DINOv2's mixed precision) and `torch.compile`s the
backbones and heads whole; `compile="regional"` compiles each transformer block and head instead (one graph
serves every block: a fraction of the compile time, the embedding left eager).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from mmdino_jax.models.build import vit_config
from mmdino_jax.ssl import masking


class MMBackbone(nn.Module):
    """`model(images (M,S,H,W), masks (M,S,N) bool|None)` -> (cls (M,D), patch (M,S*N,D))."""

    def __init__(self, cfg, n_sequences: int):
        super().__init__()
        self.hf = transformers.Dinov2Model(transformers.Dinov2Config(
            hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
            mlp_ratio=int(cfg.mlp_ratio), image_size=cfg.pos_grid * cfg.patch_size, patch_size=cfg.patch_size,
            num_channels=1, layer_norm_eps=1e-6, layerscale_value=cfg.layerscale_init,
            drop_path_rate=cfg.drop_path_rate, use_swiglu_ffn=cfg.ffn == "swiglu", hidden_act="gelu"))
        d = cfg.embed_dim
        self.seq_embed = nn.Parameter(torch.randn(cfg.num_seq_embed, d))
        r = cfg.num_registers
        self.registers = nn.Parameter(1e-6 * torch.randn(1, r, d)) if r else None
        self.register_buffer("seq_idx", torch.arange(n_sequences), persistent=False)

    def forward(self, images, masks=None):
        emb = self.hf.embeddings
        m, s, h, w = images.shape
        x = emb.patch_embeddings(images.reshape(m * s, 1, h, w))      # (M*S, N, D)
        n, d = x.shape[1], x.shape[2]
        x = x.reshape(m, s, n, d)
        if masks is not None:
            x = torch.where(masks[..., None], emb.mask_token.to(x.dtype), x)
        pos = emb.interpolate_pos_encoding(x.new_zeros(1, 1 + n, d), h, w)
        seq = F.normalize(self.seq_embed[self.seq_idx], dim=-1, eps=1e-12)
        x = x + pos[:, None, 1:] + seq[None, :, None, :]
        parts = [(emb.cls_token + pos[:, :1]).expand(m, -1, -1)]
        if self.registers is not None:
            parts.append(self.registers.expand(m, -1, -1))
        parts.append(x.reshape(m, s * n, d))
        out = self.hf.layernorm(self.hf.encoder(torch.cat(parts, dim=1)).last_hidden_state)
        r = 0 if self.registers is None else self.registers.shape[1]
        return out[:, 0], out[:, 1 + r:]


class DINOHead(nn.Module):
    """MLP in-hidden-...-bottleneck with exact GELU, L2-normalise, weight-normed bias-free last layer."""

    def __init__(self, in_dim, out_dim, hidden_dim, bottleneck_dim, nlayers):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(nlayers, 1) - 1) + [bottleneck_dim]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)

    def forward(self, x):
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i < len(self.mlp) - 1:
                x = F.gelu(x)
        return self.last_layer(F.normalize(x, dim=-1, eps=1e-12))


def _xent(targets, logits, temp):
    """-sum_k t_k log softmax(s/temp)_k, per row."""
    return -(targets * F.log_softmax(logits / temp, dim=-1)).sum(-1)


def _koleo(x):
    """KoLeo on (B,D): -mean log distance to the nearest neighbour of the L2-normalised rows."""
    x = F.normalize(x, dim=-1, eps=1e-8)
    dots = x @ x.T
    dots.fill_diagonal_(-2.0)
    nn_idx = dots.argmax(dim=1)
    return -torch.log(F.pairwise_distance(x, x[nn_idx], eps=1e-8) + 1e-8).mean()


def make_batch(config, seed: int = 0) -> dict:
    """Torch tensors of `mmdino_jax.ssl.learner.random_batch(config)` (the JAX bench's batch)."""
    from mmdino_jax.ssl.learner import random_batch
    return {k: torch.from_numpy(v) for k, v in random_batch(config, seed).items()}


class TorchStep:
    """One MM-DINOv2 update per call on a batch in the JAX step's sample-major layout:
    teacher forward (no_grad) on the unmasked globals, student forward on masked globals + locals, the
    heads on the CLS tokens and on the iBOT target tokens (gathered and zero-padded to a static bound, as
    DINOv2), DINO (local + swapped global), iBOT, KoLeo and semi-supervised losses, backward, per-module grad
    clipping, AdamW with layer-wise lr / weight-decay param groups, EMA teacher and centre updates."""

    def __init__(self, config, seed: int = 0, device: str = "cpu", dtype=torch.float32, compile: str = ""):
        torch.manual_seed(seed)
        self.device, self.dtype = torch.device(device), dtype
        m, s, o = config.model, config.ssl, config.optim
        self.cfg = vit_config(m)
        self.n_seq = len(config.data.sequences.split(","))
        self.s, self.clip = s, o.clip_grad
        backbone = MMBackbone(self.cfg, self.n_seq)
        head = DINOHead(self.cfg.embed_dim, m.head_n_prototypes, m.head_hidden_dim, m.head_bottleneck_dim,
                        m.head_nlayers)
        self.student = nn.ModuleDict({"backbone": backbone, "head": head}).train().to(self.device)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        for model in (self.student, self.teacher):
            compile_modules(model, compile)
        self.center = torch.zeros(m.head_n_prototypes, device=self.device)
        self.ibot_center = torch.zeros(m.head_n_prototypes, device=self.device)
        self.optim = torch.optim.AdamW(self._param_groups(o), lr=o.base_lr, betas=(0.9, 0.999), eps=1e-8)
        self.temp, self.momentum = s.warmup_teacher_temp, s.momentum_teacher

    def _param_groups(self, o):
        groups = {}
        depth = self.cfg.depth
        for name, p in self.student.named_parameters():
            mult = 1.0
            if name.startswith("backbone."):
                if ".encoder.layer." in name:
                    mult = o.layerwise_decay ** (depth - int(name.split(".encoder.layer.")[1].split(".")[0]))
                elif ".embeddings." in name:
                    mult = o.layerwise_decay ** (depth + 1) * (
                        o.patch_embed_lr_mult if "patch_embeddings" in name else 1.0)
            decay = not (name.endswith(".bias") or "norm" in name or "lambda1" in name or "lambda2" in name)
            key = (mult, decay)
            groups.setdefault(key, {"params": [], "lr": o.base_lr * mult,
                                    "weight_decay": o.weight_decay if decay else 0.0})["params"].append(p)
        return list(groups.values())

    def _masks(self, present_g, n):
        """Student masks and iBOT targets (M,S,N): random token subsets on int(M * mask_sample_probability)
        crops at DINOv2's collate ratios (crop i of them: U(r_i, r_i+1) on linspace(mask_ratio_min_max)),
        shuffled over the crops; one whole present sequence per crop; and absent sequences."""
        mcrops = present_g.shape[0]
        dev = present_g.device
        n_masked = int(mcrops * self.s.mask_sample_probability)
        edges = torch.linspace(*self.s.mask_ratio_min_max, n_masked + 1, device=dev)
        ratio = torch.zeros(mcrops, device=dev)
        ratio[:n_masked] = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(n_masked, device=dev)
        ratio = ratio[torch.randperm(mcrops, device=dev)]
        blocks = torch.rand(mcrops, n, device=dev).argsort(dim=1) < (ratio * n).long()[:, None]
        seq = torch.zeros_like(present_g)
        if self.s.modality_masked:
            pick = torch.multinomial(present_g.float(), self.s.modality_masked)
            seq.scatter_(1, pick, True)
        mask = blocks[:, None, :] | seq[:, :, None] | ~present_g[:, :, None]
        return mask, mask & present_g[:, :, None]

    def target_bound(self, n_crops: int, n: int) -> int:
        """How many rows the heads see for the iBOT targets of `n_crops` crops: `masking.target_bound`."""
        s = self.s
        return masking.target_bound(n_crops, n_crops, self.n_seq, n, s.modality_masked, s.mask_sample_probability,
                                    tuple(s.mask_ratio_min_max))

    @staticmethod
    def head_on_targets(head, patch, targets, bound: int):
        """`head` on the target tokens of `patch` (M,T,D), zero-padded to `bound` rows as DINOv2's buffer, so
        that its input shape does not depend on the random masks (one graph under torch.compile)."""
        rows = patch.flatten(0, 1)[targets.flatten()]
        if rows.shape[0] > bound:
            raise ValueError(f"{rows.shape[0]} iBOT targets exceed their bound {bound}")
        return head(F.pad(rows, (0, 0, 0, bound - rows.shape[0])))[: rows.shape[0]]

    def _loss(self, batch, masks, targets, bound, cls_probs, patch_probs):
        s = self.s
        b, n_g, n_l = batch["global"].shape[0], batch["global"].shape[1], batch["local"].shape[1]
        bb, head = self.student["backbone"], self.student["head"]
        globals_ = batch["global"].flatten(0, 1)
        locals_ = batch["local"].flatten(0, 1)
        present_l = batch["present"].repeat_interleave(n_l, dim=0)
        n_loc = (locals_.shape[-2] // self.cfg.patch_size) * (locals_.shape[-1] // self.cfg.patch_size)
        cls_g, patch_g = bb(globals_, masks)
        cls_l, _ = bb(locals_, (~present_l)[:, :, None].expand(-1, -1, n_loc))
        s_global = head(cls_g).reshape(b, n_g, -1)
        s_local = head(cls_l).reshape(b, n_l, -1)
        tok = targets.flatten(1)
        s_patch = self.head_on_targets(head, patch_g, tok, bound)
        t_swapped = cls_probs.reshape(b, n_g, -1).flip(1)
        t_cls = cls_probs.reshape(b, n_g, -1)
        n_terms = n_g * n_l + n_g * (n_g - 1)
        dino_local = sum(_xent(t_cls[:, i], s_local[:, j], s.student_temp).mean()
                         for i in range(n_g) for j in range(n_l)) / n_terms
        dino_global = _xent(t_swapped, s_global, s.student_temp).mean(0).sum() / n_terms
        weight = (1.0 / tok.sum(1, keepdim=True).clamp(min=1) / tok.shape[0]).expand_as(tok)[tok]
        ibot = (_xent(patch_probs, s_patch, s.student_temp) * weight).sum()
        cls_by_crop = cls_g.reshape(b, n_g, -1)
        koleo = sum(_koleo(cls_by_crop[:, i]) for i in range(n_g))
        semi = self._semi(torch.cat([s_local, s_global], dim=1), batch["label"])
        return (s.dino_loss_weight * (dino_local + dino_global) + s.ibot_loss_weight * ibot
                + s.koleo_loss_weight * koleo + s.semi_loss_weight * semi)

    def _semi(self, logits, label):
        """Label-smoothed, batch-class-weighted CE of head logits (B,chunks,K) on the labeled samples."""
        s = self.s
        k = logits.shape[-1]
        labeled = (label >= 0).float()
        onehot = F.one_hot(label.clamp(min=0).long(), k).float()
        n_lab = labeled.sum()
        w = torch.where(n_lab > 0, torch.log(n_lab / ((onehot * labeled[:, None]).sum(0) + 1e-6)), 0.0)
        y = onehot * (1 - s.semi_label_smoothing) + s.semi_label_smoothing / k
        per = -(w * y[:, None, :] * F.log_softmax(logits / s.semi_temperature, dim=-1)).sum(-1)
        per = (per * labeled[:, None]).sum(0) / n_lab.clamp(min=1.0)
        return per.mean() * labeled.mean()

    def __call__(self, batch: dict) -> float:
        n_g = batch["global"].shape[1]
        globals_ = batch["global"].flatten(0, 1)
        present_g = batch["present"].repeat_interleave(n_g, dim=0)
        n = (globals_.shape[-2] // self.cfg.patch_size) * (globals_.shape[-1] // self.cfg.patch_size)
        masks, targets = self._masks(present_g, n)
        bound = self.target_bound(targets.shape[0], n)
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        teacher = self.teacher
        with torch.no_grad(), autocast:
            t_cls, t_patch = teacher["backbone"](globals_, ~present_g[:, :, None].expand(-1, -1, n))
            cls_logits = teacher["head"](t_cls).float()
            patch_logits = self.head_on_targets(teacher["head"], t_patch, targets.flatten(1), bound).float()
            cls_probs = F.softmax((cls_logits - self.center) / self.temp, dim=-1)
            patch_probs = F.softmax((patch_logits - self.ibot_center) / self.temp, dim=-1)
        with autocast:
            loss = self._loss(batch, masks, targets, bound, cls_probs, patch_probs)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        for part in self.student.values():
            torch.nn.utils.clip_grad_norm_(part.parameters(), self.clip, foreach=True)
        self.optim.step()
        with torch.no_grad():
            t_params, s_params = list(self.teacher.parameters()), list(self.student.parameters())
            torch._foreach_mul_(t_params, self.momentum)
            torch._foreach_add_(t_params, s_params, alpha=1.0 - self.momentum)
            mom = self.s.center_momentum
            self.center.mul_(mom).add_(cls_logits.mean(0), alpha=1 - mom)
            self.ibot_center.mul_(mom).add_(patch_logits.mean(0), alpha=1 - mom)
        return float(loss.detach())


def compile_modules(model: nn.ModuleDict, mode: str) -> None:
    """`torch.compile` in place, with one specialised graph per input shape (dynamic=False): the backbone and
    head whole (`mode="full"`), or each transformer block and the head (`"regional"`); `""`: eager."""
    if mode not in ("", "full", "regional"):
        raise ValueError(f"compile must be '', 'full' or 'regional', got {mode!r}")
    if mode:
        blocks = list(model["backbone"].hf.encoder.layer) if mode == "regional" else [model["backbone"]]
        for module in (*blocks, model["head"]):
            module.compile(dynamic=False)


def checked(loss: float) -> float:
    if not math.isfinite(loss):
        raise FloatingPointError(f"PyTorch reference step produced loss {loss}")
    return loss
