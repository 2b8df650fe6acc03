"""``maskcls bench | demo``: measurements side by side with the reference, and the demo."""
from __future__ import annotations

from .common import int_range, sub


def register(subs) -> None:
    s = sub(subs, "bench", "benchmarks measured side by side with the reference recipe",
             "maskcls bench loader --images 300\nmaskcls bench stats\nmaskcls bench train\n"
             "maskcls bench faces\nmaskcls bench memory --images 20000")
    s.add_argument("what", choices=["train", "loader", "stats", "faces", "memory"])
    s.add_argument("--images", type=int_range(1), default=None)
    s.add_argument("--workers", type=int_range(0), default=2)
    s.set_defaults(run=cmd_bench)

    s = sub(subs, "demo", "the whole job on a synthetic dataset, in minutes",
             "maskcls demo\nmaskcls demo --out demo-out --people 120")
    s.add_argument("--out", default="demo-out", help="folder for data, prepared dir and run (new)")
    s.add_argument("--people", type=int_range(1), default=120)
    s.add_argument("--epochs", type=int_range(1), default=None)
    s.set_defaults(run=cmd_demo)


def cmd_bench(args) -> int:
    kw = {"images": args.images} if args.images else {}
    if args.what == "stats":
        from ..bench.stats import bench_stats
        r = bench_stats(workers=args.workers, **kw)
    elif args.what == "loader":
        from ..bench.loader import bench_loader
        r = bench_loader(workers=args.workers, **kw)
    elif args.what == "faces":
        from ..bench.faces import bench_faces
        r = bench_faces(**kw)
    elif args.what == "train":
        from ..bench.train import bench_train
        r = bench_train(**kw)
    else:
        from ..bench.memory import bench_memory
        r = bench_memory(workers=args.workers, **kw)
    print(r["text"])
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo
    summary = run_demo(args.out, people=args.people, epochs=args.epochs)
    print(summary["text"])
    return 0
