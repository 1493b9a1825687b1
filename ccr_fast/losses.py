"""Public contrastive / ranking losses (api contract: ``ccr_fast.losses``). Thin, documented, validated;
the numerics live in :mod:`ccr_fast.ops`.

Functional: :func:`clip_loss`, :func:`one_to_k_loss`, :func:`triplet_loss`, :func:`similarity_distillation_loss`,
:func:`sigmoid_loss` (SigLIP).
Modules (drop-in): :class:`ClipLoss` (open_clip's constructor and values, incl. the distributed modes),
:class:`OneToKLoss`, :class:`TripletLoss`, :class:`SigLipLoss` (open_clip's, incl. its exchange modes).

Conventions: features are ``[B, d]`` (texts of the 1-to-K loss ``[B, K, d]``, image-major), already
L2-normalised; ``logit_scale`` is the multiplier (``= 1/τ``), a float or a 0-dim tensor whose gradient is returned
when it requires grad. Losses are float32 (float64 for float64 inputs) whatever the input dtype. Features of
different dtypes are accepted only under ``torch.autocast`` (both are cast to the autocast dtype).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from .ops._common import acc_dtype
from .ops._validate import check_features, check_float, check_int, check_scale, check_tensor, check_world
from .ops.contrastive import contrastive_loss
from .ops.dispatch import BACKENDS

Tensor = torch.Tensor
Scale = Union[float, Tensor]

__all__ = ["clip_loss", "one_to_k_loss", "triplet_loss", "similarity_distillation_loss", "ClipLoss", "OneToKLoss",
           "TripletLoss", "sigmoid_loss", "SigLipLoss"]

# ---------------------------------------------------------------------------------------------------------------
# Validation (the shared checks of ccr_fast.ops._validate, plus the 1-to-K text layout)
# ---------------------------------------------------------------------------------------------------------------


def _check_flags(**flags) -> None:
    """Constructor switches must be bools (a string such as "False" would silently read as True)."""
    for name, value in flags.items():
        if isinstance(value, str) or value not in (True, False):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _check_backend(backend) -> None:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _check_divisor(t2i_divisor: str) -> str:
    if t2i_divisor not in ("K", "1"):
        raise ValueError(f"t2i_divisor must be 'K' or '1', got {t2i_divisor!r}")
    return t2i_divisor


def _one_to_k_weights(B: int, K: int, t2i_divisor: str) -> Tuple[float, float]:
    """(image→text row weight, text→image weight) for B images with K texts each (:func:`one_to_k_loss`)."""
    w_i2t = 1.0 / (2.0 * K * B)
    w_t2i = 1.0 / (2.0 * K * B * K) if t2i_divisor == "K" else 1.0 / (2.0 * B * K)
    return w_i2t, w_t2i


def _texts_3d(text_features: Tensor, B: int, k: Optional[int]) -> Tensor:
    """[B, K, d] view of ``text_features`` given as [B, K, d] or (with the module's ``k``) [B*K, d]."""
    if text_features.dim() == 2 and k is not None:
        if text_features.shape[0] != B * k:
            raise ValueError(f"text_features given as [B*K, d] must have {B}*{k}={B * k} rows, "
                             f"got shape {tuple(text_features.shape)}")
        return text_features.reshape(B, k, text_features.shape[1])
    if text_features.dim() != 3:
        want = "[B, K, d] or [B*K, d]" if k is not None else "[B, K, d]"
        raise ValueError(f"text_features must be a {want} tensor, got shape {tuple(text_features.shape)}")
    if text_features.shape[1] < 1:
        raise ValueError(f"text_features must have K >= 1 texts per image, got shape {tuple(text_features.shape)}")
    if k is not None and text_features.shape[1] != k:
        raise ValueError(f"text_features must have K={k} texts per image, got shape {tuple(text_features.shape)}")
    return text_features


# ---------------------------------------------------------------------------------------------------------------
# Functional losses
# ---------------------------------------------------------------------------------------------------------------


def clip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Scale, *, backend: str = "auto") -> Tensor:
    """Symmetric InfoNCE ``(CE(Z) + CE(Zᵀ))/2`` with ``Z = logit_scale · I Tᵀ`` and labels on the diagonal.

    Args:
        image_features: [B, d]. text_features: [B, d], same device (and dtype, outside autocast).
        logit_scale: float or 0-dim tensor (the multiplier 1/τ). backend: "auto", "cuda", "triton", "cpu", "torch".

    Returns:
        0-dim float32 loss (float64 for float64 inputs); open_clip ``ClipLoss`` value at world size 1.
    """
    check_features(("image_features", "text_features"), image_features, text_features)
    scale = check_scale(logit_scale, image_features.device)
    w = 1.0 / (2.0 * image_features.shape[0])
    return contrastive_loss(image_features, text_features, scale, w_row=w, w_col=w, backend=backend)


def one_to_k_loss(image_features: Tensor, text_features: Tensor, logit_scale: Scale, *, t2i_divisor: str = "K",
                  backend: str = "auto") -> Tensor:
    """CCR^k 1-to-K contrastive loss (docs/methods.md, "ccrk").

    ``Z = logit_scale · I Tᵀ`` is B×BK with text ``i·K + k`` belonging to image ``i``.
    ``L_i2t = (1/B) Σ_i Σ_k −log softmax_row(Z_i)[(i,k)]``, ``L_t2i = (1/(BK)) Σ_t −log softmax_col(Z)[img(t), t]``;
    ``L = (L_i2t + L_t2i)/(2K)`` for ``t2i_divisor="K"``, ``(L_i2t/K + L_t2i)/2`` for ``"1"``. K=1 gives clip_loss.

    Args:
        image_features: [B, d]. text_features: [B, K, d] (K ≥ 1), image-major.
        logit_scale: float or 0-dim tensor. t2i_divisor: "K" or "1". backend: see :func:`clip_loss`.

    Returns:
        0-dim float32 loss (float64 for float64 inputs).
    """
    _check_divisor(t2i_divisor)
    if isinstance(text_features, Tensor) and text_features.dim() == 3 and text_features.shape[1] < 1:
        raise ValueError(f"text_features must have K >= 1 texts per image, got shape {tuple(text_features.shape)}")
    check_features(("image_features", "text_features"), image_features, text_features, (2, 3))
    B, K, d = text_features.shape
    scale = check_scale(logit_scale, image_features.device)
    w_i2t, w_t2i = _one_to_k_weights(B, K, t2i_divisor)
    return contrastive_loss(image_features, text_features.reshape(B * K, d), scale, col_div=K, w_row=w_i2t,
                            w_col=w_t2i, backend=backend)


def triplet_loss(a: Tensor, b: Tensor, *, margin: float = 0.2, max_violation: bool = True, reduction: str = "sum",
                 backend: str = "auto") -> Tensor:
    """VSE++ bidirectional hinge on ``S = b aᵀ`` (pairs on the diagonal); see :mod:`ccr_fast.ops.triplet`.

    Args:
        a: [B, d], b: [B, d] (B ≥ 2). margin: hinge margin. max_violation: hardest negative only.
        reduction: "sum" or "mean" (divides by B). backend: see :func:`clip_loss`.
    """
    from .ops.triplet import triplet_loss as _triplet_loss  # noqa: PLC0415 - another op family

    return _triplet_loss(a, b, margin=margin, max_violation=max_violation, reduction=reduction, backend=backend)


def similarity_distillation_loss(teacher: Tensor, student: Tensor, anchor: Tensor, *,
                                 temperature: float = 0.07) -> Tensor:
    """NRCCR DTL (docs/methods.md, "nrccr"): soft cross-entropy between the teacher's and the student's similarity
    distributions over ``anchor``, in both directions, averaged.

    ``P = softmax(teacher.detach() · anchorᵀ / τ)``, ``log Q = log_softmax(student · anchorᵀ / τ)``;
    ``DTL = ½[mean_i(−Σ_j P_ij log Q_ij) + mean_j(−Σ_i Pᵀ_ji log Qᵀ_ji)]`` with the second term's softmaxes taken
    over the teacher/student rows (for each anchor). The teacher is detached inside; the anchor is not (it gets
    gradient through both the student and the teacher logits, as in the released code).

    Args:
        teacher: [B, d]. student: [B, d]. anchor: [B, d] (the visual embeddings). temperature: τ > 0.

    Returns:
        0-dim float32 loss (float64 for float64 inputs). Plain PyTorch (O(B²) memory).
    """
    check_features(("teacher", "student"), teacher, student)
    check_features(("teacher", "anchor"), teacher, anchor)
    check_float("temperature", temperature, positive=True)
    acc = acc_dtype(torch.promote_types(student.dtype, anchor.dtype))
    with torch.autocast(student.device.type, enabled=False):
        t, s, v = teacher.detach().to(acc), student.to(acc), anchor.to(acc)
        logits_t = (t @ v.T) / temperature  # [B (texts), B (anchors)]
        logits_s = (s @ v.T) / temperature
        t2v = -(torch.softmax(logits_t, dim=1) * torch.log_softmax(logits_s, dim=1)).sum(1).mean()
        v2t = -(torch.softmax(logits_t, dim=0) * torch.log_softmax(logits_s, dim=0)).sum(0).mean()
        return 0.5 * (t2v + v2t)


# ---------------------------------------------------------------------------------------------------------------
# Distributed gathering (open_clip semantics)
# ---------------------------------------------------------------------------------------------------------------


def gather_features(features: Tensor, *, local_loss: bool, gather_with_grad: bool, rank: int,
                    world_size: int) -> Tensor:
    """All-gather ``features`` [b, d] from every rank into [world_size·b, d] (rank-major), as open_clip does.

    ``gather_with_grad``: autograd all-gather (``torch.distributed.nn.functional.all_gather``; its backward sums
    the gradients of every rank's copy). Otherwise a plain all-gather whose own slot is replaced by the local
    tensor (so the local gradient flows) unless ``local_loss``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"world_size={world_size} needs an initialised torch.distributed process group")
    if dist.get_world_size() != world_size:
        raise ValueError(f"world_size={world_size} does not match torch.distributed ({dist.get_world_size()})")
    if gather_with_grad:
        from torch.distributed.nn.functional import all_gather  # noqa: PLC0415

        return torch.cat(all_gather(features), dim=0)
    gathered = [torch.zeros_like(features) for _ in range(world_size)]
    dist.all_gather(gathered, features.contiguous())
    if not local_loss:
        gathered[rank] = features
    return torch.cat(gathered, dim=0)


# ---------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------


class ClipLoss(nn.Module):
    """Drop-in for ``open_clip.loss.ClipLoss`` with the fused kernel underneath.

    With ``world_size > 1`` the features are all-gathered through ``torch.distributed`` (``gather_with_grad``
    as in open_clip). ``local_loss=False``: the global loss over the gathered batch on every rank.
    ``local_loss=True``: local rows against all gathered columns in both directions, labels offset by
    ``rank · b`` — mapped onto the kernel's positive rule ``(rank·b, 1, 0, 1)`` with a row-only cross-entropy.

    Args:
        local_loss, gather_with_grad, cache_labels, rank, world_size: as open_clip.
        use_horovod: accepted for open_clip's constructor; ``True`` raises ValueError (Horovod is not supported:
            launch with torchrun, which ``torch.distributed`` gathers through).
        backend: kernel backend (keyword only).
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False, *, backend: str = "auto"):
        super().__init__()
        _check_flags(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=cache_labels,
                     use_horovod=use_horovod)
        if use_horovod:
            raise ValueError("use_horovod=True is not supported by ccr_fast.losses.ClipLoss: distributed gathering "
                             "goes through torch.distributed (launch with torchrun and keep use_horovod=False)")
        check_world(rank, world_size)
        _check_backend(backend)
        self.use_horovod = use_horovod
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self.prev_num_logits = 0
        self.labels = {}

    def get_ground_truth(self, device: torch.device, num_logits: int) -> Tensor:
        """open_clip-compatible labels ``arange(num_logits) (+ num_logits·rank with local_loss)`` (cached if asked)."""
        if self.prev_num_logits != num_logits or device not in self.labels:
            labels = torch.arange(num_logits, device=device, dtype=torch.long)
            if self.world_size > 1 and self.local_loss:
                labels = labels + num_logits * self.rank
            if self.cache_labels:
                self.labels[device] = labels
                self.prev_num_logits = num_logits
            return labels
        return self.labels[device]

    def get_logits(self, image_features: Tensor, text_features: Tensor, logit_scale: Scale,
                   logit_bias: Optional[Scale] = None) -> Tuple[Tensor, Tensor]:
        """open_clip-compatible dense logits (materialises them; for inspection, not used by :meth:`forward`)."""
        if logit_bias is not None:
            per_image, per_text = self.get_logits(image_features, text_features, logit_scale)
            return per_image + logit_bias, per_text + logit_bias
        if self.world_size > 1:
            all_i = gather_features(image_features, local_loss=self.local_loss,
                                    gather_with_grad=self.gather_with_grad, rank=self.rank,
                                    world_size=self.world_size)
            all_t = gather_features(text_features, local_loss=self.local_loss,
                                    gather_with_grad=self.gather_with_grad, rank=self.rank,
                                    world_size=self.world_size)
            if self.local_loss:
                return logit_scale * image_features @ all_t.T, logit_scale * text_features @ all_i.T
            per_image = logit_scale * all_i @ all_t.T
            return per_image, per_image.T
        per_image = logit_scale * image_features @ text_features.T
        return per_image, per_image.T

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Scale,
                logit_bias: Optional[Scale] = None, output_dict: bool = False) -> Union[Tensor, dict]:
        """Loss of a local batch: image_features [b, d], text_features [b, d]; 0-dim float32 (or a dict).

        ``logit_bias`` (open_clip's argument; None, a float or a 0-dim tensor) shifts every logit equally, which
        leaves the softmax cross-entropy unchanged: it enters the graph with gradient 0, as in open_clip.
        """
        if isinstance(logit_bias, bool):  # the earlier positional form forward(i, t, scale, output_dict) still works
            logit_bias, output_dict = None, logit_bias
        if isinstance(output_dict, Tensor) or not isinstance(output_dict, bool):
            raise TypeError(f"output_dict must be a bool, got {type(output_dict).__name__} (logit_bias, open_clip's "
                            "4th positional argument, comes before it)")
        bias = None
        if logit_bias is not None:
            check_tensor("image_features", image_features, ndim=2, nonempty=False)
            bias = check_scale(logit_bias, image_features.device, "logit_bias")
        if self.world_size == 1:
            loss = clip_loss(image_features, text_features, logit_scale, backend=self.backend)
        else:
            check_features(("image_features", "text_features"), image_features, text_features)
            scale = check_scale(logit_scale, image_features.device)
            opts = dict(local_loss=self.local_loss, gather_with_grad=self.gather_with_grad, rank=self.rank,
                        world_size=self.world_size)
            all_i, all_t = gather_features(image_features, **opts), gather_features(text_features, **opts)
            if self.local_loss:
                b = image_features.shape[0]
                w = 1.0 / (2.0 * b)
                loss = contrastive_loss(image_features, all_t, scale, row_off=self.rank * b, w_row=w, w_col=0.0,
                                        backend=self.backend) \
                    + contrastive_loss(text_features, all_i, scale, row_off=self.rank * b, w_row=w, w_col=0.0,
                                       backend=self.backend)
            else:
                w = 1.0 / (2.0 * all_i.shape[0])
                loss = contrastive_loss(all_i, all_t, scale, w_row=w, w_col=w, backend=self.backend)
        if isinstance(bias, Tensor) and bias.requires_grad:
            loss = loss + 0.0 * bias.to(loss.dtype)  # gradient 0, as open_clip's (the shift cancels)
        return {"contrastive_loss": loss} if output_dict else loss


class OneToKLoss(nn.Module):
    """Module form of :func:`one_to_k_loss` with open_clip-style gathering.

    ``local_loss=True`` on rank ``p`` with local batch ``b``: image rows ``(p·b, 1, 0, K)`` against all gathered
    texts, and text rows ``(p·b·K, K, 0, 1)`` against all gathered images, each a row-only cross-entropy with the
    1-to-K weights of the local batch; the mean over ranks equals the global loss.

    Args:
        k: texts per image. t2i_divisor: "K" or "1". local_loss, gather_with_grad, rank, world_size: as ClipLoss.
        backend: kernel backend.
    """

    def __init__(self, k: int, *, t2i_divisor: str = "K", local_loss: bool = False, gather_with_grad: bool = False,
                 rank: int = 0, world_size: int = 1, backend: str = "auto"):
        super().__init__()
        check_int("k", k, low=1, what=" (texts per image)")
        _check_divisor(t2i_divisor)
        _check_flags(local_loss=local_loss, gather_with_grad=gather_with_grad)
        check_world(rank, world_size)
        _check_backend(backend)
        self.k, self.t2i_divisor = k, t2i_divisor
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size, self.backend = rank, world_size, backend

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Scale,
                output_dict: bool = False) -> Union[Tensor, dict]:
        """image_features [b, d]; text_features [b, K, d] or [b·K, d] (image-major). 0-dim float32 (or a dict)."""
        check_tensor("image_features", image_features, ndim=2, nonempty=False)
        check_tensor("text_features", text_features, nonempty=False)
        texts = _texts_3d(text_features, image_features.shape[0], self.k)
        if self.world_size == 1:
            loss = one_to_k_loss(image_features, texts, logit_scale, t2i_divisor=self.t2i_divisor,
                                 backend=self.backend)
            return {"contrastive_loss": loss} if output_dict else loss
        check_features(("image_features", "text_features"), image_features, texts, (2, 3))
        scale = check_scale(logit_scale, image_features.device)
        b, K, d = texts.shape
        flat = texts.reshape(b * K, d)
        opts = dict(local_loss=self.local_loss, gather_with_grad=self.gather_with_grad, rank=self.rank,
                    world_size=self.world_size)
        all_i, all_t = gather_features(image_features, **opts), gather_features(flat, **opts)
        if self.local_loss:
            w_i2t, w_t2i = _one_to_k_weights(b, K, self.t2i_divisor)
            loss = contrastive_loss(image_features, all_t, scale, row_off=self.rank * b, col_div=K, w_row=w_i2t,
                                    w_col=0.0, backend=self.backend) \
                + contrastive_loss(flat, all_i, scale, row_off=self.rank * b * K, row_div=K, w_row=w_t2i,
                                   w_col=0.0, backend=self.backend)
        else:
            w_i2t, w_t2i = _one_to_k_weights(all_i.shape[0], K, self.t2i_divisor)
            loss = contrastive_loss(all_i, all_t, scale, col_div=K, w_row=w_i2t, w_col=w_t2i, backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss


class TripletLoss(nn.Module):
    """Module form of :func:`triplet_loss` (VSE++; NRCCR uses margin 0.2, max_violation, sum)."""

    def __init__(self, margin: float = 0.2, max_violation: bool = True, reduction: str = "sum", *,
                 backend: str = "auto"):
        super().__init__()
        from .ops.triplet import REDUCTIONS  # noqa: PLC0415 - another op family

        check_float("margin", margin)
        _check_flags(max_violation=max_violation)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        _check_backend(backend)
        self.margin, self.max_violation, self.reduction, self.backend = margin, max_violation, reduction, backend

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """a [B, d], b [B, d] → 0-dim float32 loss."""
        return triplet_loss(a, b, margin=self.margin, max_violation=self.max_violation, reduction=self.reduction,
                            backend=self.backend)


# ---------------------------------------------------------------------------------------------------------------
# Sigmoid (SigLIP) loss
# ---------------------------------------------------------------------------------------------------------------

SIGLIP_EXCHANGES = ("bidir", "shift", "reduce", "gather")


def _sigmoid_inputs(image_features: Tensor, text_features: Tensor, logit_scale: Scale, logit_bias) \
        -> Tuple[Tensor, int, Tensor, Tensor]:
    """Validated (texts as [B·K, d], K, scale, bias) of a sigmoid loss; ``logit_bias=None`` means no bias."""
    check_tensor("image_features", image_features, ndim=2, nonempty=False)
    check_tensor("text_features", text_features, nonempty=False)
    if text_features.dim() not in (2, 3):
        raise ValueError(f"text_features must be a [B, d] or [B, K, d] tensor, got shape {tuple(text_features.shape)}")
    if text_features.dim() == 3 and text_features.shape[1] < 1:
        raise ValueError(f"text_features must have K >= 1 texts per image, got shape {tuple(text_features.shape)}")
    check_features(("image_features", "text_features"), image_features, text_features, (2, text_features.dim()))
    K = text_features.shape[1] if text_features.dim() == 3 else 1
    dev = image_features.device
    scale = check_scale(logit_scale, dev)
    bias = check_scale(0.0 if logit_bias is None else logit_bias, dev, name="logit_bias")
    return text_features.reshape(-1, text_features.shape[-1]), K, scale, bias


def sigmoid_loss(image_features: Tensor, text_features: Tensor, logit_scale: Scale, logit_bias: Optional[Scale], *,
                 backend: str = "auto") -> Tensor:
    """SigLIP pairwise sigmoid loss ``L = −Σ logsigmoid(label · Z) / B`` with ``Z = logit_scale · I Tᵀ + logit_bias``.

    Labels are +1 for an image's own text(s) and −1 for every other pair; with ``[B, K, d]`` texts (image-major,
    text ``i·K + k`` belongs to image ``i``) every image has K positives among the B·K texts. The B×BK matrix is
    never materialised: fused kernels (:mod:`ccr_fast.ops.sigmoid`), O(B·d) memory.

    Args:
        image_features: [B, d]. text_features: [B, d] or [B, K, d], same device (and dtype, outside autocast).
        logit_scale: the multiplier (float or 0-dim tensor). logit_bias: the offset (float, 0-dim tensor or None).
        backend: "auto", "blas", "triton", "cpu" or "torch".

    Returns:
        0-dim float32 loss (float64 for float64 inputs); open_clip ``SigLipLoss`` value at world size 1.
        Gradients flow to both features, ``logit_scale`` and ``logit_bias``.
    """
    from .ops.sigmoid import sigmoid_loss_op  # noqa: PLC0415 - another op family

    _check_backend(backend)
    texts, K, scale, bias = _sigmoid_inputs(image_features, text_features, logit_scale, logit_bias)
    return sigmoid_loss_op(image_features, texts, scale, bias, k=K, weight=1.0 / image_features.shape[0],
                           backend=backend)


def _p2p(sends, recv_from, like: Tensor):
    """One batch of point-to-point transfers: ``sends`` [(dst rank, tensor)], receive one ``like``-shaped tensor
    from each rank of ``recv_from`` (returned in that order)."""
    outs = [torch.empty_like(like, memory_format=torch.contiguous_format) for _ in recv_from]
    ops = [dist.P2POp(dist.irecv, buf, src) for buf, src in zip(outs, recv_from)]
    ops += [dist.P2POp(dist.isend, t.contiguous(), dst) for dst, t in sends]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return outs


class _ShiftRight(torch.autograd.Function):
    """Send ``t`` to the right neighbour, receive the left neighbour's; the gradient travels back the other way."""

    @staticmethod
    def forward(ctx, left: int, right: int, t: Tensor) -> Tensor:
        ctx.left, ctx.right = left, right
        return _p2p([(right, t)], [left], t)[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, None, _p2p([(ctx.left, grad)], [ctx.right], grad)[0]


class _ExchangeBoth(torch.autograd.Function):
    """Send ``to_left`` left and ``to_right`` right; return (from the right, from the left)."""

    @staticmethod
    def forward(ctx, left: int, right: int, to_left: Tensor, to_right: Tensor):
        ctx.left, ctx.right = left, right
        from_right, from_left = _p2p([(left, to_left), (right, to_right)], [right, left], to_left)
        return from_right, from_left

    @staticmethod
    def backward(ctx, g_from_right: Tensor, g_from_left: Tensor):
        g_to_left, g_to_right = _p2p([(ctx.right, g_from_right), (ctx.left, g_from_left)], [ctx.left, ctx.right],
                                     g_from_right)
        return None, None, g_to_left, g_to_right


class SigLipLoss(nn.Module):
    """Drop-in for ``open_clip.loss.SigLipLoss`` (same constructor, ``forward`` and values) on the fused kernels.

    With ``world_size > 1`` every rank computes the loss of its local images against its own texts (positives on
    the diagonal) plus all other ranks' texts as negatives, exchanged through ``torch.distributed`` with gradients
    as in open_clip: ``dist_impl`` ``"bidir"`` (default; both ring neighbours at once), ``"shift"`` (ring),
    ``"reduce"`` (one all-reduce per rank) or ``"gather"`` (one all-gather). Each rank's loss is divided by its
    local batch, so the mean over ranks equals the single-process loss on the whole batch. The received blocks
    go through one fused kernel call (all labels −1). Every rank must pass the same local batch size.

    Args:
        cache_labels, rank, world_size, dist_impl: as open_clip (labels are never materialised, so
            ``cache_labels`` has no effect). backend: kernel backend (keyword only).
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 dist_impl: Optional[str] = None, *, backend: str = "auto"):
        super().__init__()
        _check_flags(cache_labels=cache_labels)
        check_world(rank, world_size)
        _check_backend(backend)
        impl = dist_impl or "bidir"
        if impl not in SIGLIP_EXCHANGES:
            raise ValueError(f"dist_impl must be one of {SIGLIP_EXCHANGES} or None, got {dist_impl!r}")
        self.cache_labels, self.rank, self.world_size, self.dist_impl = cache_labels, rank, world_size, impl
        self.backend = backend
        self.prev_num_logits = 0
        self.labels = {}

    def get_ground_truth(self, device, dtype, num_logits: int, negative_only: bool = False) -> Tensor:
        """open_clip-compatible dense labels (+1 diagonal, −1 elsewhere; for inspection, not used by forward)."""
        labels = -torch.ones((num_logits, num_logits), device=device, dtype=dtype)
        if not negative_only:
            labels = labels + 2 * torch.eye(num_logits, device=device, dtype=dtype)
        return labels

    def get_logits(self, image_features: Tensor, text_features: Tensor, logit_scale: Scale,
                   logit_bias: Optional[Scale] = None) -> Tensor:
        """open_clip-compatible dense logits (materialises them; for inspection, not used by forward)."""
        logits = logit_scale * image_features @ text_features.T
        return logits if logit_bias is None else logits + logit_bias

    def _other_texts(self, texts: Tensor) -> Tuple[list, Optional[Tensor]]:
        """The texts of every other rank (a list of [b·K, d] tensors, with gradient), by ``dist_impl``, and a
        zero-valued term that keeps every collective's backward on every rank (``"reduce"``; else None)."""
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"world_size={self.world_size} needs an initialised torch.distributed process group")
        if dist.get_world_size() != self.world_size:
            raise ValueError(f"world_size={self.world_size} does not match torch.distributed "
                             f"({dist.get_world_size()})")
        W, r = self.world_size, self.rank
        right, left = (r + 1) % W, (r - 1 + W) % W
        if self.dist_impl == "gather":
            from torch.distributed.nn.functional import all_gather  # noqa: PLC0415

            gathered = all_gather(texts)
            return [t for i, t in enumerate(gathered) if i != r], None
        if self.dist_impl == "reduce":
            from torch.distributed.nn.functional import all_reduce  # noqa: PLC0415

            blocks = [all_reduce(texts * float(r == i)) for i in range(W)]
            # the own block stays in the graph (weight 0): every rank must run every all-reduce's backward
            return [t for i, t in enumerate(blocks) if i != r], 0.0 * blocks[r].sum()
        out = []
        if self.dist_impl == "shift":
            t = texts
            for _ in range(W - 1):
                t = _ShiftRight.apply(left, right, t)
                out.append(t)
            return out, None
        to_left = to_right = texts  # bidir
        pairs, odd = divmod(W - 1, 2)
        for _ in range(pairs):
            from_right, from_left = _ExchangeBoth.apply(left, right, to_left, to_right)
            out += [from_right, from_left]
            to_left, to_right = from_right, from_left
        if odd:
            out.append(_ShiftRight.apply(left, right, to_right))
        return out, None

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Scale,
                logit_bias: Optional[Scale], output_dict: bool = False) -> Union[Tensor, dict]:
        """image_features [b, d], text_features [b, d] (or [b, K, d]); 0-dim float32 loss (or a dict)."""
        if self.world_size == 1:
            loss = sigmoid_loss(image_features, text_features, logit_scale, logit_bias, backend=self.backend)
            return {"contrastive_loss": loss} if output_dict else loss
        from .ops.sigmoid import sigmoid_loss_op  # noqa: PLC0415 - another op family

        texts, K, scale, bias = _sigmoid_inputs(image_features, text_features, logit_scale, logit_bias)
        w = 1.0 / image_features.shape[0]
        loss = sigmoid_loss_op(image_features, texts, scale, bias, k=K, weight=w, backend=self.backend)
        others, zero = self._other_texts(texts)
        if zero is not None:
            loss = loss + zero.to(loss.dtype)
        if others:
            loss = loss + sigmoid_loss_op(image_features, torch.cat(others, dim=0), scale, bias, k=K,
                                          positives=False, weight=w, backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss
