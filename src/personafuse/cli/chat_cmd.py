"""`personafuse chat`: one-shot or interactive chat, showing the routing beside each reply."""

from __future__ import annotations

import typer

from personafuse.cli.common import DEVICE_OPTION, JSON_OPTION, MODEL_OPTION, console, print_json, quiet_libraries


def chat(
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="One message; omit for an interactive chat."),
    persona: str | None = typer.Option(None, "--persona", help="Fixed gates, e.g. 'A+=0.7,N-=0.3'; 'off' = base."),
    compare: bool = typer.Option(False, "--compare", help="Also show the base model's reply to each message."),
    model: str = MODEL_OPTION,
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Reply length limit in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy decoding."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    device: str | None = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Chat with a PersonaFuse model; each reply shows its trait activation and expert gates."""
    import torch

    from personafuse.cli.common import routing_table
    from personafuse.cli.errors import fail
    from personafuse.traits import Activation, Gates, Routing, parse_persona_spec

    if prompt is not None and not prompt.strip():
        fail("--prompt is empty; give a message or omit --prompt for an interactive chat")
    spec = None if persona is None else ("off" if persona == "off" else parse_persona_spec(persona))
    quiet_libraries()
    from personafuse.loading import load_model

    pf = load_model(model, device=device)
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        kwargs["temperature"] = temperature
    history: list[dict[str, str]] = []

    def turn(message: str) -> None:
        torch.manual_seed(seed)
        history.append({"role": "user", "content": message})
        routed = pf.persona_router.route(message if persona is None else [message])[0]
        replies, gates = pf.generate_with_gates([history], persona=spec, **kwargs)
        routing = Routing(routed.activation, Gates(tuple(gates[0].clamp_min(0).tolist())), message)
        if persona is not None:
            routing = Routing(routed.activation if spec != "off" else Activation((0.0,) * 5), routing.gates, message)
        base_reply = None
        if compare:
            with pf.experts_disabled():
                torch.manual_seed(seed)
                base_reply = pf.generate([history], persona="off", **kwargs)[0]
        history.append({"role": "assistant", "content": replies[0]})
        if as_json:
            out = {"prompt": message, "reply": replies[0], "persona": routing.as_dict()}
            if compare:
                out["base_reply"] = base_reply
            print_json(out)
            return
        console.print(routing_table(routing))
        console.print(f"[bold green]personafuse:[/] {replies[0]}")
        if compare:
            console.print(f"[bold]base:[/] {base_reply}")

    if prompt is not None:
        turn(prompt)
        return
    console.print("[dim]Interactive chat; an empty line or Ctrl-D ends it.[/]")
    while True:
        try:
            message = console.input("[bold]you:[/] ")
        except EOFError:
            break
        if not message.strip():
            break
        turn(message)


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("chat")(chat)
