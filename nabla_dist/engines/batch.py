"""Rows of different lengths as one padded batch: the shape every engine pass starts from."""

from __future__ import annotations

import torch


def pad_rows(rows: list, pad_value, *, left: bool, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack `rows` (token id lists, or [n_i] / [n_i, H] tensors) into [B, T] / [B, T, H],
    padded on the left (rollout prefills and the reward's last-position readout) or on the
    right (gradient passes), with the attention mask [B, T] (1 on real positions)."""
    rows = [row if isinstance(row, torch.Tensor) else torch.tensor(row, dtype=torch.long) for row in rows]
    width = max(len(row) for row in rows)
    first = rows[0]
    out = torch.full((len(rows), width, *first.shape[1:]), pad_value, dtype=first.dtype, device=device or first.device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=out.device)
    for b, row in enumerate(rows):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        out[b, where] = row
        mask[b, where] = 1
    return out, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding: 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
