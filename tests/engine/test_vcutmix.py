"""Vertical CutMix (data.vcutmix): left columns from one image, right from another, targets mixed by area."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import tiny, train
from maskcls.engine.trainer.mixing import VerticalCutMix, make_mixer, mix_batch, pair_partners
from maskcls.errors import ConfigError
from maskcls.task import Task

COMP = Task.competition()
W = 40


def _constant_images(n: int) -> torch.Tensor:
    """Image i is filled with the value 5 + 7·i, so every pixel says which image it came from."""
    return (5 + 7 * torch.arange(n, dtype=torch.uint8))[:, None, None, None].expand(n, 3, 8, W).contiguous()


def _sources(out: torch.Tensor, n: int) -> tuple[int, int, int]:
    """(left image, split column, right image) of one mixed image, checked to be a vertical split."""
    ids = ((out.long() - 5) // 7)  # C×H×W source image per pixel
    per_column = ids[0, 0]
    assert (ids == per_column).all(), "every column must come from one image"
    c = int((per_column == per_column[0]).sum())
    assert (per_column[:c] == per_column[0]).all() and (per_column[c:] == per_column[-1]).all()
    return int(per_column[0]), c, int(per_column[-1])


def test_targets_sum_to_one_per_head_and_follow_the_area():
    n = 12
    mixer = VerticalCutMix(prob=1.0, span=(0.35, 0.65), num_classes=18)
    y = torch.tensor([0, 17, 4, 9, 12, 3, 6, 1, 15, 8, 11, 2])
    x = _constant_images(n)
    np.random.seed(0)
    out, soft = mix_batch(mixer, x, y)
    assert out.dtype == torch.uint8 and out.shape == x.shape and soft.shape == (n, 18)
    heads = COMP.marginals(soft)
    for name, m in heads.items():
        assert torch.allclose(m.sum(1), torch.ones(n)), name
    for i in range(n):
        left, c, right = _sources(out[i], n)
        assert left == i and right != i and 0.35 * W - 0.5 <= c <= 0.65 * W + 0.5
        lam = c / W
        want = torch.zeros(18)
        want[y[i]] += lam
        want[y[right]] += 1 - lam
        assert torch.allclose(soft[i], want, atol=1e-6)
        for (name, m), ia, ib in zip(heads.items(), COMP.decode(int(y[i])), COMP.decode(int(y[right]))):
            w = torch.zeros(m.shape[1])
            w[ia] += lam
            w[ib] += 1 - lam
            assert torch.allclose(m[i], w, atol=1e-6), name


def test_same_mask_pairs_only_images_of_the_same_mask_state():
    cfg = tiny(data={"vcutmix": 1.0, "vcutmix_same_mask": True}).data
    mixer = make_mixer(cfg, num_classes=18, task=COMP)
    masks = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 1])  # 13 images; one draw per seed below
    rng = np.random.default_rng(3)
    y = torch.tensor(COMP.encode(masks, rng.integers(0, 2, 13), rng.integers(0, 3, 13)))
    x = _constant_images(13)
    mixed_across = 0
    for seed in range(20):
        np.random.seed(seed)
        out, soft = mixer(x, y)
        for i in range(13):
            left, c, right = _sources(out[i], 13)
            assert masks[right] == masks[i] and right != i
            mixed_across += int(COMP.decode(int(y[right]))[1:] != COMP.decode(int(y[i]))[1:])
        assert torch.allclose(COMP.marginals(soft)["mask"], torch.nn.functional.one_hot(torch.tensor(masks), 3).float())
    assert mixed_across > 0  # gender/age still get mixed


def test_partners_form_cycles_and_a_lonely_group_member_is_its_own_partner():
    rs = np.random.RandomState(0)
    p = pair_partners(9, rng=rs)
    assert sorted(p) == list(range(9)) and (p != np.arange(9)).all()
    groups = np.array([0, 1, 1, 2, 2, 2])
    p = pair_partners(6, groups, rng=rs)
    assert p[0] == 0 and (groups[p] == groups).all() and (p[1:] != np.arange(1, 6)).all()


def test_probability_and_determinism():
    x, y = _constant_images(8), torch.arange(8) % 3
    mixer = VerticalCutMix(prob=0.0, span=(0.35, 0.65), num_classes=3)
    out, soft = mixer(x, y)
    assert torch.equal(out, x) and torch.equal(soft, torch.nn.functional.one_hot(y, 3).float())
    half = VerticalCutMix(prob=0.5, span=(0.5, 0.5), num_classes=3)
    np.random.seed(1)
    a = half(x, y)
    np.random.seed(1)
    b = half(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # numpy's global RNG: restored on resume
    lam = a[1].max(1).values
    assert set(lam.tolist()) <= {1.0, 0.5}
    xl = x.contiguous(memory_format=torch.channels_last)
    assert half(xl, y)[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("data,task,match", [
    ({"vcutmix": 0.5, "mixup": 0.2}, COMP, r"data\.vcutmix=0\.5 cannot be combined with data\.mixup"),
    ({"vcutmix": 0.5, "cutmix": 1.0}, COMP, r"cannot be combined"),
    ({"vcutmix": 0.5, "vcutmix_range": [0.7, 0.3]}, COMP, r"data\.vcutmix_range"),
    ({"vcutmix": 0.5, "vcutmix_range": [0.5]}, COMP, r"data\.vcutmix_range"),
    ({"vcutmix": 0.5, "vcutmix_same_mask": True}, Task.competition(names=("gender", "age")),
     r"data\.vcutmix_same_mask=true needs a mask attribute.*male/<30"),
    ({"vcutmix": 0.5, "vcutmix_same_mask": True}, Task.flat(["wear", "incorrect", "not_wear"]),
     r"needs a mask attribute"),
    ({"vcutmix_same_mask": True}, COMP, r"no effect with data\.vcutmix=0"),
])
def test_refusals_name_the_key_and_the_fix(data, task, match):
    with pytest.raises(ConfigError, match=match):
        make_mixer(tiny(data=data).data, num_classes=task.num_classes, task=task)


def test_without_mask_pairing_any_task_works():
    ag = Task.competition(names=("gender", "age"))
    mixer = make_mixer(tiny(data={"vcutmix": 1.0}).data, num_classes=ag.num_classes, task=ag)
    np.random.seed(0)
    x, y = _constant_images(5), torch.tensor([0, 1, 2, 3, 5])  # an odd batch is mixed too
    out, soft = mix_batch(mixer, x, y)
    assert not torch.equal(out, x) and torch.allclose(soft.sum(1), torch.ones(5))


@pytest.mark.slow
def test_training_with_vcutmix_mixes_its_batches_and_learns_from_soft_targets(prepared_dir, tmp_path, monkeypatch):
    from maskcls.engine.trainer import loop
    seen = []

    def spy(mixer, x, y):
        out, target = mix_batch(mixer, x, y)
        seen.append((not torch.equal(out, x), target.dim() == 2 and target.is_floating_point()))
        return out, target
    monkeypatch.setattr(loop, "mix_batch", spy)
    cfg = tiny(train={"epochs": 1, "max_train_batches": 3}, data={"vcutmix": 1.0})
    s = train(prepared_dir, tmp_path / "r", cfg)
    assert len(seen) == 3 and all(mixed and soft for mixed, soft in seen)  # every batch, with area-mixed targets
    assert np.isfinite(s["folds"]["0"]["best_f1"])
