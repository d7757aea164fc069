"""The ``ddpm`` console script: the engine's subcommands plus ``serve``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import SimpleNamespace

from engine import UserError, build_parser, dispatch


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the model, the page and the streaming API (env: DDPM_*)")
    p.add_argument("--model", help="model file or diffusers folder (env DDPM_MODEL; default: the bundled model)")
    p.add_argument("--uncond-model", metavar="FILE|none",
                   help="class-conditional models: an unconditional model file answering the 'no label' rows "
                        "(guidance's eps_u), or 'none' (env DDPM_UNCOND_MODEL; default: the bundled model's prior "
                        "for the bundled model, else none)")
    p.add_argument("--host", help="bind address (env DDPM_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (env DDPM_PORT; default 8000)")
    p.add_argument("--device", help="auto, cpu or cuda (env DDPM_DEVICE; default auto)")
    p.add_argument("--max-batch", type=int, help="samples per forward and max n per job (env DDPM_MAX_BATCH)")
    p.add_argument("--max-active-jobs", type=int, help="jobs stepped together (env DDPM_MAX_ACTIVE_JOBS)")
    p.add_argument("--max-queue", type=int, help="waiting jobs before 429 (env DDPM_MAX_QUEUE)")
    p.add_argument("--frame-every-min", type=int, help="floor on jobs' frame_every (env DDPM_FRAME_EVERY_MIN)")
    p.add_argument("--max-jobs-per-client", type=int,
                   help="live jobs one client address may hold; 0: no limit (env DDPM_MAX_JOBS_PER_CLIENT)")
    p.add_argument("--trusted-proxies", help="comma-separated proxies whose X-Forwarded-For names the client "
                                             "(env DDPM_TRUSTED_PROXIES)")
    p.add_argument("--cors-origins", help="comma-separated origins allowed to call the API (env DDPM_CORS_ORIGINS)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from engine import DEFAULT_MODEL, SamplingSpec, SpecError, complete, prior_for, read_card, resolve_device

    from .main import create_app
    from .settings import Settings

    try:
        settings = Settings.load(model=args.model, uncond_model=args.uncond_model, host=args.host, port=args.port,
                                 device=args.device,
                                 max_batch=args.max_batch, max_active_jobs=args.max_active_jobs,
                                 max_queue=args.max_queue, frame_every_min=args.frame_every_min,
                                 max_jobs_per_client=args.max_jobs_per_client, trusted_proxies=args.trusted_proxies,
                                 cors_origins=args.cors_origins)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0])
        env = f"DDPM_{name.upper()}"
        where = f"--{name.replace('_', '-')} (env {env})" if hasattr(args, name) else env
        raise UserError(f"{where}: {err['msg']}") from None
    from pathlib import Path

    resolve_device(settings.device)  # fail fast on a bad --device, as on a bad model file below
    model = Path(settings.model) if settings.model else DEFAULT_MODEL
    if not model.is_dir():
        card = read_card(model)  # fail fast with a one-line message, before uvicorn starts
        # The operator's sampling defaults against this model, as every request will be (complete() reads only T
        # and the classes).
        facts = SimpleNamespace(diffusion=SimpleNamespace(T=card.diffusion.T), num_classes=card.model.num_classes)
        try:
            complete(SamplingSpec(seed=0), facts, settings.sampling_defaults)  # type: ignore[arg-type]
        except SpecError as e:
            raise UserError(f"DDPM_{e.field.upper()}: {e.message}") from None
    prior = prior_for(settings.model, settings.uncond_model)
    if prior is not None and not Path(prior).is_dir():
        read_card(prior)
    with_prior = f" ('no label' rows: {prior})" if prior is not None else ""
    print(f"Serving {model}{with_prior} on http://{settings.host}:{settings.port}", flush=True)
    # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from any loopback peer, and which
    # proxies to believe is DDPM_TRUSTED_PROXIES' call alone (app.http.security).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                timeout_graceful_shutdown=5, proxy_headers=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser, sub = build_parser("ddpm")
    _add_serve(sub)
    return dispatch(parser, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
