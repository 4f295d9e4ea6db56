"""Inference speed: anomaly-map images/s and peak memory per precision, compile and runtime.

    python scripts/bench_infer.py preset=filterformer_paper --batch 4
    python scripts/bench_infer.py preset=inpformer_paper encoder=tiny_random --compile off on
    python scripts/bench_infer.py preset=demo --backend torch onnxruntime openvino
    python scripts/bench_infer.py --runs runs/demo runs/cpr_demo --backend torch onnxruntime

Positional arguments are ff-train overrides (model, encoder, input size). Every variant runs in
a fresh process (so that its peak memory is its own) on random batches of ``--batch`` images
at the network input size, with a randomly initialised encoder: the network alone, without
decoding, tiling or the way back to the original size. bf16 autocast is CUDA-only: on CPU
those variants are skipped (and the output says so).

``--backend torch`` (default) times ``model.anomaly_maps`` per precision and compile setting.
Naming other backends adds a second table on the CPU in float32: the run's whole exported map
graph (``single_graph``: maps, fusion, smoothing, image score) in torch, ONNX Runtime and OpenVINO,
each with the thread count of ``train.threads`` (else torch's). The graph is exported once
(ff-export's trace, then OpenVINO's conversion) before the timed processes start. Besides the
peak RSS, "added GiB" is what building the model or loading the file and running it added to
the peak of the process before (the interpreter with torch and filterformer imported), since
each runtime's process still imports torch.

``--runs RUN ...`` times what ff-predict does per image on real images of trained runs (their
test_public split; ``--images N``), for each backend, batch (``--batch 1 8``) and with and
without overlays: the whole ``write_maps`` (decode, preprocessing, model, the way back, float16
rescale, threshold, post-processing, TIFF/PNG, overlays), split into the model's time (the
torch model, or the export's stages in the runtime), the preprocessing (resize, crop or
letterbox, normalise: ``InputGeometry.to_array``) and the way back (``to_original``, tiles
blended), measured inside the one loop both share. "overhead" is (preprocessing + way back)
/ model, the runtime's own share (goal: under 20 %). The runtimes need ``<run>_export``
(ff-export; ``model.xml`` too for openvino); torch runs on ``--device``.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_train import compose_config, peak_memory, print_table, run_isolated
from omegaconf import DictConfig

from filterformer.export.formats import onnx_to_openvino
from filterformer.export.graph import MapFinish, export_graph
from filterformer.models.export_plan import Graph, single_graph
from filterformer.runs.run import (
    build_from_config,
    build_geometry,
    build_smoothing,
    image_score_rule,
)

RUNTIMES = ("onnxruntime", "openvino")


def _timed(run: Callable[[], None], steps: int, batch: int, device: torch.device) -> dict:
    """First call, one warm-up, then images/s over ``steps`` calls and the peak memory."""
    started = time.perf_counter()
    run()
    first = time.perf_counter() - started
    run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        run()
    elapsed = time.perf_counter() - started
    return {
        "first batch s": first,
        "images/s": steps * batch / elapsed,
        "peak GiB": peak_memory(device),
    }


def infer_variant(
    overrides: Sequence[str], device: str, bf16: bool, compiled: bool, batch: int, steps: int
) -> dict[str, Any]:
    """Time ``steps`` batches of anomaly maps after warm-up (and compilation)."""
    cfg = compose_config(overrides)
    if cfg.train.get("threads"):
        torch.set_num_threads(int(cfg.train.threads))
    device = torch.device(device)
    model, _ = build_from_config(cfg)
    model.to(device).eval()
    maps = torch.compile(model.anomaly_maps) if compiled else model.anomaly_maps
    images = torch.randn(batch, 3, *build_geometry(cfg).input_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def run() -> None:
        with autocast:
            out = maps(images)
        for amap in out.values():  # wait for the device, as copying the maps back would
            amap.float().cpu()

    variant = {"precision": "bf16" if bf16 else "fp32", "compile": "on" if compiled else "off"}
    return variant | _timed(run, steps, batch, device)


def map_graph(cfg: DictConfig) -> Graph:
    """The exported map graph of a freshly built model: its own map, no fusion statistics."""
    model, _ = build_from_config(cfg)
    mode = "filter" if "filter" in model.fusion_modes else model.fusion_modes[0]
    finish = MapFinish(mode, None, build_smoothing(cfg), image_score_rule(cfg))
    return single_graph(model, finish).graphs[0]


def backend_variant(
    overrides: Sequence[str], backend: str, model_file: str | None, batch: int, steps: int
) -> dict[str, Any]:
    """Time the whole map graph in ``backend`` (torch, or ``model_file`` in a runtime)."""
    from filterformer.runtime import open_session

    cfg = compose_config(overrides)
    threads = int(cfg.train.get("threads") or torch.get_num_threads())
    torch.set_num_threads(threads)
    size = build_geometry(cfg).input_size
    images = np.random.default_rng(0).standard_normal((batch, 3, *size), dtype=np.float32)
    cpu = torch.device("cpu")
    baseline = peak_memory(cpu)  # the interpreter with torch and filterformer imported
    if backend == "torch":
        graph, inputs = map_graph(cfg).module, torch.from_numpy(images)

        def run() -> None:
            with torch.no_grad():
                graph(inputs)
    else:
        session = open_session(Path(model_file), backend, threads=threads)

        def run() -> None:
            session({"images": images}, ["maps", "scores"])

    figures = {"backend": backend, "threads": threads} | _timed(run, steps, batch, cpu)
    return figures | {"added GiB": figures["peak GiB"] - baseline}


def export_files(overrides: Sequence[str], folder: Path, backends: Sequence[str]) -> dict:
    """Export the map graph once: backend -> its model file (None for torch)."""
    cfg = compose_config(overrides)
    onnx_file = folder / "model.onnx"
    example = [torch.zeros(2, 3, *build_geometry(cfg).input_size)]
    export_graph(map_graph(cfg), example, onnx_file)
    files = {"torch": None, "onnxruntime": str(onnx_file)}
    if "openvino" in backends:
        onnx_to_openvino(onnx_file, folder / "model.xml")
        files["openvino"] = str(folder / "model.xml")
    return {b: files[b] for b in backends}


def with_ratios(rows: list[dict[str, Any]]) -> None:
    """Add the speed-up and peak-memory ratios of every row against the first one."""
    for row in rows:
        row["speed-up"] = f"{row['images/s'] / rows[0]['images/s']:.2f}x"
        row["memory"] = f"{row['peak GiB'] / rows[0]['peak GiB']:.2f}x"


def backend_table(args: argparse.Namespace) -> None:
    """Torch against the runtimes on the CPU, in float32, ratios against torch."""
    backends = ["torch", *(b for b in args.backend if b in RUNTIMES)]
    with tempfile.TemporaryDirectory() as folder:
        files = export_files(args.overrides, Path(folder), backends)
        jobs = [(args.overrides, b, files[b], args.batch, args.steps) for b in backends]
        rows = run_isolated(backend_variant, jobs)
    with_ratios(rows)
    print("whole map graph (maps, fusion, smoothing, score), CPU, fp32; ratios against torch:")
    columns = ["backend", "threads", "first batch s", "images/s", "peak GiB", "added GiB"]
    print_table(rows, [*columns, "speed-up"])


class Stopwatch:
    """Seconds spent inside wrapped functions, summed per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"pre": 0.0, "model": 0.0, "back": 0.0}

    def wrap(self, phase: str, function: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started

        return timed


class TimedGeometry:
    """An InputGeometry whose preprocessing and way back are timed."""

    def __init__(self, geometry: Any, watch: Stopwatch) -> None:
        self.geometry = geometry
        self.to_array = watch.wrap("pre", geometry.to_array)
        self.to_original = watch.wrap("back", geometry.to_original)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.geometry, name)


class TimedMaps:
    """A map backend (or pipeline) whose calls are timed as the model's."""

    def __init__(self, inner: Any, watch: Stopwatch) -> None:
        self.maps = watch.wrap("model", inner.maps)


def timed_source(run_dir: Path, options: Any, watch: Stopwatch) -> Any:
    """ff-predict's map source for ``run_dir`` (``options``: PredictOptions), its phases timed
    by ``watch``."""
    import dataclasses

    from filterformer.runs.predict import RunExporter, open_export

    backend = options.backend
    if backend == "torch":
        from filterformer.inference.predict import TorchBackend

        source = RunExporter(run_dir, options)
        run = source.run
        torch_backend = TorchBackend(run.model, run.map_stats, run.smoothing, source.device)
        source.maps.backend = TimedMaps(torch_backend, watch)
        source.maps.run = dataclasses.replace(run, geometry=TimedGeometry(run.geometry, watch))
        return source
    source = open_export(run_dir, options)
    source.pipeline = TimedPipeline(source.pipeline, watch)
    source.geometry = TimedGeometry(source.geometry, watch)
    return source


class TimedPipeline:
    """A runtime pipeline whose calls are timed as the model's."""

    def __init__(self, pipeline: Any, watch: Stopwatch) -> None:
        self.pipeline = pipeline
        self.call = watch.wrap("model", pipeline.__call__)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.call(images)


def per_image_variant(
    run_dir: str, backend: str, batch: int, overlays: bool, images: int, device: str, threads: int
) -> dict[str, Any]:
    """ms per image of ff-predict's whole write (after a warm-up pass over the same images,
    without overlays) and of its phases."""
    from filterformer.runs.predict import PredictOptions

    torch.set_num_threads(threads)
    watch = Stopwatch()
    options = PredictOptions(
        device=device, batch_size=batch, no_progress=True, backend=backend, threads=threads
    )
    source = timed_source(Path(run_dir), options, watch)
    samples = list(source.samples("test_public"))[:images]
    with tempfile.TemporaryDirectory() as folder:
        source.export(samples, Path(folder) / "warm")  # every batch shape once: runtimes
        # (OpenVINO) compile on a new input shape
        watch.seconds = dict.fromkeys(watch.seconds, 0.0)
        started = time.perf_counter()
        source.export(samples, Path(folder) / "timed", overlays)
        total = time.perf_counter() - started
    ms = {phase: 1000 * seconds / len(samples) for phase, seconds in watch.seconds.items()}
    return {
        "family": source.manifest["model"] if backend != "torch" else source.run.config.model.name,
        "backend": backend if backend != "torch" else f"torch ({device})",
        "threads": threads,
        "batch": batch,
        "overlays": "on" if overlays else "off",
        "images": len(samples),
        "total ms": 1000 * total / len(samples),
        "model ms": ms["model"],
        "pre ms": ms["pre"],
        "back ms": ms["back"],
        "rest ms": 1000 * total / len(samples) - sum(ms.values()),
        "overhead": f"{100 * (ms['pre'] + ms['back']) / ms['model']:.1f} %",
    }


def per_image_table(args: argparse.Namespace) -> None:
    """ff-predict per image on the runs' real images: backends x batches x overlays."""
    jobs = [
        (run, backend, batch, overlays == "on", args.images, args.device, args.threads)
        for run in args.runs
        for backend in args.backend
        for batch in args.batch
        for overlays in args.overlays
    ]
    rows = run_isolated(per_image_variant, jobs)
    print(
        "ms per image: total = ff-predict's whole write; model, preprocessing (pre), way back "
        "(back), the rest (decode, rescale, TIFF/PNG, overlays); overhead = (pre + back) / model"
    )
    columns = ["family", "backend", "threads", "batch", "overlays", "images", "total ms"]
    columns.append("model ms")
    print_table(rows, [*columns, "pre ms", "back ms", "rest ms", "overhead"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="ff-train config overrides, e.g. preset=demo")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"]
    )
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=("torch", *RUNTIMES),
        default=["torch"],
        help="with onnxruntime / openvino: only the runtime table (torch included)",
    )
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[8], help="images per pass (--runs: several)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed batches per variant")
    parser.add_argument("--runs", nargs="+", help="trained runs: ff-predict per image (see above)")
    parser.add_argument("--overlays", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--images", type=int, default=16, help="--runs: images per variant")
    parser.add_argument("--threads", type=int, default=1, help="--runs: threads of every backend")
    args = parser.parse_args()
    if args.runs:
        per_image_table(args)
        return
    args.batch = args.batch[0]
    cfg = compose_config(args.overrides)
    print(
        f"{cfg.model.name} on {cfg.encoder.variant}, input {build_geometry(cfg).input_size}, "
        f"batch {args.batch}"
    )
    if any(b in RUNTIMES for b in args.backend):
        backend_table(args)
        return
    device = torch.device(args.device)
    precisions = [p for p in args.precision if p == "fp32" or device.type == "cuda"]
    if "bf16" in args.precision and device.type != "cuda":
        print("bf16 autocast is CUDA-only: bf16 variants skipped on CPU.")
    jobs = [
        (args.overrides, args.device, p == "bf16", c == "on", args.batch, args.steps)
        for p, c in itertools.product(precisions, args.compile)
    ]
    rows = run_isolated(infer_variant, jobs)
    with_ratios(rows)
    print(f"{device.type}; ratios against the first row:")
    columns = ["precision", "compile", "first batch s", "images/s", "peak GiB"]
    print_table(rows, [*columns, "speed-up", "memory"])


if __name__ == "__main__":
    main()
