"""CLI verb of the service: invemb serve."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    from invemb.cli import user_errors

    @app.command("serve")
    @user_errors
    def serve_cmd(
        model: str = typer.Option(..., help="encoder to serve: a run folder, an HF folder, or `backbone`"),
        controller: Optional[Path] = typer.Option(None, help="controller run folder, to enable POST /v1/invert"),
        host: str = typer.Option("127.0.0.1", help="address to bind (loopback by default)"),
        port: int = typer.Option(8000, help="port to bind (0: any free port)"),
        api_key: Optional[str] = typer.Option(None, envvar="INVEMB_API_KEY", show_envvar=True,
                                              help="require 'Authorization: Bearer KEY' on /v1/*"),
        name: Optional[str] = typer.Option(None, help="model name reported in responses (default: the folder name)"),
        set_: List[str] = typer.Option([], "--set", help="ServeConfig override key=value, e.g. max_wait_ms=2 (repeat)"),
        log_level: str = typer.Option("info", help="uvicorn log level: critical | error | warning | info | debug"),
        runtime: str = typer.Option("torch", help="runtime: torch | onnx (onnxruntime, CPU; EM runs and HF folders) | bf16 (bfloat16 where the hardware has it: the backbone of an EM run or HF folder, the whole model of a scratch or tiered run)"),
        decode_sets: List[str] = typer.Option([], "--decode", help="the controller's decoding override KEY=VALUE, e.g. bag_weight=0.5 (repeat; needs --controller)"),
        extra_units: bool = typer.Option(True, help="the controller uses the words `invemb index words` added to its run, when it has them (about 1.2 GB more)"),
    ):
        """Serve an encoder over HTTP: OpenAI-compatible POST /v1/embeddings, POST /v1/invert (with
        --controller), GET /healthz, OpenAPI schema at /openapi.json and /docs. Concurrent requests
        are micro-batched: one encoder pass over their texts, in length-sorted chunks of at most
        encode_batch_size texts and encode_batch_chars characters, the freed heap handed back to
        the OS after each chunk (trim_heap); with encode_workers N > 1, N threads, each with its own
        model copy, encode N micro-batches at once.

        \b
        Examples:
          invemb serve --model backbone
          invemb serve --model runs/em-default --runtime onnx
          invemb serve --model runs/em-default --set encode_workers=2
          INVEMB_API_KEY=secret invemb serve --model runs/em-default --controller runs/controller-default --port 8080
          invemb serve --model runs/em-default --controller runs/ctl-mem-all --runtime bf16 --decode bag_weight=0.5
          invemb serve --model runs/em-pairs --controller runs/ctl-mem   # a pair-bound view: its vectors, inverted
          curl -s localhost:8000/v1/embeddings -H 'Content-Type: application/json' -d '{"input": ["a cat"]}'

        Limits and batching (--set): max_batch_texts, max_wait_ms, encode_batch_size, encode_batch_chars,
        max_texts_per_request,
        max_chars_per_text, max_body_bytes, max_queued_texts, max_beam, max_pending_inversions, invert_batch, access_log,
        trim_heap, encode_workers.
        """
        from invemb.config import parse_overrides
        from invemb.serve.app import ServeConfig, is_loopback, serve

        if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError(f"unknown log level {log_level!r}")
        cfg = ServeConfig().replace(**parse_overrides(set_)).replace(host=host, port=port).check()
        if controller is not None and not controller.exists():
            raise FileNotFoundError(f"{controller}: no such controller run folder")
        decode = parse_overrides(decode_sets)
        if not is_loopback(host) and not api_key:
            typer.echo(f"warning: serving on {host} without an API key (set --api-key or INVEMB_API_KEY)", err=True)
        serve(model, str(controller) if controller else None, cfg, api_key=api_key, name=name, log_level=log_level,
              runtime=runtime, decode=decode, extra_units=extra_units)
