"""``maskcls bench BENCHMARK | demo``: measurements side by side with the reference (one parser per benchmark, so
``maskcls bench quality --help`` lists quality's options only), and the demo."""
from __future__ import annotations

from .common import add_config_args, int_range, sub


def register(subs) -> None:
    s = sub(subs, "bench", "benchmarks measured side by side with the reference recipe",
             "maskcls bench quality --help                         # one benchmark's options\n"
             "maskcls bench loader --images 300\nmaskcls bench stats\nmaskcls bench train\n"
             "maskcls bench faces\nmaskcls bench memory --images 20000\n"
             "maskcls bench workers                                # training epochs, 1 loader worker vs 2\n"
             "maskcls bench quality                                # real dev sets, 3 folds out of fold, quick\n"
             "maskcls bench quality --budget standard --set train.ema=false   # a variant against the defaults\n"
             "maskcls bench serve --run runs/mobilenetv2_100-1 --requests 2000    # vs the server a user would write\n"
             "maskcls bench time-to-f1 .cache/quality/prepared/mask3dev --timm-repo GITDIR   # vs timm's train.py\n"
             "maskcls bench predict --run runs/mobilenetv2_100-1 --images 2000   # torch vs onnx vs onnx-int8\n"
             "maskcls bench gpu PREPARED                           # the data path against the model alone")
    benches = s.add_subparsers(dest="what", metavar="BENCHMARK", required=True)
    for register_bench in (_bench_train, _bench_loader, _bench_stats, _bench_faces, _bench_memory, _bench_workers,
                           _bench_quality_args, _bench_serve, _bench_time_to_f1_args, _bench_predict, _bench_gpu):
        register_bench(benches)

    s = sub(subs, "demo", "the whole job on a synthetic dataset, in minutes",
             "maskcls demo\nmaskcls demo --out demo-out --people 120")
    s.add_argument("--out", default="demo-out", help="folder for data, prepared dir and run (new)")
    s.add_argument("--people", type=int_range(1), default=120)
    s.add_argument("--epochs", type=int_range(1), default=None)
    s.set_defaults(handler=cmd_demo)


# ------------------------------------------------------------------ one parser per benchmark: its options only
def _images(p, default: int) -> None:
    p.add_argument("--images", type=int_range(1), default=None, help=f"images to measure on (default {default})")


def _workers(p) -> None:
    p.add_argument("--workers", type=int_range(0), default=2, help="loader worker processes (default 2)")


def _print_result(r: dict) -> int:
    print(r["text"])
    return 0


def _kw(args) -> dict:
    """``--images`` when given (each benchmark has its own default)."""
    return {"images": args.images} if args.images else {}


def _bench_train(benches) -> None:
    b = sub(benches, "train", "training images/s on synthetic tensors: the reference recipe's loop against "
            "maskcls' (fp32 and bf16), the same model", "maskcls bench train\nmaskcls bench train --images 240")
    _images(b, 120)
    b.set_defaults(handler=cmd_bench_train)


def _bench_loader(benches) -> None:
    b = sub(benches, "loader", "training batches/s of the reference recipe's loader against maskcls' pipelines, "
            "on generated 384x512 JPEGs, with 0 and --workers workers",
            "maskcls bench loader --images 300\nmaskcls bench loader --workers 0")
    _images(b, 300)
    _workers(b)
    b.set_defaults(handler=cmd_bench_loader)


def _bench_stats(benches) -> None:
    b = sub(benches, "stats", "per-channel mean/std of generated photos: the reference routine against "
            "maskcls stats",
            "maskcls bench stats\nmaskcls bench stats --images 1000 --workers 4")
    _images(b, 300)
    _workers(b)
    b.set_defaults(handler=cmd_bench_stats)


def _bench_faces(benches) -> None:
    b = sub(benches, "faces", "maskcls faces (batched MTCNN) against one full-size photo at a time, on photos "
            "with a real face", "maskcls bench faces\n"
            "maskcls bench faces --images 400")
    _images(b, 200)
    b.set_defaults(handler=cmd_bench_faces)


def _bench_memory(benches) -> None:
    b = sub(benches, "memory", "peak memory (RSS and PSS of the process tree) of one training-loader pass "
            "over a large synthetic set", "maskcls bench memory --images 20000")
    _images(b, 20000)
    _workers(b)
    b.set_defaults(handler=cmd_bench_memory)


def _bench_workers(benches) -> None:
    b = sub(benches, "workers", "whole training epochs (maskcls train, 128 px, crop cache) with 0, 1 and 2 "
            "loader workers; the closing line is 1 worker vs 2", "maskcls bench workers\n"
            "maskcls bench workers --images 350")
    _images(b, 700)
    b.set_defaults(handler=cmd_bench_workers)


def _bench_quality_args(benches) -> None:
    b = sub(benches, "quality", "macro F1 on the real development sets, the defaults (and a variant given with "
            "-c/--set) trained on the first folds and pooled out of fold",
            "maskcls bench quality                                # real dev sets, 3 folds out of fold, quick\n"
            "maskcls bench quality --budget standard --set train.ema=false   # a variant against the defaults\n"
            "maskcls bench quality --sets mask3dev --seeds 5 --folds 1 --set train.mixed_precision=bf16")
    b.add_argument("--data", default=".cache/devdata", help="folder of the development sets (<set>/manifest.csv)")
    b.add_argument("--budget", choices=["quick", "standard"], default="quick",
                   help="quick = 128 px, 3 epochs (screening); standard = 128 px, 10 epochs (decisions)")
    b.add_argument("--folds", type=int_range(1, 5), default=3,
                   help="folds 0..N-1 trained and pooled into one out-of-fold macro F1")
    b.add_argument("--seeds", type=int_range(1, 10), default=1, help="training seeds per fold")
    b.add_argument("--first-seed", type=int_range(0), default=None, help="the first seed (default: train.seed)")
    b.add_argument("--sets", default="mask3dev,agegender6dev", help="comma-separated development sets")
    b.add_argument("--work", default=".cache/quality", help="prepared sets, runs and cached results")
    b.add_argument("--fresh", action="store_true", help="retrain even when a cached result exists")
    add_config_args(b)
    b.add_argument("--base-set", dest="base_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="compare the variant with the defaults plus this override instead of the defaults, e.g. "
                        "--base-set train.epochs=20 --set train.epochs=30 (repeatable)")
    b.set_defaults(handler=_bench_quality)


def _bench_serve(benches) -> None:
    b = sub(benches, "serve", "maskcls serve (fp32, INT8, with and without CUDA streams) against the server a user "
            "would write (FastAPI + PyTorch eager), requests/s and latency at each concurrency",
            "maskcls bench serve --run runs/mobilenetv2_100-1 --requests 2000\n"
            "maskcls bench serve --requests 500 --configs peer,fp32 --concurrency 1,8")
    b.add_argument("--run", dest="run_dir", default=None,
                   help="the run to serve (default: train a small run of the default backbone at 128 px first)")
    b.add_argument("--requests", type=int_range(1), default=2000, help="requests per configuration and concurrency")
    b.add_argument("--configs", default="peer,fp32,fp32-streams,int8,int8-streams",
                   help="servers to measure: peer (FastAPI + PyTorch eager), fp32, fp32-streams, int8, int8-streams")
    b.add_argument("--concurrency", default="1,8,32", help="client connections sending at once, comma-separated")
    b.add_argument("--warmup", type=int_range(0), default=200, help="requests before the measured ones")
    b.set_defaults(handler=cmd_bench_serve)


def _bench_time_to_f1_args(benches) -> None:
    b = sub(benches, "time-to-f1", "time to accuracy on one fold of a prepared set: maskcls' defaults against "
            "timm's train.py (same model, split, size, epochs, seed), epoch by epoch",
            "maskcls bench time-to-f1 .cache/quality/prepared/mask3dev --timm-repo GITDIR\n"
            "maskcls bench time-to-f1 PREPARED --timm-repo GITDIR --seed 720 --set train.ema=true")
    b.add_argument("prepared", nargs="?", help="the prepared directory to train on")
    add_config_args(b)
    t = b.add_argument_group("budget (both sides; maskcls' config: -c/--set, then these)")
    t.add_argument("--timm-repo", help="git directory of a copy of huggingface/pytorch-image-models")
    t.add_argument("--fold", type=int_range(0), default=0)
    t.add_argument("--image-size", type=int_range(8), default=128)
    t.add_argument("--epochs", type=int_range(1), default=3)
    t.add_argument("--seed", type=int_range(0), default=719)
    t.add_argument("--precision", choices=["auto", "no", "bf16"], default="auto", help="both sides' precision")
    t.add_argument("--out", default=None, help="new scratch folder (default .cache/time-to-f1/<set>-<UTC time>)")
    b.set_defaults(handler=_bench_time_to_f1)


def _bench_predict(benches) -> None:
    b = sub(benches, "predict", "prediction images/s of one run's three backends on the same images: torch, "
            "ONNX Runtime fp32 and INT8, and their agreement",
            "maskcls bench predict --run runs/mobilenetv2_100-1 --images 2000")
    b.add_argument("--run", dest="run_dir", default=None,
                   help="the run to predict with (required: a trained run directory)")
    _images(b, 2000)
    b.set_defaults(handler=cmd_bench_predict)


def _bench_gpu(benches) -> None:
    b = sub(benches, "gpu", "training step rate of the whole pipeline (the fold loader over real photos) against "
            "the model alone (batches already on the device), the same trainer as maskcls train",
            "maskcls bench gpu                                    # a synthetic set made for it\n"
            "maskcls bench gpu PREPARED --set data.image_size=224 --set train.mixed_precision=bf16")
    b.add_argument("prepared", nargs="?", help="prepared directory of real photos (default: a synthetic one of "
                   "--people people, made in a temporary folder)")
    add_config_args(b)
    b.add_argument("--steps", type=int_range(1), default=20, help="optimizer steps per side and round (default 20)")
    b.add_argument("--rounds", type=int_range(1), default=3, help="alternating rounds; each side's rate is the "
                   "median round's (default 3)")
    b.add_argument("--warmup", type=int_range(0), default=5, help="untimed steps per side first (default 5)")
    b.add_argument("--fold", type=int_range(0), default=0, help="the fold whose training images the pipeline loads")
    b.add_argument("--people", type=int_range(1), default=40, help="people of the synthetic set (without PREPARED)")
    b.set_defaults(handler=cmd_bench_gpu)


def cmd_bench_gpu(args) -> int:
    from ..bench.gpu import bench_gpu
    from ..config_io import load_config
    base = load_config(args.config, args.overrides) if (args.config or args.overrides) else None
    return _print_result(bench_gpu(args.prepared, base=base, steps=args.steps, rounds=args.rounds,
                                   warmup=args.warmup, fold=args.fold, people=args.people))


def cmd_bench_train(args) -> int:
    from ..bench.train import bench_train
    return _print_result(bench_train(**_kw(args)))


def cmd_bench_loader(args) -> int:
    from ..bench.loader import bench_loader
    return _print_result(bench_loader(workers=args.workers, **_kw(args)))


def cmd_bench_stats(args) -> int:
    from ..bench.stats import bench_stats
    return _print_result(bench_stats(workers=args.workers, **_kw(args)))


def cmd_bench_faces(args) -> int:
    from ..bench.faces import bench_faces
    return _print_result(bench_faces(**_kw(args)))


def cmd_bench_memory(args) -> int:
    from ..bench.memory import bench_memory
    return _print_result(bench_memory(workers=args.workers, **_kw(args)))


def cmd_bench_workers(args) -> int:
    from ..bench.workers import bench_workers
    return _print_result(bench_workers(**_kw(args)))


def cmd_bench_serve(args) -> int:
    from ..bench.serve import bench_serve
    return _print_result(bench_serve(run=args.run_dir, requests=args.requests, configs=tuple(args.configs.split(",")),
                                     concurrency=_ints(args.concurrency, "--concurrency"), warmup=args.warmup))


def cmd_bench_predict(args) -> int:
    from ..bench.predict import bench_predict
    return _print_result(bench_predict(run=args.run_dir, **_kw(args)))


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from ..errors import ConfigError
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} {text!r}: give positive whole numbers separated by commas, e.g. 1,8,32")
    return values


def _bench_quality(args) -> int:
    from ..bench.quality import bench_quality, get_budget
    from ..config_io import load_config
    from ..errors import ConfigError
    budget = get_budget(args.budget).overrides()
    variant = load_config(args.config, budget + args.overrides) if (args.config or args.overrides) else None
    label = " ".join(([f"-c {args.config}"] if args.config else []) + args.overrides)
    if args.base_overrides and variant is None:
        raise ConfigError("--base-set sets what a variant is compared with: give the variant with --set or -c too")
    base = load_config(None, budget + args.base_overrides) if args.base_overrides else None
    r = bench_quality(data_dir=args.data, seeds=args.seeds, variant=variant, variant_label=label,
                      sets=tuple(s for s in args.sets.split(",") if s), work=args.work, fresh=args.fresh,
                      budget=args.budget, folds=args.folds, first_seed=args.first_seed, base=base,
                      base_label=" ".join(args.base_overrides) or "defaults")
    print(r["text"])
    return 0


def _bench_time_to_f1(args) -> int:
    from ..bench.time_to_f1 import Budget, bench_time_to_f1
    from ..config_io import load_config
    from ..errors import ConfigError
    if not args.prepared or not args.timm_repo:
        raise ConfigError("bench time-to-f1 needs a prepared directory and --timm-repo GITDIR (a copy of "
                          "huggingface/pytorch-image-models)")
    budget = Budget(fold=args.fold, image_size=args.image_size, epochs=args.epochs, seed=args.seed,
                    precision=args.precision)
    r = bench_time_to_f1(args.prepared, args.timm_repo, budget=budget, base=load_config(args.config, args.overrides),
                         out=args.out)
    print(r["text"])
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo
    summary = run_demo(args.out, people=args.people, epochs=args.epochs)
    print(summary["text"])
    return 0
