"""The peer of ``maskcls bench serve``: the server a competent user writes without maskcls.

FastAPI + uvicorn; the PyTorch model in eager fp32, built with timm as the run's config says and
loaded from the run's checkpoint; PIL decoding and torchvision's transforms (resize the short side,
centre crop, to-tensor, normalise with the run's mean/std); one request at a time (the model runs
inside the ``async`` route, as the FastAPI tutorials write it). It answers ``POST /v1/predict``
with the shape the bench's client reads (``{"results": [{"class_id", …}]}``) and ``GET /readyz``.

This is the baseline maskcls is measured against, not a second copy of it: of maskcls it imports only the run
layer (:mod:`maskcls.rundir`), to find the run's config and checkpoint where every reader of a run finds them;
what it serves with is plain timm, torchvision and PIL, using what the checkpoint holds (the state dict of a timm
model wrapped as ``backbone.*``, and the preprocessing in its ``meta``).

Run: ``python -m maskcls.bench.peer_server RUN --port 8001``.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import timm
import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from torchvision import transforms

from ..rundir.checkpoint import load_checkpoint
from ..rundir.files import fold_numbers, read_run_config


def load_peer_model(run: Path) -> tuple[torch.nn.Module, dict]:
    """The run's best fold as a plain timm model in eval mode, and the checkpoint's meta."""
    config = read_run_config(run)  # the run layer finds the files; the model is then built as a user would
    fold = min(fold_numbers(run, "best.pt").items())[1]  # the first fold: the bench serves a one-fold run
    checkpoint = load_checkpoint(fold, fallback=False)
    meta = checkpoint["meta"]
    model = timm.create_model(config.model.name, pretrained=False, num_classes=meta["num_classes"]
                              if meta["heads"] == "single" else sum(len(a["classes"]) for a in meta["attributes"]))
    state = {k.removeprefix("backbone."): v for k, v in checkpoint["model"].items() if k.startswith("backbone.")}
    model.load_state_dict(state)
    return model.eval(), meta


def class_probabilities(logits: torch.Tensor, meta: dict) -> torch.Tensor:
    """Softmax; a multi-head model's class probability is the product of its heads' softmaxes."""
    if meta["heads"] == "single":
        return logits.softmax(1)
    probs, start = None, 0
    for attribute in meta["attributes"]:
        n = len(attribute["classes"])
        p = logits[:, start:start + n].softmax(1)
        probs = p if probs is None else (probs[:, :, None] * p[:, None, :]).flatten(1)
        start += n
    return probs


def create_peer_app(run: Path) -> FastAPI:
    model, meta = load_peer_model(run)
    pre = meta["preprocessing"]
    size = pre["image_size"]
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                    transforms.Normalize(pre["mean"], pre["std"])])
    app = FastAPI()

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready"}

    @app.post("/v1/predict")
    async def predict(file: UploadFile = File(...)):
        image = Image.open(io.BytesIO(await file.read())).convert("RGB")
        with torch.no_grad():
            probs = class_probabilities(model(transform(image).unsqueeze(0)), meta)[0]
        class_id = int(probs.argmax())
        return {"results": [{"file": file.filename, "class_id": class_id,
                             "class_name": meta["class_names"][class_id], "confidence": float(probs[class_id])}]}
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_peer_app(args.run), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
