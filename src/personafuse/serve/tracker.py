"""Following each row of a batch while ``generate`` runs: left padding, stop sequences, per-row limits,
cancellation and streamed text (:class:`RowTracker`, a ``transformers`` stopping criterion).

The helpers are pure functions with hand-checked tests (tests/test_serve_protocol.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from personafuse.serve.jobs import Delta, Finished, GenerationJob


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows into ``(input_ids [batch, max_len], attention_mask [batch, max_len])``.

    The same layout as ``PersonaFuse.chat_inputs`` (tokenizer with ``padding_side="left"``): decoder-only
    generation appends at the right, so every row's last prompt token must sit in the last column.
    """
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("left_pad needs at least one row and no empty rows")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [batch, width]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [batch, width]
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest occurrence of any stop sequence in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still be the start of a stop sequence.

    Streaming must not send them yet: ``"Hello\\nUs"`` with stop ``"\\nUser:"`` holds back ``"\\nUs"`` (4).
    """
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                longest = max(longest, k)
                break
    return longest


@dataclass
class RowState:
    """The tracker's state for one output row (one choice of one job)."""

    job: GenerationJob
    choice: int
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    cut: bool = False
    done: bool = False
    finish_reason: str = "length"


class RowTracker:
    """A ``StoppingCriteria`` following every row of a batch: stops, limits, cancellation, streamed deltas.

    ``generate`` calls it after appending each new token, with the whole ``input_ids`` [batch, prompt + new];
    it returns one bool per row (True = this row is finished), which ``generate`` ANDs into its own
    unfinished-sequences mask (per-row criteria, transformers >= 4.39).
    """

    def __init__(self, rows: list[RowState], decode: Callable[[list[int]], str], eos_ids: set[int]) -> None:
        self.rows = rows
        self.decode = decode
        self.eos_ids = eos_ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None = None, **kwargs) -> torch.BoolTensor:
        new_tokens = input_ids[:, -1].tolist()  # [batch]
        for row, token in zip(self.rows, new_tokens):
            if not row.done:
                self._step(row, int(token))
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def _step(self, row: RowState, token: int) -> None:
        params = row.job.params
        if row.job.cancelled:
            row.done, row.finish_reason = True, "cancelled"
            return
        row.ids.append(token)
        if token in self.eos_ids:
            row.done, row.finish_reason = True, "stop"
            return
        if params.stop or row.job.stream:  # otherwise the text is decoded once, in finish()
            text = self.decode(row.ids)
            cut = find_stop(text, params.stop) if params.stop else -1
            if cut >= 0:
                row.text, row.cut, row.done, row.finish_reason = text[:cut], True, True, "stop"
                return
            row.text = text
        if len(row.ids) >= params.max_tokens:
            row.done, row.finish_reason = True, "length"
            return
        if row.job.stream:
            safe = len(row.text) - held_back(row.text, params.stop)
            while safe > row.sent and row.text[safe - 1] == "\ufffd":  # an incomplete UTF-8 character: wait
                safe -= 1
            if safe > row.sent:
                row.job.handle.push(Delta(row.job.index, row.choice, row.text[row.sent : safe]))  # type: ignore[union-attr]
                row.sent = safe

    def finish(self) -> None:
        """Close every row (rows still open ran out of ``max_new_tokens``) and send the final events."""
        for row in self.rows:
            if not row.done:
                row.done, row.finish_reason = True, "length"
            if row.finish_reason == "cancelled":
                continue
            handle = row.job.handle
            assert handle is not None
            text = row.text if row.cut else self.decode(row.ids)
            if row.job.stream and len(text) > row.sent:
                handle.push(Delta(row.job.index, row.choice, text[row.sent :]))
            handle.push(Finished(row.job.index, row.choice, text, row.finish_reason, len(row.ids)))


def stopping_criteria(tracker: RowTracker):
    """``tracker`` wrapped as the ``stopping_criteria`` argument of ``generate``."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Tracker(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return tracker(input_ids, scores)

    return StoppingCriteriaList([_Tracker()])


__all__ = ["RowState", "RowTracker", "find_stop", "held_back", "left_pad", "stopping_criteria"]
