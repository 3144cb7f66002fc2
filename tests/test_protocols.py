"""The evaluation protocols' metrics, on tiny cases whose answers are computed by hand."""

import math

import pytest
import torch

from diffclip_lab.evaluation.protocols import (
    classification_metrics,
    few_shot,
    few_shot_episodes,
    fit_logistic_regression,
    linear_probe,
    mmvp_pair_correct,
    mmvp_scores,
    retrieval_metrics,
    split_train_validation,
    zero_shot_prompts,
    zero_shot_weights,
)


def test_classification_metrics_by_hand():
    # 4 samples, 6 classes; true classes 0, 0, 1, 2
    logits = torch.tensor(
        [
            [9, 1, 0, 0, 0, 0],  # class 0 first: top-1 right
            [1, 9, 8, 7, 6, 5],  # class 0 ranked 6th: wrong in top-1 and top-5
            [0, 1, 9, 0, 0, 0],  # class 1 second: top-5 right only
            [0, 0, 9, 0, 0, 0],  # class 2 first: right
        ],
        dtype=torch.float,
    )
    labels = torch.tensor([0, 0, 1, 2])
    metrics = classification_metrics(logits, labels)
    assert metrics["acc1"] == pytest.approx(2 / 4)
    assert metrics["acc5"] == pytest.approx(3 / 4)
    # per-class top-1 recall: class 0: 1/2, class 1: 0/1, class 2: 1/1 -> mean 0.5
    assert metrics["mean_per_class_recall"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_zero_shot_weights_average_normalised_template_embeddings():
    assert zero_shot_prompts(["cat", "dog"], ["a {c}.", "the {c}"]) == ["a cat.", "the cat", "a dog.", "the dog"]
    embeddings = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, -2.0], [0.0, -5.0]])
    weights = zero_shot_weights(embeddings, 2)
    torch.testing.assert_close(weights, torch.tensor([[2**-0.5, 2**-0.5], [0.0, -1.0]]))


def test_retrieval_recall_by_hand():
    # 3 images (one-hot directions); 4 captions: caption t belongs to image text_to_image[t]
    images = torch.eye(3)
    text_to_image = torch.tensor([0, 0, 1, 2])
    texts = torch.tensor(
        [
            [1.0, 0.2, 0.0],  # image 0 first
            [0.1, 0.0, 1.0],  # image 0 second (behind 2)
            [0.0, 0.3, 0.2],  # image 1 first
            [0.5, 0.4, 0.1],  # image 2 third
        ]
    )
    metrics = retrieval_metrics(texts, images, text_to_image, ks=(1, 2))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(2 / 4)
    assert metrics["image_retrieval_recall@2"] == pytest.approx(3 / 4)
    # image->text on cosine similarity: image 0's best caption is 0 (its own); image 1's best is 2 (own);
    # image 2's best is caption 1 (image 0's), its own caption 3 is last -> not in the top 2
    assert metrics["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert metrics["text_retrieval_recall@2"] == pytest.approx(2 / 3)


def test_few_shot_episodes_are_deterministic_and_well_formed():
    train_labels = torch.arange(8).repeat_interleave(7)
    test_labels = torch.arange(8).repeat_interleave(3)
    first = list(few_shot_episodes(train_labels, test_labels, episodes=20, seed=1))
    again = list(few_shot_episodes(train_labels, test_labels, episodes=20, seed=1))
    other = list(few_shot_episodes(train_labels, test_labels, episodes=20, seed=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    support, query = first[0]
    assert len(support) == 25
    assert len(set(support.tolist())) == 25
    support_classes = train_labels[support].view(5, 5)
    assert (support_classes == support_classes[:, :1]).all()
    assert len(support_classes[:, 0].unique()) == 5
    assert len(query) == 15  # 3 test images per class, fewer than the 6 queries: all of them
    assert set(test_labels[query].tolist()) == set(support_classes[:, 0].tolist())


def test_few_shot_accuracy_and_interval():
    # two well-separated clusters per class direction: nearest class mean is always right
    labels = torch.arange(6).repeat_interleave(10)
    features = torch.nn.functional.one_hot(labels, 6).float() * 5 + torch.randn(60, 6) * 0.1
    result = few_shot((features, labels), (features, labels), episodes=50, ways=5, shots=5, queries=3)
    assert result["acc1"] == 1.0
    assert result["acc1_ci95"] == 0.0
    assert result["episodes"] == 50
    # random features: chance (1/5) on average, and the interval is 1.96·std/√n
    generator = torch.Generator().manual_seed(0)
    train_noise, test_noise = torch.randn(60, 6, generator=generator), torch.randn(60, 6, generator=generator)
    result = few_shot((train_noise, labels), (test_noise, labels), episodes=400, ways=5, shots=5, queries=3)
    assert 0.1 < result["acc1"] < 0.3
    assert result["acc1_ci95"] == pytest.approx(1.96 * result["acc1_std"] / math.sqrt(400))


def test_logistic_regression_reaches_the_objective_minimum():
    torch.manual_seed(0)
    features = torch.randn(60, 5)
    labels = (features[:, 0] + 0.5 * features[:, 1] > 0).long()
    cost = 100.0
    classifier = fit_logistic_regression(features, labels, cost, num_classes=2, max_iter=500)
    objective = torch.nn.functional.cross_entropy(classifier(features), labels) + 0.5 * classifier.weight.norm() / cost
    gradients = torch.autograd.grad(objective, list(classifier.parameters()))
    assert max(g.abs().max().item() for g in gradients) < 1e-4  # a stationary point of the protocol's objective
    assert (classifier(features).argmax(1) == labels).float().mean() > 0.9


def test_linear_probe_sweeps_costs_and_refits():
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 3
    labels = torch.arange(3).repeat(30)
    features = centres[labels] + torch.randn(90, 8)
    train_idx, val_idx = split_train_validation(labels[:60].tolist())
    assert len(val_idx) == 12
    assert len(train_idx) == 48
    assert split_train_validation(labels[:60].tolist()) == (train_idx, val_idx)
    tried = []
    result = linear_probe(
        (features[train_idx], labels[train_idx]),
        (features[val_idx], labels[val_idx]),
        (features[60:], labels[60:]),
        max_iter=100,
        on_fit=lambda cost, score: tried.append(cost),
    )
    assert tried[:7] == [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6]  # the coarse sweep, then the fine search
    assert len(tried) > 7
    assert result["costs_tried"] == len(tried)
    assert result["acc1"] > 0.9
    assert result["cost"] in tried


def test_mmvp_pair_scoring():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert mmvp_pair_correct(images, torch.tensor([[0.9, 0.1], [0.2, 0.8]]))  # both pick their own image
    assert not mmvp_pair_correct(images, torch.tensor([[0.9, 0.1], [0.8, 0.2]]))  # the second picks image 1
    assert not mmvp_pair_correct(images, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))  # a tie goes to image 2
    scores = mmvp_scores(["color", "color", "count", "count"], [True, False, True, True])
    assert scores == {"color": 0.5, "count": 1.0, "average": 0.75}  # fractions, as every other metric
