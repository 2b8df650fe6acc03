"""Fill the generated blocks of README.md and docs/ from the code and from recorded outputs.

    python scripts/update_docs.py           # rewrite every block that changed
    python scripts/update_docs.py --check   # exit 1 when a block is stale (tests/test_docs.py checks the same)

A block lies between ``<!-- NAME -->`` and ``<!-- /NAME -->``:

- ``docs/configuration.md``, ``config-table``: ``maskcls config --table``, from the config dataclasses.
- ``README.md``, ``demo``: ``docs/recorded/demo.txt``, the last ``make demo`` output kept line by line.
- ``docs/results.md``, ``results-BENCH``: one table per benchmark, from ``docs/recorded/BENCH/*.txt``;
  ``results-machines``: the machines those files name (:data:`MACHINES`).

A recorded file is a header of ``key: value`` lines (benchmark, machine, precision, date, command, conditions,
source, for the demo a note, and for a quality bench with ``--set`` the variant's precision as ``variant
precision``), then ``--- output`` and the lines exactly as the command printed them, or ``--- figures`` and the
figures as a journal kept them when the output itself was not kept. To add a measurement: save the command's
output under ``docs/recorded/BENCH/`` with that header, run this script, commit both.
A figure enters the docs only through such a file, with its machine, precision and date.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "docs" / "recorded"

# The machines the recorded files name, as their journals describe them.
MACHINES = {
    "Zen 4 EPYC": "AMD EPYC, family 25 model 17 (Zen 4), 2 vCPUs; AVX-512 with `avx512_bf16` and `avx512_vnni`, "
                  "no AMX: bf16 is native (faster than fp32 at 224 px)",
    "Zen 3 EPYC": "AMD EPYC, family 25 model 1 (Zen 3), 2 vCPUs; AVX2 and FMA only, no AVX-512, no AVX512-BF16, "
                  "no AMX: bf16 is emulated (several times slower than fp32)",
    "AVX2 EPYC": "AMD EPYC, 2 vCPUs, 23 GiB; AVX2, no AVX-512, AVX512-BF16 or AMX; its family and model were not "
                 "recorded (the machine of the benchmarks journal's \"Machine\" table, 2026-11-27 to 11-29)",
    "Xeon EMR": "Intel Xeon (KVM), family 6 model 207 (Emerald Rapids), 2 vCPUs, 24 GiB; AVX-512 with `avx512_vnni`, "
                "but the VM shows no `avx512_bf16` and no AMX: bf16 is emulated (far slower than fp32)",
    "H200 host": "one NVIDIA H200 (143,771 MiB) with a 16-core Intel Xeon (lscpu gives no model number); "
                 "torch 2.11.0+cu130, timm 1.0.29, not this repository's pins",
}
BLOCK = re.compile(r"(<!-- (?P<name>[\w-]+) -->\n).*?(<!-- /(?P=name) -->)", re.S)


# ----------------------------------------------------------------------------------------------- recorded files
@dataclass
class Record:
    path: Path
    header: dict[str, str]
    kind: str          # "output": the lines as printed; "figures": as a journal kept them
    lines: list[str]

    def __getitem__(self, key: str) -> str:
        if key not in self.header:
            raise ValueError(f"{self.path.relative_to(ROOT)}: no '{key}:' line in its header")
        return self.header[key]

    def find(self, pattern: str) -> re.Match:
        """The first line matching ``pattern`` (from its start); an error naming the file when none does."""
        for line in self.lines:
            if m := re.match(pattern, line):
                return m
        raise ValueError(f"{self.path.relative_to(ROOT)}: no line matches {pattern!r}")

    def figure(self, name: str) -> str:
        return self.find(re.escape(name) + r":\s*(.*)$").group(1)


def read_record(path: Path) -> Record:
    header, lines, kind = {}, [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if kind is not None:
            lines.append(line)
        elif line.startswith("--- "):
            kind = line[4:].strip()
        elif line.strip() and not line.startswith("#"):
            key, sep, value = line.partition(": ")
            if not sep:
                raise ValueError(f"{path.relative_to(ROOT)}: header line without 'key: value': {line!r}")
            header[key.strip()] = value.strip()
    if kind not in ("output", "figures"):
        raise ValueError(f"{path.relative_to(ROOT)}: no '--- output' or '--- figures' line")
    rec = Record(path, header, kind, lines)
    for key in ("benchmark", "machine", "precision", "date", "command", "source"):
        rec[key]
    if rec["machine"] not in MACHINES:
        raise ValueError(f"{path.relative_to(ROOT)}: machine {rec['machine']!r} is not one of {sorted(MACHINES)}")
    return rec


def records(bench: str) -> list[Record]:
    """Every recorded file of ``bench``, newest date first (then by file name, last first)."""
    return sorted((read_record(p) for p in (RECORDED / bench).glob("*.txt")),
                  key=lambda r: (r["date"], r.path.name), reverse=True)


# ----------------------------------------------------------------------------------------------- table helpers
def _command(rec: Record) -> str:
    return f"`{rec['command']}`"


def _date(rec: Record) -> str:
    return f"[{rec['date']}]({rec['source']})"


def table(columns: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def conditions(recs: list[Record]) -> str:
    lines = [f"- {r['date']}, {r['machine']}: {r['conditions']}." for r in recs if r.header.get("conditions")]
    return ("\nConditions:\n" + "\n".join(lines) + "\n") if lines else ""


TAIL = ["machine", "precision", "date (journal entry)", "command"]


def _tail(rec: Record, precision: str | None = None) -> list[str]:
    return [f"[{rec['machine']}](#machines)", precision or rec["precision"], _date(rec), _command(rec)]


# ----------------------------------------------------------------------------------------------- one per benchmark
def render_demo(recs: list[Record]) -> str:
    rows = []
    for r in recs:
        if r.kind == "output":  # loose on purpose: the lines may come to name their view and precision
            total = r.find(r"maskcls demo finished in (\d+) s").group(1)
            m = r.find(r"validation macro F1[^:]*?(?:best epoch (\d+)[^:]*)?: ([\d.]+)")
            val, epoch = m.group(2), m.group(1) or "?"
            ev = r.find(r"synthetic eval set.*?macro F1[^\d]*([\d.]+)").group(1)
        else:
            total, val, epoch, ev = (r.figure(k) for k in ("wall s", "validation macro F1", "best epoch",
                                                            "eval macro F1"))
        rows.append([f"{total} s", f"{val} (best epoch {epoch})", ev] + _tail(r))
    return table(["wall time", "validation macro F1, fold 0", "synthetic eval macro F1"] + TAIL, rows) \
        + conditions(recs)


def render_quality(recs: list[Record]) -> str:
    rows = []
    for r in recs:
        if r.kind == "figures":
            for line in r.lines:
                if m := re.match(r"(\w+): ([\d.]+); seeds ([^;]+); per seed (.+)$", line):
                    rows.append([m.group(1), f"**{m.group(2)}**", "fold 0, best epoch, mean over seeds",
                                 f"{m.group(3)} ({m.group(4)})"] + _tail(r))
                elif m := re.match(r"(\w+): ([\d.]+); out of fold over folds ([\d, ]+), (\w+) budget; seed (\d+); "
                                   r"per fold (.+)$", line):
                    rows.append([m.group(1), f"**{m.group(2)}**", f"out of fold over folds {m.group(3)}, "
                                 f"{m.group(4)} budget, defaults", f"{m.group(5)} (per fold {m.group(6)})"] + _tail(r))
        else:
            head = r.find(r"quality bench, (\w+) budget \(data.image_size=(\d+) train.epochs=(\d+)\): "
                          r"folds (.+?) of 5, seed\(s\) ([^;]+);")
            found = [m for line in r.lines if (m := re.match(
                r"quality(?: of the (?:variant|base))?, out-of-fold macro F1: (.+?)(?: \((variant|base): (.+)\))?$",
                line))]
            # the defaults or a `--base-set` base, then a `--set` variant; the label is the overrides
            for m in sorted(found, key=lambda m: m.group(2) == "variant"):
                precision = r.header.get("variant precision") if m.group(2) == "variant" else None
                scored = f"out of fold over folds {head.group(4)}, {head.group(1)} budget" + (
                    f", `{m.group(3)}`" if m.group(2) else ", defaults")
                for part in m.group(1).split(", "):
                    name, value = part.rsplit(" ", 1)
                    rows.append([name, f"**{value}**", scored, head.group(5)] + _tail(r, precision))
    # the defaults' row that several variants' records repeat (same set, figure, budget, seeds, machine, precision)
    unique = [row for i, row in enumerate(rows) if row[:6] not in [r[:6] for r in rows[:i]]]
    return table(["set", "macro F1", "what is scored", "seeds"] + TAIL, unique) + conditions(recs)


def render_time_to_f1(recs: list[Record]) -> str:
    rows = []
    for r in recs:
        h = r.find(r"time to F1: (\w+), fold (\d+), (\S+), (\d+) px, (\d+) epochs, .*?seed (\d+)")
        reach = r.find(r"maskcls first reaches it at epoch (\d+)").group(1)
        best = r.find(r"timm's best F1 ([\d.]+): epoch (\d+)")
        rows.append([h.group(1), h.group(6),
                     r.find(r"time-to-F1 speedup vs timm train.py: (.+)$").group(1),
                     r.find(r"throughput vs timm train.py: ([\d.]+)").group(1),
                     f"epoch {reach} (timm's best {best.group(1)} at its epoch {best.group(2)})"] + _tail(r))
    return table(["set", "seed", "`time-to-F1 speedup vs timm train.py`", "`throughput vs timm train.py`",
                  "maskcls reaches timm's best F1 at"] + TAIL, rows) + conditions(recs)


def render_train(recs: list[Record]) -> str:
    rows = []
    for r in recs:
        model = r.find(r"model (\S+) at (\d+)px")
        ref = r.find(r"reference \(fp32, eager, NCHW float input\)\s+([\d.]+)").group(1)
        emulated = any("no native bf16" in line for line in r.lines)
        for label, pattern in (("fp32", r"maskcls fp32 \+ channels_last \(uint8 input\)\s+([\d.]+)\s+([\d.]+)"),
                               ("bf16 autocast" + (" (emulated)" if emulated else ""),
                                r"maskcls bf16 autocast \+ channels_last\s+([\d.]+)\s+([\d.]+)")):
            m = r.find(pattern)
            rows.append([f"{model.group(1)}, {model.group(2)} px", m.group(1), ref, f"{m.group(2)}×"]
                        + _tail(r, label))
    return table(["model", "maskcls img/s", "reference img/s (fp32)", "maskcls vs reference"] + TAIL, rows) \
        + conditions(recs)


def render_loader(recs: list[Record]) -> str:
    rows = [[r.find(r"loader speedup vs reference: (.+)$").group(1) + "×",
             r.find(r"loader cache speedup vs reference: (.+)$").group(1) + "×",
             r.find(r"ours-jpeg\s+2\s+threads\s+([\d.]+)").group(1),
             r.find(r"reference\s+2\s+processes\s+([\d.]+)").group(1)] + _tail(r) for r in recs]
    return table(["`loader speedup vs reference` (JPEG)", "`loader cache speedup vs reference`",
                  "ours, JPEG, 2 threads, img/s", "reference, 2 processes, img/s"] + TAIL, rows) + conditions(recs)


def render_stats(recs: list[Record]) -> str:
    rows = [[r.find(r"stats speedup vs reference: (.+)$").group(1) + "×",
             r.find(r"maskcls \(exact pooled std\)\s+([\d.]+)").group(1),
             r.find(r"reference \(mean of per-image std\)\s+([\d.]+)").group(1),
             r.find(r"reference std is biased low by (\S+)").group(1)] + _tail(r) for r in recs]
    return table(["`stats speedup vs reference`", "maskcls img/s", "reference img/s", "reference std biased low by"]
                 + TAIL, rows) + conditions(recs)


def render_workers(recs: list[Record]) -> str:
    rows = []
    for r in recs:
        speeds = {n: r.find(rf"{n}\s+([\d.]+)\s+[\d.]+\s").group(1) for n in "012"}
        rows.append([r.find(r"workers 1 vs 2: ([\d.]+)").group(1), speeds["0"], speeds["1"], speeds["2"]] + _tail(r))
    return table(["`workers 1 vs 2`", "0 workers, img/s", "1 worker", "2 workers"] + TAIL, rows) + conditions(recs)


def render_faces(recs: list[Record]) -> str:
    rows = [[r.find(r"faces speedup vs reference: (.+)$").group(1) + "×",
             r.find(r"maskcls faces \(batched, downscaled\)\s+\d+\s+[\d.]+\s+([\d.]+)").group(1),
             r.find(r"reference \(1 at a time, full res\)\s+\d+\s+[\d.]+\s+([\d.]+)").group(1)] + _tail(r)
            for r in recs]
    return table(["`faces speedup vs reference`", "maskcls images/s", "reference images/s"] + TAIL, rows) \
        + conditions(recs)


def render_memory(recs: list[Record]) -> str:
    rows = [[r.find(r"peak RSS of the process tree.*: ([\d.]+ GiB)").group(1),
             r.find(r"peak PSS of the process tree.*: ([\d.]+ GiB)").group(1),
             r.find(r"images: (\d+) training photos").group(1)] + _tail(r) for r in recs]
    return table(["peak RSS, main + workers", "peak PSS", "photos"] + TAIL, rows) + conditions(recs)


SERVE_ROW = re.compile(r"\s+(peer: .+?|maskcls .+?)\s+(\d+)\s+\d+\s+\d+\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)"
                       r"\s+\d+\s+\d+\s+([+-][\d.]+)$")


def render_serve(recs: list[Record]) -> str:
    rows, lines = [], []
    for r in recs:
        lines.append(f"`{r.find(r'(serve speedup vs naive server: .+)$').group(1)}` ({r['machine']}, {r['date']}): "
                     "maskcls' default configuration over the naive server, requests/s at concurrency 8.\n")
        by_config: dict[str, dict[str, tuple[str, str, str]]] = {}
        for line in r.lines:
            if m := SERVE_ROW.match(line):
                by_config.setdefault(m.group(1), {})[m.group(2)] = (m.group(3), m.group(4), m.group(5))
        for config, cells in by_config.items():
            precision = "fp32 (PyTorch eager)" if config.startswith("peer") else config.split()[1].rstrip(",")
            rows.append([config, cells["1"][0], cells["8"][0], cells["32"][0], cells["8"][1],
                         max((c[2] for c in cells.values()), key=float) + " %"] + _tail(r, precision))
    return "\n".join(lines) + "\n" + table(["server", "req/s at 1", "req/s at 8", "req/s at 32", "p99 ms at 8",
                                            "RSS growth, worst"] + TAIL, rows) + conditions(recs)


def render_predict(recs: list[Record]) -> str:
    rows = []
    for r in recs:
        for backend, precision in (("torch", "fp32"), ("onnx", "fp32"),
                                   ("onnx-int8", "int8 (the first 3 convolutions fp32, entropy calibration)")):
            m = r.find(rf"{re.escape(backend)}\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)%")
            rows.append([backend, m.group(1), f"{m.group(2)}×", f"{m.group(3)} %"] + _tail(r, precision))
    heads = [f"`{r.find(r'(int8 speedup vs fp32 onnx: .+)$').group(1)}`; "
             f"`{r.find(r'(int8 agreement with torch: .+)$').group(1)}` ({r['machine']}, {r['date']})\n" for r in recs]
    return "\n".join(heads) + "\n" + table(["backend", "images/s", "vs ONNX fp32", "class equal to torch's"] + TAIL,
                                          rows) + conditions(recs)


def render_gpu_throughput(recs: list[Record]) -> str:
    rows = []
    for r in recs:
        for line in r.lines:
            if m := re.match(r"(.+?): ([\d.]+), ([\d.]+), ([\d.]+) img/s; (\d+ s)$", line):
                rows.append([m.group(1), m.group(2), m.group(3), m.group(4), m.group(5)] + _tail(r))
    return table(["configuration", "epoch 1 img/s", "epoch 2", "epoch 3", "wall, 3 epochs + start"] + TAIL, rows) \
        + conditions(recs)


RESULTS: dict[str, Callable[[list[Record]], str]] = {
    "demo": render_demo, "quality": render_quality, "time-to-f1": render_time_to_f1, "train": render_train,
    "loader": render_loader, "stats": render_stats, "workers": render_workers, "faces": render_faces,
    "memory": render_memory, "serve": render_serve, "predict": render_predict,
    "gpu-throughput": render_gpu_throughput,
}


def render_machines() -> str:
    return table(["machine", "what it is"], [[name, text] for name, text in MACHINES.items()])


def render_readme_demo() -> str:
    r = read_record(RECORDED / "demo.txt")
    where = r["conditions"].split(";")[0]
    return (f"`{r['command']}` ends with a summary like this one ({r['date']}, {r['machine']}: "
            f"{MACHINES[r['machine']].split(';')[0]}, {r['precision']}; {where}):\n\n```\n"
            + "\n".join(r.lines).rstrip("\n") + "\n```\n\n" + r["note"]
            + " Every current figure: [docs/results.md](docs/results.md).\n")


# ----------------------------------------------------------------------------------------------- the blocks
def blocks() -> dict[Path, dict[str, str]]:
    """Every generated block: file → block name → its content."""
    from maskcls.config_io import config_table
    results = {f"results-{bench}": render(records(bench)) for bench, render in RESULTS.items()}
    results["results-machines"] = render_machines()
    return {ROOT / "docs" / "configuration.md": {"config-table": config_table()},
            ROOT / "README.md": {"demo": render_readme_demo()},
            ROOT / "docs" / "results.md": results}


def fill(text: str, content: dict[str, str], where: str = "") -> str:
    """``text`` with each named block's content replaced; an error when a block is missing."""
    missing = set(content) - {m.group("name") for m in BLOCK.finditer(text)}
    if missing:
        raise ValueError(f"{where}: no <!-- NAME --> ... <!-- /NAME --> block for {sorted(missing)}")
    return BLOCK.sub(lambda m: m.group(1) + content[m.group("name")] + m.group(3)
                     if m.group("name") in content else m.group(0), text)


def rendered() -> dict[Path, str]:
    """Every file with generated blocks, as it should read."""
    return {path: fill(path.read_text(encoding="utf-8"), content, str(path.relative_to(ROOT)))
            for path, content in blocks().items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only say which files are stale (exit 1 if any)")
    args = ap.parse_args(argv)
    new = rendered()
    stale = [p for p, text in new.items() if p.read_text(encoding="utf-8") != text]
    for p in stale:
        if not args.check:
            p.write_text(new[p], encoding="utf-8")
        print(f"{p.relative_to(ROOT)}: {'stale' if args.check else 'updated'}")
    if not stale:
        print("every generated block is current")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
