"""``maskcls bench BENCHMARK``: one parser per benchmark, so ``--help`` lists that benchmark's options only, while
every command line the docs and examples use still calls the benchmark with the same arguments as before."""
from __future__ import annotations

import re
import sys
import types

import pytest

from maskcls.cli import main

# What each benchmark takes besides -h/--help and --log-every (the rest of the old shared list must be gone).
OPTIONS = {
    "train": {"--images"},
    "loader": {"--images", "--workers"},
    "stats": {"--images", "--workers"},
    "faces": {"--images"},
    "memory": {"--images", "--workers"},
    "workers": {"--images"},
    "quality": {"--data", "--budget", "--folds", "--seeds", "--first-seed", "--sets", "--work", "--fresh",
                "--config", "--set", "--base-set"},
    "serve": {"--run", "--requests", "--configs", "--concurrency", "--warmup"},
    "time-to-f1": {"--config", "--set", "--timm-repo", "--fold", "--image-size", "--epochs", "--seed", "--precision",
                   "--out"},
    "predict": {"--run", "--images"},
    "gpu": {"--config", "--set", "--steps", "--rounds", "--warmup", "--fold", "--people"},
}


def _help_options(capsys, argv: list[str]) -> set[str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out.split("examples:")[0])) - {"--help", "--log-every"}


@pytest.mark.parametrize("bench", sorted(OPTIONS))
def test_each_benchmark_help_lists_its_own_options_only(bench, capsys):
    assert _help_options(capsys, ["bench", bench, "--help"]) == OPTIONS[bench]


def test_bench_quality_help_shows_quality_only(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "quality", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: maskcls bench quality") and "--budget" in out and "--seeds" in out
    for other in ("--requests", "--timm-repo", "--images", "--workers", "--concurrency", "--warmup"):
        assert other not in out, other


def test_bench_help_lists_the_benchmarks(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(re.search(rf"^\s+{b}\s", out, re.M) for b in OPTIONS), out
    options = out.split("examples:")[0]
    assert "--budget" not in options and "--requests" not in options


def test_an_option_of_another_benchmark_is_one_line_naming_the_benchmark(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "train", "--budget", "quick"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == ("maskcls bench train: error: unrecognized arguments: --budget quick "
                                         "(see maskcls bench train --help)\n")
    with pytest.raises(SystemExit) as e:
        main(["bench", "qualty"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "invalid choice: 'qualty'" in err


# Command lines from the docs, the Makefile and the examples, with what the old single `bench` parser passed on.
CALLS = [
    (["bench", "train"], "train", "bench_train", {}),
    (["bench", "train", "--images", "60"], "train", "bench_train", {"images": 60}),
    (["bench", "loader", "--images", "300"], "loader", "bench_loader", {"workers": 2, "images": 300}),
    (["bench", "loader", "--workers", "0"], "loader", "bench_loader", {"workers": 0}),
    (["bench", "stats"], "stats", "bench_stats", {"workers": 2}),
    (["bench", "faces"], "faces", "bench_faces", {}),
    (["bench", "memory", "--images", "20000"], "memory", "bench_memory", {"workers": 2, "images": 20000}),
    (["bench", "workers"], "workers", "bench_workers", {}),
    (["bench", "predict", "--run", "RUN", "--images", "2000"], "predict", "bench_predict",
     {"run": "RUN", "images": 2000}),
    (["bench", "serve", "--run", "RUN", "--requests", "2000"], "serve", "bench_serve",
     {"run": "RUN", "requests": 2000, "configs": ("peer", "fp32", "fp32-streams", "int8", "int8-streams"),
      "concurrency": (1, 8, 32), "warmup": 200}),
    (["bench", "serve", "--requests", "6", "--concurrency", "1,8", "--configs", "peer,fp32", "--warmup", "2"],
     "serve", "bench_serve", {"run": None, "requests": 6, "configs": ("peer", "fp32"), "concurrency": (1, 8),
                              "warmup": 2}),
    (["--log-every", "50", "bench", "workers", "--images", "70"], "workers", "bench_workers", {"images": 70}),
    (["bench", "workers", "--images", "70", "--log-every", "50"], "workers", "bench_workers", {"images": 70}),
]


@pytest.mark.parametrize("argv,module,func,kwargs", CALLS, ids=[" ".join(c[0]) for c in CALLS])
def test_existing_command_lines_call_the_benchmark_as_before(argv, module, func, kwargs, monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType(f"maskcls.bench.{module}")
    setattr(fake, func, lambda **kw: seen.update(kw) or {"text": f"{func} ran"})
    monkeypatch.setitem(sys.modules, f"maskcls.bench.{module.replace('-', '_')}", fake)
    assert main(argv) == 0
    assert seen == kwargs and capsys.readouterr().out == f"{func} ran\n"


def test_quality_command_lines_reach_the_quality_bench(monkeypatch, capsys):
    """``--sets SET --seeds N --folds 1 --set KEY=VALUE``: the variant is the budget's config with the overrides."""
    seen = {}
    fake = types.ModuleType("maskcls.bench.quality")
    fake.get_budget = lambda name: types.SimpleNamespace(overrides=lambda: ["data.image_size=128", "train.epochs=3"])
    fake.bench_quality = lambda **kw: seen.update(kw) or {"text": "quality ran"}
    monkeypatch.setitem(sys.modules, "maskcls.bench.quality", fake)
    assert main(["bench", "quality", "--sets", "mask3dev", "--seeds", "5", "--folds", "1",
                 "--set", "train.mixed_precision=no"]) == 0
    assert seen["sets"] == ("mask3dev",) and seen["seeds"] == 5 and seen["folds"] == 1 and seen["budget"] == "quick"
    assert seen["variant"].train.mixed_precision == "no" and seen["variant"].train.epochs == 3
    assert seen["variant_label"] == "train.mixed_precision=no" and seen["data_dir"] == ".cache/devdata"
    assert main(["bench", "quality"]) == 0 and seen["variant"] is None and seen["sets"] == ("mask3dev", "agegender6dev")


def test_quality_base_set_makes_the_base_and_needs_a_variant(monkeypatch, capsys):
    """``--base-set train.epochs=20 --set train.epochs=30``: the variant is compared with the budget's config plus the
    base overrides; a base without a variant is refused (there would be nothing to compare it with)."""
    seen = {}
    fake = types.ModuleType("maskcls.bench.quality")
    fake.get_budget = lambda name: types.SimpleNamespace(overrides=lambda: ["data.image_size=128", "train.epochs=10"])
    fake.bench_quality = lambda **kw: seen.update(kw) or {"text": "quality ran"}
    monkeypatch.setitem(sys.modules, "maskcls.bench.quality", fake)
    assert main(["bench", "quality", "--budget", "standard", "--base-set", "train.epochs=20",
                 "--set", "train.epochs=30"]) == 0
    assert (seen["base"].train.epochs, seen["variant"].train.epochs) == (20, 30)
    assert (seen["base_label"], seen["variant_label"]) == ("train.epochs=20", "train.epochs=30")
    assert main(["bench", "quality"]) == 0 and seen["base"] is None and seen["base_label"] == "defaults"
    assert main(["bench", "quality", "--base-set", "train.epochs=20"]) == 2
    assert "give the variant with --set" in capsys.readouterr().err


def test_time_to_f1_keeps_its_budget_flags(monkeypatch, tmp_path):
    seen = {}
    import maskcls.bench.time_to_f1 as real
    fake = types.ModuleType("maskcls.bench.time_to_f1")
    fake.Budget = real.Budget
    fake.bench_time_to_f1 = lambda prepared, repo, **kw: seen.update(kw, prepared=prepared, repo=repo) or {"text": ""}
    monkeypatch.setitem(sys.modules, "maskcls.bench.time_to_f1", fake)
    assert main(["bench", "time-to-f1", "PREP", "--timm-repo", "GITDIR", "--seed", "720", "--epochs", "2",
                 "--set", "train.ema=true", "--out", str(tmp_path / "o")]) == 0
    assert seen["prepared"] == "PREP" and seen["repo"] == "GITDIR" and seen["out"] == str(tmp_path / "o")
    assert seen["budget"] == real.Budget(fold=0, image_size=128, epochs=2, seed=720, precision="auto")
    assert seen["base"].train.ema is True


def test_gpu_takes_the_config_and_its_rounds(monkeypatch):
    seen = {}
    fake = types.ModuleType("maskcls.bench.gpu")
    fake.bench_gpu = lambda prepared=None, **kw: seen.update(kw, prepared=prepared) or {"text": ""}
    monkeypatch.setitem(sys.modules, "maskcls.bench.gpu", fake)
    assert main(["bench", "gpu", "PREP", "--set", "data.image_size=224", "--set", "train.batch_size=30",
                 "--steps", "5"]) == 0
    assert seen["prepared"] == "PREP" and seen["steps"] == 5 and seen["rounds"] == 3 and seen["people"] == 40
    assert seen["base"].data.image_size == 224 and seen["base"].train.batch_size == 30
    assert main(["bench", "gpu"]) == 0 and seen["prepared"] is None and seen["base"] is None
