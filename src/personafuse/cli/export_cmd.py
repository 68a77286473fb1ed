"""`personafuse export`: a merged fixed-persona model, or K folded prototype adapters + a sidecar router."""

from __future__ import annotations

from pathlib import Path

import typer

from personafuse.cli.common import DEVICE_OPTION, JSON_OPTION, MODEL_OPTION, console, print_json, quiet_libraries


def _check_arguments(out: Path | None, merged: bool, persona: str | None, prototypes: int | None,
                     corpus: Path | None) -> str | None:  # fmt: skip
    """The first problem with the flag combination, as one line, or None."""
    if out is None:
        return "--out is required: the folder to write the export into"
    if merged == (prototypes is not None):
        return "choose one export: --merged --persona 'A+=0.7,N-=0.3', or --prototypes K --corpus data/seed"
    if merged:
        if persona is None:
            return "--merged needs --persona, the fixed mix to merge, e.g. --persona 'A+=0.7,N-=0.3'"
        if corpus is not None:
            return "--corpus applies to --prototypes only; drop it for --merged"
        return None
    if persona is not None:
        return "--persona applies to --merged only; --prototypes takes its mixes from --corpus"
    if prototypes is not None and prototypes < 1:
        return f"--prototypes must be >= 1, got {prototypes}"
    if corpus is None:
        return "--prototypes needs --corpus, a JSONL file or folder of chats to cluster (e.g. data/seed)"
    if not corpus.exists():
        return f"--corpus {corpus} does not exist; give a JSONL file or a folder of *.jsonl (e.g. data/seed)"
    return None


def export(
    model: str = MODEL_OPTION,
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (must be new or empty)."),
    merged: bool = typer.Option(False, "--merged", help="Write a plain HF model with --persona merged in."),
    persona: str | None = typer.Option(None, "--persona", help="Fixed mix to merge, e.g. 'A+=0.7,N-=0.3'."),
    prototypes: int | None = typer.Option(None, "--prototypes", "-k", help="Cluster the corpus into K adapters."),
    corpus: Path | None = typer.Option(None, "--corpus", help="JSONL file or folder of chats (with --prototypes)."),
    seed: int = typer.Option(0, "--seed", help="k-means seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
    device: str | None = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Export for engines beyond one machine (vLLM, LoRAX, SGLang, plain transformers); see docs/export.md."""
    from personafuse.cli.errors import fail
    from personafuse.export.folder import check_target
    from personafuse.traits import parse_persona_spec

    problem = _check_arguments(out, merged, persona, prototypes, corpus)
    if problem:
        fail(problem)
    assert out is not None
    spec = None
    if merged:
        spec = "off" if persona == "off" else parse_persona_spec(str(persona))
    check_target(out, overwrite)  # fail before spending time on loading the model
    quiet_libraries()
    from personafuse.loading import load_model

    with console.status(f"loading {model}", spinner="dots"):
        pf = load_model(model, device=device)
    if merged:
        from personafuse.export import export_merged

        with console.status(f"merging the persona into the base weights and writing {out}", spinner="dots"):
            folder = export_merged(pf, spec, out, overwrite=overwrite)
        gates = pf.gates_of(spec).tolist()  # type: ignore[union-attr]
        if as_json:
            from personafuse.traits import POLES

            print_json({"kind": "merged", "out": str(folder), "gates": {p: round(g, 6) for p, g in zip(POLES, gates)}})
        else:
            console.print(f"[green]wrote[/] {folder}: a plain Hugging Face model with the persona merged in")
        return
    from personafuse.export import export_prototypes

    assert prototypes is not None and corpus is not None
    with console.status(f"routing {corpus}, clustering into {prototypes} prototypes, writing {out}", spinner="dots"):
        result = export_prototypes(pf, corpus, out, prototypes, seed=seed, overwrite=overwrite)
    if as_json:
        print_json({
            "kind": "prototypes",
            "out": str(result.folder),
            "prototypes": [{"name": p.name, "size": p.size, "rank": r, "label": p.label}
                           for p, r in zip(result.prototypes, result.ranks)],
            "vllm_max_lora_rank": result.vllm_max_lora_rank,
            "vllm_command": result.vllm_command(),
        })  # fmt: skip
        return
    from rich.table import Table

    table = Table(title=f"{len(result.prototypes)} persona prototypes in {result.folder}", box=None)
    for column in ("adapter", "contexts", "rank", "main poles"):
        table.add_column(column)
    for p, rank in zip(result.prototypes, result.ranks):
        table.add_row(p.name, str(p.size), str(rank), p.label)
    console.print(table)
    console.print(f"serve them with:\n  {result.vllm_command()}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("export")(export)
