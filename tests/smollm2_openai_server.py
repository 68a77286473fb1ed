"""A real model behind the scripted OpenAI-compatible app: the "model" hook runs a transformers causal LM,
batching the requests that arrive together (CPU throughput at batch 4 is several times that at batch 1).

For the slow synthesis test and for timing a synthesis run by hand until `personafuse serve` exists:

    HF_HUB_OFFLINE=1 python tests/smollm2_openai_server.py --port 8001 &
    personafuse synthesize --base-url http://127.0.0.1:8001/v1 --model smollm2 --out /tmp/syn ...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import queue
import threading
import time
from typing import Any

from scripted_openai_server import ModelReply, ScriptedServer, serve

logger = logging.getLogger(__name__)


class BatchedChatModel:
    """Generate replies for chat-completion request bodies, up to ``max_batch`` at a time, in one worker thread."""

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch: int = 4, wait_s: float = 0.05, threads: int | None = 1
    ) -> None:
        """``threads``: torch intra-op threads (process-wide). One by default: on a shared 2-core machine, two
        spinning OpenMP threads made a 16-token generation 98 s instead of 8 s; ``None`` keeps torch's choice."""
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[tuple[dict[str, Any], asyncio.Future[ModelReply], asyncio.AbstractEventLoop]] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    async def __call__(self, body: dict[str, Any]) -> ModelReply:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ModelReply] = loop.create_future()
        self._queue.put((body, future, loop))
        return await future

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                replies = self._generate([body for body, _, _ in batch])
            except Exception as exc:  # hand the error to every waiting request; the server answers 500
                logger.exception("generation failed")
                for _, future, loop in batch:
                    loop.call_soon_threadsafe(_set_exception, future, exc)
                continue
            for (_, future, loop), reply in zip(batch, replies):
                loop.call_soon_threadsafe(_set_result, future, reply)

    def _generate(self, bodies: list[dict[str, Any]]) -> list[ModelReply]:
        import torch

        tok = self.tokenizer
        texts = [tok.apply_chat_template(b["messages"], add_generation_prompt=True, tokenize=False) for b in bodies]
        encoded = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        max_new = max(int(b.get("max_tokens") or 256) for b in bodies)
        temperature = float(bodies[0].get("temperature", 0.7) or 0.0)
        if bodies[0].get("seed") is not None:
            torch.manual_seed(int(bodies[0]["seed"]))
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature > 0 else {"do_sample": False}
        )
        with torch.inference_mode():
            out = self.model.generate(**encoded, max_new_tokens=max_new, pad_token_id=tok.pad_token_id, **sampling)
        prompt_len = encoded["input_ids"].shape[1]  # left-padded: every row's prompt ends here
        replies = []
        for row, body in enumerate(bodies):
            generated = out[row, prompt_len:].tolist()
            if tok.eos_token_id in generated:
                generated = generated[: generated.index(tok.eos_token_id) + 1]
            limit = int(body.get("max_tokens") or 256)
            generated = generated[:limit]
            finish = "length" if len(generated) >= limit and tok.eos_token_id not in generated else "stop"
            replies.append(
                ModelReply(
                    text=tok.decode(generated, skip_special_tokens=True),
                    prompt_tokens=int(encoded["attention_mask"][row].sum()),
                    completion_tokens=len(generated),
                    finish_reason=finish,
                )
            )
        return replies


def _set_result(future: asyncio.Future[ModelReply], reply: ModelReply) -> None:
    if not future.done():
        future.set_result(reply)


def _set_exception(future: asyncio.Future[ModelReply], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


def main() -> None:
    """Serve a base model (default the SmolLM2 alias) on 127.0.0.1 until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()

    from personafuse.models import load_base_model

    model, tokenizer = load_base_model(args.model, device=args.device)
    server = ScriptedServer(
        model=BatchedChatModel(model, tokenizer, max_batch=args.max_batch, threads=args.threads or None)
    )
    with serve(server.create_app(), port=args.port) as url:
        print(f"serving {args.model} at {url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
