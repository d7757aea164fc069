"""The ``invert`` subcommand: an image's x_T by DDIM inversion, its reconstruction, and optionally the same x_T
decoded under another label (:mod:`engine.sampling.invert`)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    from . import add_model_args

    p = sub.add_parser("invert", help="DDIM-invert an image to its x_T, decode it back, print the PSNR")
    add_model_args(p)
    p.add_argument("--image", required=True, help="a PNG/JPEG image; centre-cropped and resized to the model's size")
    p.add_argument("--label", type=int, default=None,
                   help="class-conditional models: the image's class (default: the 'no label' row)")
    p.add_argument("--steps", type=int, default=50, help="DDIM levels for both directions (default 50)")
    p.add_argument("--to-label", type=int, default=None,
                   help="class-conditional models: also decode the x_T under this class with the default guidance "
                        "(the image redrawn as that class)")
    p.add_argument("--out", required=True, help="output .npz: x_T float32 (1, C, H, W); image, reconstruction "
                                                "(and edited) uint8 (1, H, W, C)")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=run_invert)


def run_invert(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..devices import resolve_device
    from ..io.images import image_as_x0, to_uint8
    from ..io.loader import load_model
    from ..sampling.invert import decode, invert
    from . import UserError

    if not str(args.out).lower().endswith(".npz"):
        raise UserError(f"--out must end in .npz, got {args.out!r}")
    try:
        img = Image.open(args.image)
        img.load()
    except OSError as e:
        raise UserError(f"--image: cannot read {args.image!r} ({type(e).__name__})") from None
    device = resolve_device(args.device)
    m = load_model(args.model, device, args.uncond_model)
    for flag, value in (("--label", args.label), ("--to-label", args.to_label)):
        if value is not None and not 0 <= value < m.num_classes:
            raise UserError(f"{flag} must be a class in [0, {m.num_classes - 1}], got {value}" if m.num_classes
                            else f"{flag}: this model is unconditional")
    c, size, _ = m.sample_shape
    x0 = image_as_x0(img, c, size, m.card.value_range)
    inv = invert(m, x0, args.steps, args.label, device)
    vr = m.card.value_range
    arrays = {"x_T": inv.x_T.cpu().numpy(), "image": to_uint8(x0, vr).numpy(),
              "reconstruction": to_uint8(inv.reconstruction, vr).numpy()}
    if args.to_label is not None:
        arrays["edited"] = to_uint8(decode(m, inv.x_T, args.steps, args.to_label, device, guided=True), vr).numpy()
    np.savez(args.out, **arrays)
    print(json.dumps({"psnr": round(float(inv.psnr[0]), 2), "steps": args.steps, "evaluations": 2 * args.steps
                      + (args.steps if args.to_label is not None else 0), "label": args.label,
                      "to_label": args.to_label, "out": args.out}))
    return 0
