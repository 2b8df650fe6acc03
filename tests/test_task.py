"""labels.Task: the one place the mask × gender × age factorisation lives (fast unit tests)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from maskcls.errors import ConfigError, DataError
from maskcls.metrics import confusion, head_f1, macro_f1
from maskcls.models.heads import probabilities
from maskcls.task import Attribute, Task, age_group, parse_age

COMP = Task.competition()


def test_competition_task_matches_the_rule_class_is_mask6_gender3_age():
    assert COMP.num_classes == 18 and COMP.kind == "mask_gender_age" and COMP.factored
    for m, g, a in itertools.product(range(3), range(2), range(3)):
        c = int(COMP.encode(m, g, a))
        assert c == m * 6 + g * 3 + a
        assert COMP.decode(c) == (m, g, a)
    assert COMP.head_slices == {"mask": slice(0, 3), "gender": slice(3, 5), "age": slice(5, 8)}
    assert COMP.outputs("multi") == 8 and COMP.outputs("single") == 18


def test_split_works_on_numpy_and_torch_alike():
    labels = np.arange(18)
    a = COMP.split(labels)
    b = COMP.split(torch.arange(18))
    for h in ("mask", "gender", "age"):
        assert a[h].tolist() == b[h].tolist()
    assert a["mask"].tolist() == [c // 6 for c in range(18)]
    assert a["gender"].tolist() == [(c // 3) % 2 for c in range(18)]
    assert a["age"].tolist() == [c % 3 for c in range(18)]


def test_a_two_attribute_task_is_the_same_code_path():
    t = Task.competition(names=("gender", "age"))
    assert t.class_names == ("male/<30", "male/30-59", "male/>=60", "female/<30", "female/30-59", "female/>=60")
    assert t.kind == "attributes" and t.factored and t.outputs("multi") == 5
    assert int(t.encode(1, 2)) == 5 and t.decode(4) == (1, 1)
    assert Task.from_meta(t.to_meta()) == t


def test_meta_round_trip_and_legacy_meta():
    assert Task.from_meta(COMP.to_meta()) == COMP
    legacy = {"task": "mask_gender_age", "num_classes": 18,
              "class_names": list(Task.competition(old_age=59).class_names)}
    assert Task.from_meta(legacy) == Task.competition(old_age=59)  # threshold read from the names
    flat = Task.from_meta({"task": "generic", "num_classes": 3, "class_names": ["a", "b", "c"]})
    assert flat.kind == "generic" and not flat.factored and flat.outputs("multi") == 0


def test_heads_auto_has_one_rule():
    assert COMP.resolve_heads("auto") == "multi"
    assert Task.flat(["a", "b"]).resolve_heads("auto") == "single"
    assert Task.competition(names=("gender",)).resolve_heads("auto") == "single"  # one attribute: one head
    with pytest.raises(ConfigError, match="heads=multi"):
        Task.flat(["a", "b"]).resolve_heads("multi")


def test_combined_head_probabilities_are_the_product_of_the_heads():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 8, generator=g)
    p = probabilities(logits, COMP, "multi")
    assert p.shape == (4, 18) and torch.allclose(p.sum(1), torch.ones(4))
    pm, pg, pa = (logits[:, s].softmax(1) for s in COMP.head_slices.values())
    for c in range(18):
        m, gg, a = COMP.decode(c)
        assert torch.allclose(p[:, c], pm[:, m] * pg[:, gg] * pa[:, a])


def test_attribute_confusions_and_counts_are_marginals():
    rng = np.random.default_rng(1)
    y, q = rng.integers(0, 18, 500), rng.integers(0, 18, 500)
    cm = confusion(y, q, 18)
    per = COMP.attribute_confusions(cm)
    for h, m in per.items():
        direct = confusion(COMP.split(y)[h], COMP.split(q)[h], m.shape[0])
        assert (m == direct).all()
    counts = np.bincount(y, minlength=18)
    marg = COMP.attribute_counts(counts)
    assert marg["gender"].tolist() == np.bincount(COMP.split(y)["gender"], minlength=2).tolist()
    assert set(head_f1(cm, COMP)) == {"mask", "gender", "age"}
    assert head_f1(cm, Task.flat(list("abcd"))) == {}
    assert macro_f1(per["mask"]) == pytest.approx(head_f1(cm, COMP)["mask"])


def test_names_ages_and_bad_values():
    assert COMP.parse_name("wear / female / 30-59") == 4
    with pytest.raises(DataError):
        COMP.parse_name("wear/female/40")
    with pytest.raises(DataError):
        COMP.decode(18)
    assert list(age_group([29, 30, 59, 60])) == [0, 1, 1, 2]
    assert parse_age(" 40 ") == 40 and parse_age("40.0") == 40
    for bad in ("40.5", "abc", "", "-3"):
        with pytest.raises(DataError, match="whole number"):
            parse_age(bad)
    with pytest.raises(ValueError):
        Task(("a", "b", "c"), (Attribute("x", ("p", "q")),))
