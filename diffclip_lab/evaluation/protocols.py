"""The evaluation protocols of the DiffCLIP paper, on precomputed features (no model code here).

- zero-shot classification and retrieval as in CLIP Benchmark (LAION);
- linear probe and few-shot classification as in El Banani, Desai & Johnson, "Learning Visual Representations via
  Language-Guided Sampling" (CVPR 2023), whose protocol the paper follows;
- MMVP-VLM as its authors score CLIP models (Tong et al., "Eyes Wide Shut?", CVPR 2024).
"""

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------- zero-shot (CLIP Benchmark)


def zero_shot_prompts(classnames: list[str], templates: list[str]) -> list[str]:
    """Every template filled with every class name, class-major: prompt c·T + t is template t of class c."""
    return [template.replace("{c}", classname) for classname in classnames for template in templates]


def zero_shot_weights(prompt_embeddings: torch.Tensor, num_classes: int) -> torch.Tensor:
    """
    One embedding per class, (classes, dim), from the (classes·templates, dim) embeddings of `zero_shot_prompts`:
    each L2-normalised, averaged over the templates, and renormalised.
    """
    embeddings = F.normalize(prompt_embeddings.float(), dim=-1).view(num_classes, -1, prompt_embeddings.shape[-1])
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """`acc1`, `acc5` and `mean_per_class_recall` (balanced accuracy) of (samples, classes) logits."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct = top == labels[:, None]
    recalls = [correct[labels == c, 0].float().mean() for c in labels.unique()]
    return {
        "acc1": correct[:, 0].float().mean().item(),
        "acc5": correct.any(dim=1).float().mean().item(),
        "mean_per_class_recall": torch.stack(recalls).mean().item(),
    }


def retrieval_metrics(
    text_features: torch.Tensor, image_features: torch.Tensor, text_to_image: torch.Tensor, ks=(1, 5, 10)
) -> dict[str, float]:
    """
    CLIP Benchmark retrieval, every caption its own query. `image_retrieval_recall@k`: text→image, the caption's
    image is among the k most similar images; `text_retrieval_recall@k`: image→text, any of the image's captions is
    among its k most similar captions (images without a caption stay in the gallery but are no query). Features are
    L2-normalised here; `text_to_image[t]` is caption t's image.
    """
    scores = F.normalize(text_features.float(), dim=-1) @ F.normalize(image_features.float(), dim=-1).T
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(text_to_image)), text_to_image] = True
    queried = positives.any(0)  # images with a caption
    metrics = {}
    for k in ks:
        top_images = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (texts, k)
        metrics[f"image_retrieval_recall@{k}"] = positives.gather(1, top_images).any(1).float().mean().item()
        top_texts = scores.T[queried].topk(min(k, scores.shape[0]), dim=1).indices  # (images queried, k)
        hits = positives.T[queried].gather(1, top_texts).any(1)
        metrics[f"text_retrieval_recall@{k}"] = hits.float().mean().item()
    return metrics


# ----------------------------------------------------------------------------- linear probe (El Banani et al.)

COARSE_COSTS = [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6]


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, cost: float, num_classes: int, max_iter: int = 1000
) -> torch.nn.Linear:
    """
    Multinomial logistic regression by L-BFGS (strong Wolfe line search) from zero weights, minimising the
    protocol's objective: mean cross-entropy + (1/C)·0.5·‖W‖₂ (the weight norm, not its square, as in the
    reference code).
    """
    classifier = torch.nn.Linear(features.shape[1], num_classes).to(features.device)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(classifier.parameters(), line_search_fn="strong_wolfe", max_iter=max_iter)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(features), labels) + 0.5 * classifier.weight.norm() / cost
        loss.backward()
        return loss

    with one_thread_if_small(features):
        optimizer.step(closure)
    return classifier


# Below this many feature values, a CPU fit runs on one thread: its thousands of tiny steps then cost less than the
# threads' synchronisation (docs/performance.md, "Linear probe on CPU").
SMALL_PROBLEM = 2**20


@contextmanager
def one_thread_if_small(features: torch.Tensor) -> Iterator[None]:
    threads = torch.get_num_threads()
    small = features.device.type == "cpu" and features.numel() < SMALL_PROBLEM and threads > 1
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(threads)


def split_train_validation(labels: list[int], fraction: float = 0.2, seed: int = 93) -> tuple[list[int], list[int]]:
    """A deterministic, class-stratified hold-out of `fraction` of each class (indices of train, of validation)."""
    by_class = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    train, validation = [], []
    for indices in by_class.values():
        random.Random(seed).shuffle(indices)
        cut = int(len(indices) * fraction)
        validation += indices[:cut]
        train += indices[cut:]
    return train, validation


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    max_iter: int = 1000,
    mean_per_class: bool = False,
    on_fit: Callable[[float, float], None] | None = None,
) -> dict[str, float]:
    """
    The cost C chosen on the validation split by a coarse sweep (1e-6 … 1e6, one point per two decades), then a
    fine binary search over 8 points per decade around the best; the classifier is refit on train+validation with
    that C and tested once. Returns the test metrics, the chosen cost and its validation score.
    """
    num_classes = int(torch.cat([train[1], validation[1], test[1]]).max()) + 1
    metric = "mean_per_class_recall" if mean_per_class else "acc1"
    fits = 0

    def score(cost: float) -> float:
        nonlocal fits
        classifier = fit_logistic_regression(*train, cost, num_classes, max_iter)
        fits += 1
        with torch.no_grad():
            value = classification_metrics(classifier(validation[0]), validation[1])[metric]
        if on_fit:
            on_fit(cost, value)
        return value

    coarse = [score(cost) for cost in COARSE_COSTS]
    best = COARSE_COSTS[coarse.index(max(coarse))]
    scores = {best: max(coarse)}  # the fine search, tie rules included, as in the reference code
    costs = [c for c in torch.logspace(math.log10(best) - 2, math.log10(best) + 2, 29).tolist() if 1e-6 <= c <= 1e6]
    while len(costs) > 1:
        quarter, middle, three_quarters = costs[len(costs) // 4], costs[len(costs) // 2], costs[-len(costs) // 4]
        for cost in (quarter, middle, three_quarters):
            if cost not in scores:
                scores[cost] = score(cost)
        top = max(scores[quarter], scores[middle], scores[three_quarters])
        if top == scores[quarter]:
            costs = costs[: len(costs) // 2]
        elif top == scores[three_quarters]:
            costs = costs[len(costs) // 2 :]
        else:
            costs = costs[len(costs) // 4 : -len(costs) // 4]
    best = max(scores, key=scores.get)
    classifier = fit_logistic_regression(
        torch.cat([train[0], validation[0]]), torch.cat([train[1], validation[1]]), best, num_classes, max_iter
    )
    with torch.no_grad():
        metrics = classification_metrics(classifier(test[0]), test[1])
    return {**metrics, "cost": best, "validation_score": scores[best], "costs_tried": fits}


# ------------------------------------------------------------------------------- few-shot (El Banani et al.)


def few_shot_episodes(
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    episodes: int = 5000,
    ways: int = 5,
    shots: int = 5,
    queries: int = 6,
    seed: int = 0,
):
    """
    Yield (support indices into train, query indices into test) for `episodes` N-way K-shot tasks: `ways` classes
    drawn at random, `shots` train images and `queries` test images per class (all of them if fewer), the same
    episodes for the same seed.
    """
    generator = torch.Generator().manual_seed(seed)
    classes = train_labels.unique().tolist()
    if len(classes) < ways:
        raise ValueError(f"{ways}-way episodes need {ways} classes; the train split has {len(classes)}.")
    train_by_class = {c: (train_labels == c).nonzero().flatten() for c in classes}
    test_by_class = {c: (test_labels == c).nonzero().flatten() for c in classes}
    for c, indices in train_by_class.items():
        if len(indices) < shots:
            raise ValueError(f"class {c} has {len(indices)} train images, fewer than {shots} shots.")
    for _ in range(episodes):
        support, query = [], []
        for c in (classes[i] for i in torch.randperm(len(classes), generator=generator)[:ways].tolist()):
            train_c, test_c = train_by_class[c], test_by_class[c]
            support.append(train_c[torch.randperm(len(train_c), generator=generator)[:shots]])
            query.append(test_c[torch.randperm(len(test_c), generator=generator)[:queries]])
        yield torch.cat(support), torch.cat(query)


def few_shot(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    episodes: int = 5000,
    ways: int = 5,
    shots: int = 5,
    queries: int = 6,
    seed: int = 0,
) -> dict[str, float]:
    """
    Nearest class mean on each episode: features centred on the support mean and L2-normalised, prototypes the mean
    of each class's support, queries assigned to the nearest prototype. Mean accuracy over episodes, its standard
    deviation and 95% confidence interval (1.96·std/√episodes).
    """
    (train_features, train_labels), (test_features, test_labels) = train, test
    accuracies = []
    for support, query in few_shot_episodes(train_labels, test_labels, episodes, ways, shots, queries, seed):
        support_features, query_features = train_features[support].float(), test_features[query].float()
        mean = support_features.mean(dim=0, keepdim=True)
        support_features = F.normalize(support_features - mean, dim=-1)
        query_features = F.normalize(query_features - mean, dim=-1)
        prototypes = support_features.view(ways, shots, -1).mean(dim=1)
        prototype_labels = train_labels[support].view(ways, shots)[:, 0]
        predicted = prototype_labels[torch.cdist(query_features, prototypes).argmin(dim=1)]
        accuracies.append((predicted == test_labels[query]).float().mean())
    accuracies = torch.stack(accuracies)
    std = accuracies.std().item() if len(accuracies) > 1 else 0.0
    return {
        "acc1": accuracies.mean().item(),
        "acc1_std": std,
        "acc1_ci95": 1.96 * std / math.sqrt(len(accuracies)),
        "episodes": len(accuracies),
    }


# ------------------------------------------------------------------------------------------------- MMVP-VLM


def mmvp_pair_correct(image_features: torch.Tensor, text_features: torch.Tensor) -> bool:
    """
    One MMVP pair: statement i ("a photo of " + statement) picks the image it is more similar to (the second image
    on a tie, as in the reference code); the pair counts only if both statements pick their own image.
    Features: (2 images, dim), (2 statements, dim).
    """
    similarity = F.normalize(text_features.float(), dim=-1) @ F.normalize(image_features.float(), dim=-1).T
    picks = [0 if similarity[i, 0] > similarity[i, 1] else 1 for i in range(2)]
    return picks == [0, 1]


def mmvp_scores(categories: list[str], correct: list[bool]) -> dict[str, float]:
    """Per-category pair accuracy (0–1, as every metric here) over the visual patterns, and their average."""
    by_category = defaultdict(list)
    for category, ok in zip(categories, correct, strict=True):
        by_category[category].append(ok)
    scores = {category: sum(oks) / len(oks) for category, oks in by_category.items()}
    scores["average"] = sum(scores.values()) / len(scores)
    return scores
