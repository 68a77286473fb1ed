"""Corpus statistics: pure functions against hand-computed values, and the PNG."""

from __future__ import annotations

import json

import pytest

from data_factory import make_record
from personafuse.data.schema import SituationRecord
from personafuse.data.stats import (
    activated_trait_counts,
    activation_histograms,
    compute_stats,
    count_by,
    histogram_edges,
    mean_reply_words,
    pole_shares,
    pole_shares_by,
)
from personafuse.data.stats_plot import plot_stats
from personafuse.traits import ACTIVATION_THRESHOLD, POLES


def _record(record_id: str, domain: str, activation: dict[str, float], k: int) -> SituationRecord:
    # Pole i's reply has i + k words; ideal 3 words; rejected k words.
    responses = {pole: " ".join([pole] + ["w"] * (i + k - 1)) for i, pole in enumerate(POLES)}
    rejected = " ".join(["no"] * k)
    return SituationRecord.model_validate(
        make_record(
            record_id, domain=domain, activation=activation, responses=responses, ideal="a b c", rejected=rejected
        )
    )


@pytest.fixture()
def records() -> list[SituationRecord]:
    return [
        # activated: O+ C- A+ N-  (4 traits; E = 0 is not)
        _record("r1", "grief_loss", {"O": 0.5, "C": -0.4, "E": 0.0, "A": 0.9, "N": -0.35}, k=1),
        # activated: O- E+ N-     (3 traits; C = 0.3 < 1/3 is not)
        _record("r2", "grief_loss", {"O": -0.5, "C": 0.3, "E": 1.0, "A": 0.2, "N": -1.0}, k=2),
        # activated: C- E- A- N+  (4 traits; O = 0.1 is not)
        _record("r3", "planning", {"O": 0.1, "C": -0.35, "E": -0.6, "A": -0.5, "N": 0.4}, k=6),
    ]


def test_pole_shares_count_each_activated_pole_once_per_situation(records):
    third, two_thirds = 1 / 3, 2 / 3
    expected = {"O+": third, "O-": third, "C+": 0.0, "C-": two_thirds, "E+": third,
                "E-": third, "A+": third, "A-": third, "N+": third, "N-": two_thirds}  # fmt: skip
    assert pole_shares(records) == pytest.approx(expected)
    assert pole_shares([]) == dict.fromkeys(POLES, 0.0)


def test_pole_share_threshold_is_inclusive():
    at = _record("edge", "x", {"O": ACTIVATION_THRESHOLD, "C": -ACTIVATION_THRESHOLD, "E": 0.33, "A": 0, "N": 0}, k=1)
    shares = pole_shares([at])
    assert (shares["O+"], shares["C-"], shares["E+"]) == (1.0, 1.0, 0.0)


def test_pole_shares_by_domain(records):
    by_domain = pole_shares_by(records, lambda r: r.domain)
    assert list(by_domain) == ["grief_loss", "planning"]
    assert by_domain["grief_loss"]["N-"] == 1.0  # both grief records are N-
    assert by_domain["grief_loss"]["O+"] == 0.5
    assert by_domain["planning"]["A-"] == 1.0 and by_domain["planning"]["A+"] == 0.0


def test_activated_trait_counts(records):
    assert activated_trait_counts(records) == {0: 0, 1: 0, 2: 0, 3: 1, 4: 2, 5: 0}


def test_histograms_with_four_bins(records):
    # edges -1, -0.5, 0, 0.5, 1; bin i = [edge_i, edge_i+1), the last bin holds 1.0
    assert histogram_edges(4) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert activation_histograms(records, bins=4) == {
        "O": [0, 1, 1, 1],  # 0.5 -> 3, -0.5 -> 1, 0.1 -> 2
        "C": [0, 2, 1, 0],  # -0.4 -> 1, 0.3 -> 2, -0.35 -> 1
        "E": [1, 0, 1, 1],  # 0.0 -> 2, 1.0 -> 3, -0.6 -> 0
        "A": [0, 1, 1, 1],  # 0.9 -> 3, 0.2 -> 2, -0.5 -> 1
        "N": [1, 1, 1, 0],  # -0.35 -> 1, -1.0 -> 0, 0.4 -> 2
    }


def test_histogram_values_on_edges_go_up_despite_float_error():
    # (-0.6 + 1) / 0.2 = 1.9999999999999998 in floats; -0.6 is the left edge of bin 2 of 10.
    rows = [
        _record(f"e{i}", "x", {"O": v, "C": 0, "E": 0, "A": 0, "N": 0}, k=1)
        for i, v in enumerate([-1.0, -0.6, 0.2, 1.0])
    ]
    hist = activation_histograms(rows, bins=10)["O"]
    assert [i for i, n in enumerate(hist) if n] == [0, 2, 6, 9]


def test_histogram_bins_must_be_positive():
    with pytest.raises(ValueError, match="bins must be >= 1, got 0"):
        histogram_edges(0)


def test_mean_reply_words(records):
    words = mean_reply_words(records)
    assert list(words) == [*POLES, "ideal", "rejected"]
    # pole i has i + k words, k in {1, 2, 6} -> mean i + 3
    assert [words[p] for p in POLES] == pytest.approx([i + 3 for i in range(len(POLES))])
    assert words["ideal"] == 3.0 and words["rejected"] == 3.0


def test_count_by_and_compute_stats(records):
    assert count_by(records, lambda r: r.domain) == {"grief_loss": 2, "planning": 1}
    stats = compute_stats(records, bins=4)
    assert stats.records == 3
    splits = {r.id: r.split for r in records}
    assert sum(stats.per_split.values()) == 3 and list(stats.per_split) == ["train", "val", "test"]
    assert stats.per_split[splits["r1"]] >= 1
    assert sum(stats.per_domain_split["grief_loss"].values()) == 2
    assert stats.pole_share == pole_shares(records)
    data = json.loads(json.dumps(stats.as_dict()))
    assert data["activated_traits"] == {"0": 0, "1": 0, "2": 0, "3": 1, "4": 2, "5": 0}
    assert data["histograms"]["E"] == [1, 0, 1, 1]


def test_plot_writes_a_png_atomically(records, tmp_path):
    path = plot_stats(compute_stats(records), tmp_path / "out" / "activation.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["activation.png"], "no temp file left"
