"""Sample-quality metrics: bits/dim, the digit-classifier metrics (FLD, confident share, class
entropy), memorization, and FID from local Inception weights.

The real-data reference figures come from the same functions on real images, so a target such as
"FLD within 3× of real-vs-real" compares like with like. Every image set is on the 8-bit grid
(generated samples go through :func:`engine.io.images.to_uint8` first, as a saved PNG would), so a
metric never sees a difference that only rounding makes.

Choices, documented once:
- **FLD** compares a set's classifier features with those of the 4500-image train split. The
  real-vs-real reference is the 500 held-out digits against the same train statistics. A Fréchet
  distance is biased upwards by small sets, so n ≥ 500 samples make the comparison fair or
  conservative for the model.
- **Near-copies**: a sample is a near-copy when its pixel-space L2 distance to the nearest training
  image is below the ``copy_percentile``-th percentile of the held-out→train nearest distances.
  The default, 0, is the minimum: "closer to a training image than any unseen real image is".
  A model that generalizes like real data then scores ≈ 1/(held-out + 1) (≈ 0.2% on MNIST-5k),
  so a bar such as "< 1 % near-copies" separates it from one that reproduces training images. With a
  percentile p, real unseen data scores ≈ p%. Distances are in [−1, 1] pixel units over C·H·W values.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..data.datasets import ImageData, load_dataset
from ..diffusion.likelihood import bits_per_dim
from ..diffusion.likelihood_ode import eps_fn_of, likelihood_sde, ode_bits_per_dim
from ..diffusion.sde import VPSDE
from ..io.images import from_uint8, to_uint8
from ..io.modelfile import LoadedModel
from ..sampling import DEFAULT_SPACING, OdePlan, SamplingRun, SamplingSpec, complete, resolve, run_frames
from ..sampling.spec import SAMPLER_FIELDS
from .classifier import DigitClassifier, load_classifier
from .sample_cache import SampleCache, file_digest

CONFIDENCE = 0.9
COPY_PERCENTILE = 0.0  # the minimum; see the module docstring
DIGIT_DATASETS = ("mnist5k", "mnist")
BpdMethod = Literal["bound", "ode"]
#: How bits/dim is measured: the variational bound alone, or also the exact likelihood by the probability-flow ODE.
BPD_METHODS: tuple[BpdMethod, ...] = ("bound", "ode")


class MetricsError(ValueError):
    """A metric that cannot run as asked (missing package, missing weights, bad argument)."""


# ------------------------------------------------------------------------------ Fréchet distance
def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) for means ``(D,)`` and covariances ``(D, D)``, in float64.

    Tr((Σ1Σ2)^½) is Σ √λ of Σ1^½ Σ2 Σ1^½, which is symmetric PSD and has the eigenvalues of Σ1Σ2;
    this avoids the complex square roots a general matrix sqrt returns for near-singular products.
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    w, v = torch.linalg.eigh(cov1)
    s1 = (v * w.clamp(min=0).sqrt()) @ v.T
    m = s1 @ cov2 @ s1
    lam = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0)
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * lam.sqrt().sum())


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of features ``(N, D)``, N ≥ 2."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise MetricsError(f"Fréchet statistics need ≥ 2 feature rows (N, D), got shape {tuple(features.shape)}")
    f = features.double()
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def feature_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to features ``a (N, D)`` and ``b (M, D)``."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# ------------------------------------------------------------------------------ classifier metrics
@torch.no_grad()
def classify(clf: DigitClassifier, images: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
    """Penultimate features ``(N, 128)`` and class probabilities ``(N, 10)`` on the CPU, for
    images ``(N, 1, 28, 28)`` in [−1, 1]."""
    feats, probs = [], []
    dev = next(clf.parameters()).device
    for i in range(0, images.shape[0], batch):
        f = clf.features(images[i : i + batch].to(dev).float())
        feats.append(f.cpu())
        probs.append(torch.softmax(clf.fc2(f), dim=1).cpu())
    return torch.cat(feats), torch.cat(probs)


def class_entropy(probs: Tensor) -> float:
    """Entropy of the predicted-class histogram of ``probs (N, K)``, divided by log K.

    1 means every class is predicted equally often, 0 means a single class (mode collapse).
    """
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum() / math.log(probs.shape[1]))


def within_class_distance(images: Tensor, classes: Tensor) -> float:
    """Diversity inside classes: the mean pixel-space L2 distance between two of ``images (N, ...)`` of the
    same class ``(N,)``, averaged over the classes that have at least two (NaN if none has).

    Guidance that collapses each class onto one prototype drives this down while accuracy rises.
    """
    flat, means = images.flatten(1).double(), []
    for c in classes.unique():
        rows = flat[classes.to(flat.device) == c]
        if len(rows) > 1:
            d = torch.pdist(rows)
            means.append(d.mean())
    return float(torch.stack(means).mean()) if means else float("nan")


def confident_share(probs: Tensor, threshold: float = CONFIDENCE) -> float:
    """Share of rows of ``probs (N, K)`` whose top class has probability ≥ ``threshold``."""
    return float((probs.max(1).values >= threshold).double().mean())


# ------------------------------------------------------------------------------ memorization
def class_accuracy(images: Tensor, asked: Tensor, num_classes: int, device: torch.device | str = "cpu") -> float:
    """The share of digits whose most probable class is the one asked for (rows asking no class are skipped)."""
    clf, _ = load_classifier(device=device)
    _, probs = classify(clf, images)
    keep = asked < num_classes
    return float((probs.argmax(1).cpu()[keep] == asked[keep]).double().mean())


def nearest_distances(samples: Tensor, train: Tensor, batch: int = 256) -> Tensor:
    """Pixel-space L2 distance ``(N,)`` from each of ``samples (N, ...)`` to its nearest row of ``train (M, ...)``."""
    tr = train.flatten(1).double()
    out = [torch.cdist(samples[i : i + batch].flatten(1).double().to(tr.device), tr).min(1).values
           for i in range(0, samples.shape[0], batch)]
    return torch.cat(out).cpu()


def copy_threshold(held_out: Tensor, train: Tensor, percentile: float = COPY_PERCENTILE) -> float:
    """The near-copy distance: the ``percentile``-th percentile of held-out→train nearest distances."""
    if not 0.0 <= percentile <= 100.0:
        raise MetricsError(f"copy percentile must lie in [0, 100], got {percentile}")
    return float(torch.quantile(nearest_distances(held_out, train), percentile / 100.0))


def memorization(samples: Tensor, train: Tensor, threshold: float) -> dict[str, float]:
    """Nearest-training-image distances of ``samples`` and the share closer than ``threshold``."""
    d = nearest_distances(samples, train)
    return {
        "near_copy_share": float((d < threshold).double().mean()),
        "nn_distance_min": float(d.min()),
        "nn_distance_median": float(d.median()),
    }


# ------------------------------------------------------------------------------ image helpers
def quantize(x: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """``(N, C, H, W)`` → the same on the 8-bit grid (as a saved PNG holds it), float32 in ``value_range``."""
    return from_uint8(to_uint8(x, value_range), value_range)


class DigitMetrics:
    """The digit metrics against MNIST-5k: classifier features/confidence/entropy and memorization.

    Builds the reference statistics once (train-split features, the near-copy threshold); call
    :meth:`evaluate` for any set of digits and :meth:`reference` for the real held-out figures.
    """

    def __init__(self, device: torch.device | str = "cpu", copy_percentile: float = COPY_PERCENTILE,
                 train: ImageData | None = None, test: ImageData | None = None) -> None:
        self.clf, self.facts = load_classifier(device=device)
        self.train = train if train is not None else load_dataset("mnist5k", "train")
        self.test = test if test is not None else load_dataset("mnist5k", "test")
        train_feats, _ = classify(self.clf, self.train.images)
        self.train_stats = gaussian_stats(train_feats)
        self.copy_percentile = copy_percentile
        self.copy_threshold = copy_threshold(self.test.images, self.train.images, copy_percentile)

    def evaluate(self, images: Tensor) -> dict[str, float]:
        """Metrics of digits ``(N, 1, 28, 28)`` in [−1, 1], N ≥ 2."""
        if tuple(images.shape[1:]) != (1, 28, 28):
            raise MetricsError(f"digit metrics need images (N, 1, 28, 28), got {tuple(images.shape)}")
        feats, probs = classify(self.clf, images)
        return {
            "fld": frechet_distance(*gaussian_stats(feats), *self.train_stats),
            "confident_share": confident_share(probs),
            "class_entropy": class_entropy(probs),
            "within_class_distance": within_class_distance(images, probs.argmax(1)),
            **memorization(images, self.train.images, self.copy_threshold),
        }

    def accuracy(self) -> float:
        """The classifier's accuracy on the held-out digits, measured now."""
        _, probs = classify(self.clf, self.test.images)
        return float((probs.argmax(1) == self.test.labels).double().mean())

    def reference(self) -> dict[str, float]:
        """The same metrics for the held-out real digits (real-vs-real), with the classifier's
        held-out accuracy and the near-copy threshold."""
        return {**self.evaluate(self.test.images), "images": len(self.test),
                "classifier_held_out_accuracy": self.accuracy(), "copy_threshold": self.copy_threshold,
                "copy_percentile": self.copy_percentile}


# ------------------------------------------------------------------------------ FID (local weights only)
def _load_inception(weights_path: str | Path, device: torch.device | str) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 with weights read from a local file; nothing is downloaded.

    torch-fidelity unpickles the file it is given, so the user's file is read here without pickle
    code (safetensors, or ``torch.load(weights_only=True)``) and handed over as a tensors-only copy.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise MetricsError(f"--fid-weights: no such file {path} (give a local InceptionV3 weights file; "
                           "nothing is downloaded)")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise MetricsError("FID needs the torch-fidelity package: pip install torch-fidelity "
                           "(torchmetrics' FrechetInceptionDistance uses it too)") from None
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is the same user error
        raise MetricsError(f"--fid-weights {path}: not a readable tensors file ({type(e).__name__})") from None
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "inception.pt"
        torch.save({k: v for k, v in state.items() if isinstance(v, Tensor)}, clean)
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=str(clean))
        except RuntimeError as e:
            raise MetricsError(f"--fid-weights {path}: not InceptionV3 FID weights "
                               f"({str(e).splitlines()[0][:120]})") from None
    return net.to(device)


@torch.no_grad()
def inception_features(net: torch.nn.Module, images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0),
                       batch: int = 100) -> Tensor:
    """2048-d pool features ``(N, 2048)`` of images ``(N, C, H, W)``; grey images are repeated to RGB."""
    dev = next(net.parameters()).device
    out = []
    for i in range(0, images.shape[0], batch):
        u = to_uint8(images[i : i + batch], value_range).permute(0, 3, 1, 2)
        if u.shape[1] == 1:
            u = u.expand(-1, 3, -1, -1)
        out.append(net(u.contiguous().to(dev))[0].double().cpu())
    return torch.cat(out)


def fid_from_local_weights(real: Tensor, fake: Tensor, weights_path: str | Path,
                           device: torch.device | str = "cpu",
                           value_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """FID between image sets ``(N, C, H, W)`` with InceptionV3 weights from ``weights_path``."""
    net = _load_inception(weights_path, device)
    return feature_distance(inception_features(net, real, value_range), inception_features(net, fake, value_range))


# ------------------------------------------------------------------------------ the whole evaluation
def batch_runs(loaded: LoadedModel, spec: SamplingSpec, batch_size: int) -> list[SamplingRun]:
    """The sampling jobs of an evaluation: batch i is ``spec`` for its share of the images with seed ``seed + i``,
    resolved as a server job is (labels first, from the batch's generator). ``labels="each"`` cycles the
    classes across batches; a per-sample list is split among them."""
    seed = 0 if spec.seed is None else spec.seed
    runs, start = [], 0
    for b, n in enumerate(min(batch_size, spec.n - i) for i in range(0, spec.n, batch_size)):
        labels = spec.labels
        if loaded.num_classes and labels == "each":
            labels = [(start + i) % loaded.num_classes for i in range(n)]
        elif isinstance(labels, list):
            labels = labels[start:start + n]
        runs.append(resolve(spec.replace(n=n, seed=seed + b, labels=labels), loaded))
        start += n
    return runs


def generate(loaded: LoadedModel, spec: SamplingSpec, batch_size: int, device: torch.device | str,
             progress: bool = True, cache: SampleCache | None = None) -> Tensor:
    """``spec.n`` images ``(N, C, H, W)`` on the 8-bit grid, on the CPU (see :func:`batch_runs`).

    Each batch equals ``ddpm sample --n <its size> --seed <seed + i>`` with the same options. With a
    ``cache``, each finished batch is stored there and a batch already stored is read back instead of drawn
    again (a killed evaluation resumes).
    """
    spec = complete(spec.replace(seed=0 if spec.seed is None else spec.seed), loaded)
    runs = batch_runs(loaded, spec, batch_size)
    plan = runs[0].plan
    tag = _cache_tag(spec, plan.K, loaded.diffusion.T)
    if loaded.prior_path is not None:
        tag += f"-prior{file_digest(loaded.prior_path, 8)}"
    bar = None
    adaptive = isinstance(plan, OdePlan)  # its evaluations are known only at the end: the bar counts batches
    per_batch = 1 if adaptive else plan.K
    if progress:
        from tqdm.auto import tqdm

        what = plan.sampler if adaptive else f"{plan.sampler} {plan.K} steps"
        bar = tqdm(total=len(runs) * per_batch, desc=f"eval: {spec.n} samples, {what}",
                   unit="batch" if adaptive else "step")
    chunks = []
    for run in runs:
        seed = run.spec.seed
        assert seed is not None
        u = cache.load(tag, seed, run.shape) if cache is not None else None
        if u is None:
            last = None
            for last in run_frames(run, loaded, device):  # noqa: B007
                if bar is not None and not adaptive:
                    bar.update(1)
            if bar is not None and adaptive:
                bar.update(1)
            assert last is not None
            u = to_uint8(last.x_t, loaded.card.value_range).permute(0, 3, 1, 2).contiguous()
            if cache is not None:
                cache.store(tag, seed, u)
        elif bar is not None:
            bar.update(per_batch)
        chunks.append(from_uint8(u.permute(0, 2, 3, 1), loaded.card.value_range))  # the cache holds NCHW
    if bar is not None:
        bar.close()
    return torch.cat(chunks)


def requested_labels(loaded: LoadedModel, spec: SamplingSpec, batch_size: int) -> Tensor:
    """The labels :func:`generate` asked for, ``(N,)`` (``num_classes`` for "no label")."""
    return torch.cat([run.cond.labels for run in batch_runs(loaded, spec, batch_size) if run.cond is not None])


def _cache_tag(spec: SamplingSpec, steps: int, T: int) -> str:
    """What a cached batch was drawn with, besides the model, seed and size."""
    eta = spec.eta if spec.eta is not None else 1.0
    tag = f"{spec.sampler}{steps}-eta{eta:g}"
    if spec.spacing not in (DEFAULT_SPACING, None):
        tag += f"-{spec.spacing}"
    for name in ("snr", "corrector_steps", "rtol", "atol"):  # set for the samplers that take them only
        if getattr(spec, name) is not None:
            tag += f"-{name}{getattr(spec, name):g}"
    if spec.guidance is not None:
        labels = spec.labels
        tag += f"-labels{labels if isinstance(labels, int | str) else hash(tuple(labels or ()))}-g{spec.guidance:g}"
    lo, hi = spec.guidance_interval or (0, T - 1)
    if (lo, hi) != (0, T - 1):
        tag += f"-gi{lo}-{hi}"
    return tag


def _real_data(loaded: LoadedModel, data_root: str | None) -> tuple[ImageData, ImageData] | str:
    """Train and held-out splits of the model's dataset at its size, or why they cannot be loaded."""
    name = loaded.card.data.get("dataset")
    c, h, _ = loaded.sample_shape
    if name is None:
        return "the model file names no dataset"
    if name != "mnist5k" and data_root is None:
        return f"dataset {name!r} needs --data-root"
    try:
        train = load_dataset(name, "train", data_root, image_size=h)
        test = load_dataset(name, "test", data_root, image_size=h)
    except (ValueError, FileNotFoundError, ImportError) as e:
        return f"dataset {name!r} could not be loaded ({str(e).splitlines()[0][:160]})"
    if train.shape[0] != c:
        return f"dataset {name!r} has {train.shape[0]} channels, the model {c}"
    return train, test


def evaluate_model(
    loaded: LoadedModel,
    spec: SamplingSpec = SamplingSpec(n=1000, seed=0),
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    bpd_images: int = 100,
    bpd_timesteps: int | None = 20,
    *,
    data_root: str | None = None,
    fid_weights: str | None = None,
    copy_percentile: float = COPY_PERCENTILE,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    bpd: BpdMethod = "bound",
) -> dict[str, Any]:
    """Sample ``spec.n`` images as ``spec`` asks (see :func:`batch_runs`) and compute every metric that applies
    to the model's data.

    - Digit models (1×28×28, dataset mnist5k/mnist): FLD, confident share, class entropy, and the
      real-data reference figures (``real_*``).
    - Any model whose dataset loads (mnist5k always; others with ``data_root``): memorization,
      and bits/dim on ``bpd_images`` held-out images (``bpd_timesteps=None``: the exact T-term sum;
      an int: the unbiased estimate with that many t per image; ``bpd_images=0`` skips it). ``bpd="ode"`` adds
      the exact likelihood through the probability-flow ODE on the same images (``bpd_ode``, its standard error
      and ``bpd_ode_nfev``, the mean network evaluations per batch; see :mod:`engine.diffusion.likelihood_ode`).
    - FID when ``fid_weights`` is a local InceptionV3 weights file.

    For a class-conditional model, when classes were asked for, ``class_accuracy`` is the share of digits the
    classifier puts in the requested class.

    ``cache_dir`` keeps each finished sampling batch on disk (see :mod:`engine.evaluation.sample_cache`), so
    the same call after an interruption draws only the missing batches.

    Returns a flat JSON-able dict; ``skipped`` lists metrics that did not apply, with the reason.
    """
    check_eval_args(batch_size, bpd_images, bpd_timesteps, copy_percentile, bpd=bpd)
    if spec.guidance_grid is not None:  # the metrics score one configuration; a grid is several
        raise MetricsError("guidance_grid: eval scores one guidance scale at a time; run it once per scale")
    spec = complete(spec.replace(seed=0 if spec.seed is None else spec.seed), loaded)
    sde = _ode_sde(loaded) if bpd == "ode" and bpd_images else None  # before sampling, so a bad schedule shows at once
    if fid_weights is not None and not Path(fid_weights).is_file():
        raise MetricsError(f"--fid-weights: no such file {fid_weights} (a local InceptionV3 weights file; "
                           "nothing is downloaded)")
    real = _real_data(loaded, data_root)  # before sampling, so a data problem shows at once
    t0 = time.perf_counter()
    cache = SampleCache(cache_dir, loaded.path) if cache_dir is not None else None
    images = generate(loaded, spec, batch_size, device, progress, cache)
    out = _run_facts(loaded, spec, batch_size, t0, cache)
    if loaded.num_classes:
        out.update(labels=spec.labels, guidance=spec.guidance, guidance_interval=spec.guidance_interval)
        asked = requested_labels(loaded, spec, batch_size)
        if _is_digit_model(loaded) and bool((asked < loaded.num_classes).any()):
            out["class_accuracy"] = class_accuracy(images, asked, loaded.num_classes, device)
    if isinstance(real, str):
        return {**out, "skipped": _skipped_without_data(loaded, real, fid_weights)}
    train, test = real
    skipped: list[str] = []
    for metrics, why in (
        _quality_metrics(loaded, images, train, test, device, copy_percentile),
        _fid_metrics(loaded, images, test, fid_weights, device),
        _bpd_metrics(loaded, test, bpd_images, bpd_timesteps, batch_size, spec.seed or 0, device, sde, progress),
    ):
        out.update(metrics)
        skipped += why
    out["eval_seconds"] = round(time.perf_counter() - t0, 2)
    out["skipped"] = skipped
    return out


Metrics = tuple[dict[str, Any], list[str]]  # figures, and the reasons for those that were skipped


def _is_digit_model(loaded: LoadedModel) -> bool:
    return loaded.card.data.get("dataset") in DIGIT_DATASETS and loaded.sample_shape == (1, 28, 28)


def _run_facts(loaded: LoadedModel, spec: SamplingSpec, batch_size: int, t0: float,
               cache: SampleCache | None) -> dict[str, Any]:
    """What was sampled, how, and how long it took."""
    out: dict[str, Any] = {
        "model": str(loaded.path), "dataset": loaded.card.data.get("dataset"), "samples": spec.n,
        "unconditional_prior": str(loaded.prior_path) if loaded.prior_path else None,
        "sampler": spec.sampler, "steps": spec.steps, "eta": spec.eta, "seed": spec.seed, "spacing": spec.spacing,
        "batch_size": batch_size, "sampling_seconds": round(time.perf_counter() - t0, 2),
    }
    out.update({name: getattr(spec, name) for name in SAMPLER_FIELDS if getattr(spec, name) is not None})
    if cache is not None:
        out.update(cache_dir=str(cache.root), batches_from_cache=cache.hits)
    return out


def _skipped_without_data(loaded: LoadedModel, why: str, fid_weights: str | None) -> list[str]:
    """Every metric that needs real images, each with the reason the data could not be had."""
    skipped = [f"memorization: {why}", f"bits_per_dim: {why}"]
    is_digits = _is_digit_model(loaded)
    if is_digits or fid_weights:
        skipped.append(f"{'digit metrics' if is_digits else 'fid'}: {why}")
    return skipped


def _quality_metrics(loaded: LoadedModel, images: Tensor, train: ImageData, test: ImageData,
                     device: torch.device | str, copy_percentile: float) -> Metrics:
    """The digit metrics with their real-data reference for digit models; memorization for every model."""
    if not _is_digit_model(loaded):
        thr = copy_threshold(test.images, train.images, copy_percentile)
        return ({**memorization(images, train.images, thr), "copy_threshold": thr, "copy_percentile": copy_percentile},
                ["digit metrics: only for 1x28x28 MNIST models"])
    if images.shape[0] < 2:
        thr = copy_threshold(test.images, train.images, copy_percentile)
        return memorization(images, train.images, thr), ["digit metrics: FLD needs ≥ 2 samples"]
    dm = DigitMetrics(device, copy_percentile=copy_percentile, train=train, test=test)
    out = dm.evaluate(images)
    ref = dm.reference()
    out.update({k: ref.pop(k) for k in ("classifier_held_out_accuracy", "copy_threshold", "copy_percentile")})
    out.update({f"real_{k}": v for k, v in ref.items()})
    return out, []


def _fid_metrics(loaded: LoadedModel, images: Tensor, test: ImageData, fid_weights: str | None,
                 device: torch.device | str) -> Metrics:
    """FID of the samples against the held-out images, when local Inception weights are given."""
    if not fid_weights:
        return {}, ["fid: no --fid-weights given"]
    if images.shape[0] < 2:
        return {}, ["fid: needs ≥ 2 samples"]
    fid = fid_from_local_weights(test.images, images, fid_weights, device, loaded.card.value_range)
    return {"fid": fid, "fid_real_images": len(test)}, []


def _ode_sde(loaded: LoadedModel) -> VPSDE:
    """The VP-SDE whose probability-flow ODE gives the model's exact likelihood, or MetricsError."""
    try:
        return likelihood_sde(loaded.diffusion.schedule)
    except ValueError as e:
        raise MetricsError(f"bits/dim by the ODE (--bpd ode): {e}") from None


def _bpd_metrics(loaded: LoadedModel, test: ImageData, bpd_images: int, bpd_timesteps: int | None,
                 batch_size: int, seed: int, device: torch.device | str, sde: VPSDE | None,
                 progress: bool = False) -> Metrics:
    """Bits/dim on ``bpd_images`` held-out images; batch i's t are drawn with seed + i. With ``sde``, also by
    the probability-flow ODE, one solve per batch, its dequantisation and probes drawn with seed + i.

    For a class-conditional model both are the unconditional likelihood: ``loaded.net`` called without
    labels answers as "no label" (through the paired unconditional model, when there is one).
    """
    if not bpd_images:
        return {}, ["bits_per_dim: --bpd-images 0"]
    # evenly spaced, not the first k: held-out files may be sorted by class (MNIST-5k is)
    idx = torch.linspace(0, len(test) - 1, min(bpd_images, len(test))).round().long()
    x = test.images[idx].to(device)
    bpd = torch.cat([bits_per_dim(loaded.diffusion, loaded.net, x[i : i + batch_size], bpd_timesteps,
                                  torch.Generator().manual_seed(seed + i))
                     for i in range(0, x.shape[0], batch_size)])
    return {
        "bits_per_dim": float(bpd.mean()),
        # spread over images (and, for the estimate, over the drawn t): the figure's standard error
        "bits_per_dim_stderr": float(bpd.std() / math.sqrt(bpd.numel())) if bpd.numel() > 1 else None,
        "bits_per_dim_images": int(x.shape[0]),
        "bits_per_dim_timesteps": bpd_timesteps if bpd_timesteps is not None else "all",
        **(_ode_bpd_metrics(loaded, sde, x, batch_size, seed, progress) if sde is not None else {}),
    }, []


def _ode_bpd_metrics(loaded: LoadedModel, sde: VPSDE, x: Tensor, batch_size: int, seed: int,
                     progress: bool = False) -> dict[str, Any]:
    """``bpd_ode`` of images ``x (N, C, H, W)``, its standard error over images, and the mean evaluations per batch.
    ``progress``: a tqdm bar over each batch's way from t_min to t_max (the solve's steps are not known ahead)."""
    eps_fn = eps_fn_of(loaded.net, loaded.diffusion.prediction, sde)
    starts = range(0, x.shape[0], batch_size)
    bar, span = None, sde.t_max - sde.t_min
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts), desc=f"bits/dim by the ODE: {x.shape[0]} images", unit="batch")

    def on_step(t: float) -> None:
        if bar is not None:
            bar.n = round(bar.n // 1 + (t - sde.t_min) / span, 3)
            bar.refresh()

    runs = []
    for i in starts:
        runs.append(ode_bits_per_dim(eps_fn, sde, x[i : i + batch_size], torch.Generator().manual_seed(seed + i),
                                     on_step=on_step))
        if bar is not None:
            bar.n = len(runs)
            bar.refresh()
    if bar is not None:
        bar.close()
    bpd = torch.cat([b for b, _ in runs])
    return {
        "bpd_ode": float(bpd.mean()),
        "bpd_ode_stderr": float(bpd.std() / math.sqrt(bpd.numel())) if bpd.numel() > 1 else None,
        "bpd_ode_nfev": sum(n for _, n in runs) / len(runs),
    }


#: The ODE's tolerances for one image's likelihood on request: 1e-4 costs about a third of score_sde's 1e-5 in
#: evaluations and moves a digit's bits/dim by about 3e-4 (104 against 302 evaluations, 1.7761 against 1.7764).
IMAGE_LIKELIHOOD_TOL = 1e-4
#: The most ODE evaluations one image's likelihood may take on request (a digit takes about a hundred).
IMAGE_LIKELIHOOD_MAX_EVALUATIONS = 3000


@dataclass(frozen=True)
class ImageLikelihood:
    """Bits/dim of each image ``(B,)`` by the probability-flow ODE and by the variational bound (all T terms),
    and the ODE solve's network evaluations."""

    bpd_ode: list[float]
    bpd_bound: list[float]
    ode_evaluations: int
    tolerance: float


def image_likelihood(loaded: LoadedModel, x: Tensor, seed: int = 0,
                     tolerance: float = IMAGE_LIKELIHOOD_TOL) -> ImageLikelihood:
    """The unconditional likelihood of 8-bit images ``x`` ``(B, C, H, W)`` (in the model's value range, on its
    device) by both routes: what a visitor's own digit costs in bits, against a scribble or noise.
    ValueError when the schedule has no score-SDE view; RuntimeError when the solve fails or would take more
    than :data:`IMAGE_LIKELIHOOD_MAX_EVALUATIONS`."""
    sde = likelihood_sde(loaded.diffusion.schedule)
    eps_fn = eps_fn_of(loaded.net, loaded.diffusion.prediction, sde)
    ode, nfev = ode_bits_per_dim(eps_fn, sde, x, torch.Generator().manual_seed(seed), rtol=tolerance, atol=tolerance,
                                 max_evaluations=IMAGE_LIKELIHOOD_MAX_EVALUATIONS)
    with torch.no_grad():
        bound = bits_per_dim(loaded.diffusion, loaded.net, x, None, torch.Generator().manual_seed(seed))
    return ImageLikelihood(ode.tolist(), bound.tolist(), nfev, tolerance)


def check_eval_args(batch_size: int, bpd_images: int, bpd_timesteps: int | None,
                    copy_percentile: float = COPY_PERCENTILE, *, bpd: str = "bound", cli: bool = False) -> None:
    """Raise :class:`MetricsError` naming the first evaluation argument out of range and its limit (the
    sampling fields are the spec's, checked by :func:`engine.sampling.spec.resolve`).

    The Python API's ``bpd_timesteps`` says "exact sum" with None; with ``cli`` it is the ``eval`` flag's
    integer, where 0 says so, and the messages name the flags.
    """
    def name(arg: str) -> str:
        return "--" + arg.replace("_", "-") if cli else arg.replace("_", " ")

    lo = 0 if cli else 1
    checks: Sequence[tuple[bool, str]] = [
        (batch_size >= 1, f"{name('batch_size')} must be ≥ 1, got {batch_size}"),
        (bpd_images >= 0, f"{name('bpd_images')} must be ≥ 0, got {bpd_images}"),
        (bpd_timesteps is None or bpd_timesteps >= lo,
         f"{name('bpd_timesteps')} must be ≥ {lo}{' (0 = exact sum)' if cli else ''}, got {bpd_timesteps}"),
        (0.0 <= copy_percentile <= 100.0, f"{name('copy_percentile')} must lie in [0, 100], got {copy_percentile}"),
        (bpd in BPD_METHODS, f"{name('bpd')} must be one of {', '.join(BPD_METHODS)}, got {bpd!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise MetricsError(msg)
