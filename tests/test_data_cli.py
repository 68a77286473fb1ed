"""`personafuse data validate | split | stats | contamination` on hand-made corpora, and the eval-set loaders.

Commands run in-process through the real entry point (``personafuse.cli.main``), so exit codes and the
one-line user errors are those of the installed script; contamination uses the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from data_factory import id_with_split, make_record, write_jsonl
from personafuse.data.contamination import CorpusText, corpus_texts, find_contamination, search_similar, windows
from personafuse.data.eval_texts import EVAL_SETS, EvalText, detokenize_ed, load_eval_set, shared_eval_sets
from personafuse.data.resplit import resplit_file
from personafuse.data.split import assign_split
from personafuse.traits import POLES

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """Run ``personafuse *args`` in-process; returns (exit code, stdout, stderr)."""
    from personafuse.cli import main

    monkeypatch.setattr(sys, "argv", ["personafuse", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """Two valid files in a folder, splits by hash."""
    folder = tmp_path / "corpus"
    write_jsonl(folder / "a.jsonl", [make_record(f"a-{i}", domain="grief_loss") for i in range(4)])
    write_jsonl(folder / "b.jsonl", [make_record(f"b-{i}", domain="planning") for i in range(3)])
    return folder


# ----------------------------------------------------------------------------------------------- validate


def test_validate_clean_corpus_exits_0(corpus, capsys, monkeypatch):
    code, out, _ = cli(capsys, monkeypatch, "data", "validate", corpus)
    assert code == 0, out
    assert "7 valid records in 2 file(s), no problems" in out
    code, out, _ = cli(capsys, monkeypatch, "data", "validate", corpus, "--json")
    assert code == 0 and json.loads(out) == {"ok": True, "files": 2, "records": 7, "problems": []}


def test_validate_reports_every_problem_with_file_and_line(tmp_path, capsys, monkeypatch):
    first = make_record("grief-1", domain="grief_loss", user="My dad died on Sunday and I keep reading his texts.")
    missing_pole = make_record("grief-3")
    del missing_pole["responses"]["N-"]
    wrong_split = make_record("grief-5")
    wrong_split["split"] = next(s for s in ("train", "val", "test") if s != assign_split("grief-5"))
    other_split = next(s for s in ("train", "val", "test") if s != first["split"])
    leaked = make_record(id_with_split("leak", other_split), user=first["messages"][0]["content"])
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [first, '{"id": "grief-2", "domain": ', missing_pole, make_record("grief-1"), wrong_split, leaked],
    )
    code, out, _ = cli(capsys, monkeypatch, "data", "validate", path, "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert len(problems) == 5, problems
    expected = [
        (2, "not a JSON object"),
        (3, "missing ['N-']"),
        (4, "duplicate id 'grief-1' (first at"),
        (5, f"split {wrong_split['split']!r} should be {assign_split('grief-5')!r}"),
        (6, f"split leakage: same messages as {path}:1"),
    ]
    for problem, (line, text) in zip(problems, expected):
        assert problem.startswith(f"{path}:{line}: "), problem
        assert text in problem, problem
    code, out, _ = cli(capsys, monkeypatch, "data", "validate", path)
    assert code == 1 and "5 problem(s); 3 valid records in 1 file(s)" in out
    assert f"{path}:2: not a JSON object" in out


# -------------------------------------------------------------------------------------------------- split


def _wrong_splits(folder: Path) -> None:
    for file in folder.glob("*.jsonl"):
        rows = [json.loads(line) for line in file.read_text().splitlines()]
        for row in rows:
            row["split"] = "train" if row["split"] != "train" else "test"
        rows[0].pop("split")
        write_jsonl(file, rows)


def test_split_check_then_rewrite_is_idempotent(corpus, capsys, monkeypatch):
    _wrong_splits(corpus)
    before = {f: f.read_bytes() for f in corpus.glob("*.jsonl")}
    code, out, _ = cli(capsys, monkeypatch, "data", "split", corpus, "--check")
    assert code == 1 and "7 record(s) would change in 2 of 2 file(s)" in out
    assert f"{corpus / 'a.jsonl'}:1 a-0: None should be" in out
    assert {f: f.read_bytes() for f in before} == before, "--check writes nothing"

    code, out, _ = cli(capsys, monkeypatch, "data", "split", corpus)
    assert code == 0 and "7 record(s) changed in 2 of 2 file(s)" in out
    for file, old in before.items():
        new_rows = [json.loads(line) for line in file.read_text().splitlines()]
        old_rows = [json.loads(line) for line in old.decode().splitlines()]
        assert [r["split"] for r in new_rows] == [assign_split(r["id"]) for r in new_rows]
        assert [{k: v for k, v in r.items() if k != "split"} for r in new_rows] == [
            {k: v for k, v in r.items() if k != "split"} for r in old_rows
        ], "only split changes"
        assert list(new_rows[1]) == list(old_rows[1]), "key order kept"
    rewritten = {f: f.read_bytes() for f in before}
    code, out, _ = cli(capsys, monkeypatch, "data", "split", corpus)
    assert code == 0 and "0 record(s) changed in 0 of 2 file(s)" in out
    assert {f: f.read_bytes() for f in before} == rewritten, "second run is a no-op"
    assert cli(capsys, monkeypatch, "data", "validate", corpus)[0] == 0
    assert cli(capsys, monkeypatch, "data", "split", corpus, "--check")[0] == 0


def test_split_rewrite_is_atomic(corpus, monkeypatch):
    _wrong_splits(corpus)
    file = corpus / "a.jsonl"
    before = file.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("personafuse.data.jsonl.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        resplit_file(file, write=True)
    assert file.read_bytes() == before
    assert sorted(p.name for p in corpus.iterdir()) == ["a.jsonl", "b.jsonl"], "temp file removed"


def test_split_writes_nothing_when_any_file_has_a_bad_line(corpus, capsys, monkeypatch):
    _wrong_splits(corpus)
    good = corpus / "a.jsonl"
    before = good.read_bytes()
    with (corpus / "b.jsonl").open("a") as handle:
        handle.write("{broken\n")
    code, _, err = cli(capsys, monkeypatch, "data", "split", corpus)
    assert code == 2 and f"{corpus / 'b.jsonl'}:4: not a JSON object" in err
    assert len(err.strip().splitlines()) == 1
    assert good.read_bytes() == before


# -------------------------------------------------------------------------------------------------- stats


def test_stats_writes_png_and_json(corpus, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "stats"
    code, out, _ = cli(capsys, monkeypatch, "data", "stats", corpus, "--out", out_dir, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["per_domain"] == {"grief_loss": 4, "planning": 3}
    assert data["pole_share"]["C+"] == 1.0 and data["pole_share"]["N-"] == 1.0 and data["pole_share"]["O+"] == 0.0
    assert (out_dir / "activation.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out_dir / "stats.json").read_text())["per_domain"] == data["per_domain"]
    code, out, _ = cli(capsys, monkeypatch, "data", "stats", corpus, "--out", out_dir)
    assert code == 0
    for title in ("situations per domain and split", "activated-pole share", "activation histogram", "mean reply"):
        assert title in out


# ------------------------------------------------------------------------------------------ contamination


def test_corpus_texts_are_user_turns_and_ideal_with_replies_on_request(tmp_path):
    turns = [
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "An earlier answer."},
        {"role": "user", "content": "Follow-up."},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", [make_record("c-1", messages=turns), "{torn"])
    errors = []
    texts = corpus_texts(path, errors=errors)
    assert [(t.where, t.text) for t in texts] == [
        (f"{path}:1 c-1 messages[0]", "First question?"),
        (f"{path}:1 c-1 messages[2]", "Follow-up."),
        (f"{path}:1 c-1 ideal", "The ideal reply to c-1."),
    ]
    assert [e.line for e in errors] == [2]
    with_replies = corpus_texts(path, replies=True)
    assert [t.where.split()[-1] for t in with_replies[3:]] == ["rejected", *(f"responses.{p}" for p in POLES)]


def test_windows_break_between_sentences():
    assert windows("A b. C d. E.", 2) == ["A b.", "C d.", "E."]
    assert windows("One two three.", 5) == ["One two three."]
    assert windows("a b c d e f g. h.", 3) == ["a b c", "d e f", "g. h."]
    assert windows("  ", 3) == []
    with pytest.raises(ValueError, match="max_words must be >= 1, got 0"):
        windows("x", 0)


def test_search_similar_finds_pairs_over_threshold_in_any_chunking():
    s = 2**-0.5
    queries = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])  # [2, 3]
    keys = torch.tensor([[1.0, 0, 0], [s, s, 0], [-1.0, 0, 0], [0, 0, 1.0]])  # [4, 3]
    for chunk in (1, 3, 100):
        hits, n, best, index = search_similar(queries, keys, 0.7, chunk_size=chunk)
        assert [(q, k) for q, k, _ in hits] == [(0, 0), (0, 1), (1, 1)]
        assert [c for *_, c in hits] == pytest.approx([1.0, s, s])
        assert n == 3 and best.tolist() == pytest.approx([1.0, s]) and index.tolist() == [0, 1]
    hits, n, *_ = search_similar(queries, keys, 0.7, chunk_size=1, max_hits=1)
    assert n == 3 and [(q, k) for q, k, _ in hits] == [(0, 0)]


def test_find_contamination_with_a_bag_of_words_embedder():
    vocab = ["cat", "dog", "rain", "sun"]

    def embed(label, texts):
        vectors = torch.tensor([[float(w in t.split()) for w in vocab] for t in texts]) + 1e-6
        return vectors / vectors.norm(dim=1, keepdim=True)

    corpus = [CorpusText("cat dog", "c:1 messages[0]"), CorpusText("rain", "c:1 ideal")]
    sets = {"one": [EvalText("dog cat", "e:1"), EvalText("sun", "e:2")], "two": [EvalText("rain sun", "f:1")]}
    report = find_contamination(corpus, sets, embed, threshold=0.9, top=5)
    assert [(p.corpus_where, p.eval_set, p.eval_where) for p in report.pairs] == [("c:1 messages[0]", "one", "e:1")]
    assert report.n_pairs == 1 and not report.clean
    assert [(p.corpus_where, p.eval_where, round(p.similarity, 3)) for p in report.nearest] == [
        ("c:1 messages[0]", "e:1", 1.0),
        ("c:1 ideal", "f:1", 0.707),
    ]
    assert report.eval_texts == {"one": 2, "two": 1}
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 0"):
        find_contamination(corpus, sets, embed, threshold=0)


GRIEF = "My grandmother passed away last week and I can't bring myself to clean out her sewing room."
FAKE_EVAL = [
    # a near-copy of GRIEF, reworded
    {"context": "My grandma died last week and I can't bring myself to clear out her sewing room."},
    {"context": "Tracy went to the store to buy milk and bread for the party."},
    {"context": "Jordan fixed the bug in the login page before the release."},
]


def test_contamination_finds_the_near_copy_and_only_it(tmp_path, capsys, monkeypatch):
    corpus = write_jsonl(
        tmp_path / "seed.jsonl",
        [
            make_record("grief-1", domain="grief_loss", user=GRIEF),
            make_record("tech-1", domain="technical_help", user="My Rust build fails with a linker error on macOS."),
            make_record("news-1", domain="good_news", user="I just got accepted into the marine biology program!!"),
        ],
    )
    eval_dir = tmp_path / "eval" / "socialiqa"
    write_jsonl(eval_dir / "dev.jsonl", FAKE_EVAL)
    report_file = tmp_path / "report.json"
    args = ["data", "contamination", corpus, "--against", f"socialiqa={eval_dir}", "--cache-dir", tmp_path / "cache"]
    code, out, _ = cli(capsys, monkeypatch, *args, "--json", "--out", report_file)
    assert code == 1
    report = json.loads(out)
    assert report["n_pairs"] == 1 and report["clean"] is False
    (pair,) = report["pairs"]
    assert pair["corpus_where"] == f"{corpus}:1 grief-1 messages[0]"
    assert pair["eval_set"] == "socialiqa" and pair["eval_where"] == "dev.jsonl:1"
    assert 0.85 <= pair["similarity"] <= 1.0
    assert report["corpus_texts"] == 6 and report["eval_texts"] == {"socialiqa": 3}
    assert report["nearest"][0] == pair
    assert json.loads(report_file.read_text()) == report

    # the same texts again come from the cache; without the near-copy the corpus is clean
    write_jsonl(eval_dir / "dev.jsonl", FAKE_EVAL[1:])
    code, out, _ = cli(capsys, monkeypatch, *args)
    assert code == 0, out
    assert "clean: no pair reaches cosine 0.85" in out
    assert "(1 of 2 text sets from the cache)" in out, "the corpus embeddings are reused"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "validate", "/nonexistent/corpus"], "no such corpus file or folder: /nonexistent/corpus"),
        (["data", "stats", "/nonexistent/corpus"], "no such corpus file or folder"),
        (["data", "split", "/nonexistent/corpus"], "no such corpus file or folder"),
        (["data", "contamination", "/nonexistent/corpus", "--against-shared", "."], "no such corpus file or folder"),
        (["data", "contamination", "{corpus}", "--against", "nope=/tmp"], "unknown evaluation set 'nope'; known sets: emobench"),
        (["data", "contamination", "{corpus}", "--against", "emobench"], "--against 'emobench' is not NAME=PATH"),
        (["data", "contamination", "{corpus}", "--against-shared", "/nonexistent"], "no such folder: /nonexistent"),
        (["data", "contamination", "{corpus}"], "nothing to compare against; give --against-shared DIR"),
        (["data", "contamination", "{corpus}", "--against", "tomi=/nonexistent"], "no such folder for evaluation set 'tomi'"),
        (["data", "contamination", "{corpus}", "--against-shared", ".", "--threshold", "0"], r"--threshold 0.0 is outside \(0, 1\]"),
        (["data", "contamination", "{corpus}", "--against-shared", ".", "--threshold", "1.5"], r"--threshold 1.5 is outside \(0, 1\]"),
    ],
)  # fmt: skip
def test_bad_input_gets_one_line_and_exit_code_2(args, message, corpus, capsys, monkeypatch):
    import re

    code, _, err = cli(capsys, monkeypatch, *(a.format(corpus=corpus) for a in args))
    assert code == 2, err
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------------ eval-set loaders


def test_detokenize_empathetic_dialogues():
    assert detokenize_ed("we do n't know , it 's late .") == "we don't know, it's late."


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.mark.parametrize("name", list(EVAL_SETS))
def test_loader_reads_the_real_set(name, shared_data):
    if not (shared_data / name).is_dir():
        pytest.skip(f"{name} not in {shared_data}")
    texts = load_eval_set(name, shared_data / name)
    assert len(texts) > 100
    assert all(isinstance(t.text, str) and t.text.strip() and t.where for t in texts)
    assert len({t.text for t in texts}) == len(texts), "distinct"


def test_loaders_extract_the_right_part(shared_data):
    found = shared_eval_sets(shared_data)
    assert set(found) <= set(EVAL_SETS) and found
    texts = {name: load_eval_set(name, folder) for name, folder in found.items()}
    if "emobench" in texts:
        assert texts["emobench"][0].text.startswith("Dorea was trying to cook a Baklava")
    if "eq_bench" in texts:
        assert not any("Your task is to predict" in t.text or "[End dialogue]" in t.text for t in texts["eq_bench"])
    if "esconv" in texts:
        assert not any(t.text.startswith(("1.0 0 ", "0.0 1 ", "[")) for t in texts["esconv"])
    if "empathetic_dialogues" in texts:
        assert not any(" n't" in t.text or t.text.endswith(" .") for t in texts["empathetic_dialogues"])
    if "counsel_chat" in texts:
        assert any(t.where.endswith("answerText") for t in texts["counsel_chat"])


def test_make_record_is_valid():
    from personafuse.data.schema import SituationRecord

    record = SituationRecord.model_validate(make_record("x-1"))
    assert list(record.responses) == list(POLES)
