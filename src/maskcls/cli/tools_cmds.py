"""``maskcls bench | demo``: measurements side by side with the reference, and the demo."""
from __future__ import annotations

from .common import add_config_args, int_range, sub


def register(subs) -> None:
    s = sub(subs, "bench", "benchmarks measured side by side with the reference recipe",
             "maskcls bench loader --images 300\nmaskcls bench stats\nmaskcls bench train\n"
             "maskcls bench faces\nmaskcls bench memory --images 20000\n"
             "maskcls bench workers                                # training epochs, 1 loader worker vs 2\n"
             "maskcls bench quality                                # real dev sets, 3 folds out of fold, quick\n"
             "maskcls bench quality --budget standard --set train.ema=false   # a variant against the defaults\n"
             "maskcls bench serve --run runs/mobilenetv2_100-1 --requests 2000    # vs the server a user would write\n"
             "maskcls bench time-to-f1 .cache/quality/prepared/mask3dev --timm-repo GITDIR   # vs timm's train.py\n"
             "maskcls bench predict --run runs/mobilenetv2_100-1 --images 2000   # torch vs onnx vs onnx-int8")
    s.add_argument("what", choices=["train", "loader", "stats", "faces", "memory", "workers", "quality", "serve",
                                    "time-to-f1", "predict"])
    s.add_argument("prepared", nargs="?", help="time-to-f1: the prepared directory to train on")
    s.add_argument("--images", type=int_range(1), default=None)
    s.add_argument("--workers", type=int_range(0), default=2)
    q = s.add_argument_group("quality")
    q.add_argument("--data", default=".cache/devdata", help="folder of the development sets (<set>/manifest.csv)")
    q.add_argument("--budget", choices=["quick", "standard"], default="quick",
                   help="quick = 128 px, 3 epochs (screening); standard = 128 px, 10 epochs (decisions)")
    q.add_argument("--folds", type=int_range(1, 5), default=3,
                   help="folds 0..N-1 trained and pooled into one out-of-fold macro F1")
    q.add_argument("--seeds", type=int_range(1, 10), default=1, help="training seeds per fold")
    q.add_argument("--first-seed", type=int_range(0), default=None, help="the first seed (default: train.seed)")
    q.add_argument("--sets", default="mask3dev,agegender6dev", help="comma-separated development sets")
    q.add_argument("--work", default=".cache/quality", help="prepared sets, runs and cached results")
    q.add_argument("--fresh", action="store_true", help="retrain even when a cached result exists")
    add_config_args(q)
    v = s.add_argument_group("serve")
    v.add_argument("--run", dest="run_dir", default=None,
                   help="the run to serve (default: train a small run of the default backbone at 128 px first)")
    v.add_argument("--requests", type=int_range(1), default=2000, help="requests per configuration and concurrency")
    v.add_argument("--configs", default="peer,fp32,fp32-streams,int8,int8-streams",
                   help="servers to measure: peer (FastAPI + PyTorch eager), fp32, fp32-streams, int8, int8-streams")
    v.add_argument("--concurrency", default="1,8,32", help="client connections sending at once, comma-separated")
    v.add_argument("--warmup", type=int_range(0), default=200, help="requests before the measured ones")
    t = s.add_argument_group("time-to-f1 (maskcls' config: -c/--set, then these)")
    t.add_argument("--timm-repo", help="git directory of a copy of huggingface/pytorch-image-models")
    t.add_argument("--fold", type=int_range(0), default=0)
    t.add_argument("--image-size", type=int_range(8), default=128)
    t.add_argument("--epochs", type=int_range(1), default=3)
    t.add_argument("--seed", type=int_range(0), default=719)
    t.add_argument("--precision", choices=["auto", "no", "bf16"], default="auto", help="both sides' precision")
    t.add_argument("--out", default=None, help="new scratch folder (default .cache/time-to-f1/<set>-<UTC time>)")
    s.set_defaults(handler=cmd_bench)

    s = sub(subs, "demo", "the whole job on a synthetic dataset, in minutes",
             "maskcls demo\nmaskcls demo --out demo-out --people 120")
    s.add_argument("--out", default="demo-out", help="folder for data, prepared dir and run (new)")
    s.add_argument("--people", type=int_range(1), default=120)
    s.add_argument("--epochs", type=int_range(1), default=None)
    s.set_defaults(handler=cmd_demo)


def cmd_bench(args) -> int:
    kw = {"images": args.images} if args.images else {}
    if args.what == "quality":
        return _bench_quality(args)
    if args.what == "time-to-f1":
        return _bench_time_to_f1(args)
    if args.what == "stats":
        from ..bench.stats import bench_stats
        r = bench_stats(workers=args.workers, **kw)
    elif args.what == "loader":
        from ..bench.loader import bench_loader
        r = bench_loader(workers=args.workers, **kw)
    elif args.what == "faces":
        from ..bench.faces import bench_faces
        r = bench_faces(**kw)
    elif args.what == "serve":
        from ..bench.serve import bench_serve
        r = bench_serve(run=args.run_dir, requests=args.requests, configs=tuple(args.configs.split(",")),
                        concurrency=_ints(args.concurrency, "--concurrency"), warmup=args.warmup)
    elif args.what == "predict":
        from ..bench.predict import bench_predict
        r = bench_predict(run=args.run_dir, **kw)
    elif args.what == "train":
        from ..bench.train import bench_train
        r = bench_train(**kw)
    elif args.what == "workers":
        from ..bench.workers import bench_workers
        r = bench_workers(**kw)
    else:
        from ..bench.memory import bench_memory
        r = bench_memory(workers=args.workers, **kw)
    print(r["text"])
    return 0


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
    budget = get_budget(args.budget).overrides()
    variant = load_config(args.config, budget + args.overrides) if (args.config or args.overrides) else None
    label = " ".join(([f"-c {args.config}"] if args.config else []) + args.overrides)
    r = bench_quality(data_dir=args.data, seeds=args.seeds, variant=variant, variant_label=label,
                      sets=tuple(s for s in args.sets.split(",") if s), work=args.work, fresh=args.fresh,
                      budget=args.budget, folds=args.folds, first_seed=args.first_seed)
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
