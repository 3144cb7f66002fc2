"""Zero-shot classification as in CLIP Benchmark: prompt-ensembled class embeddings and the usual metrics."""

import torch


@torch.no_grad()
def zero_shot_classifier(model, tokenizer, classnames: list[str], templates: list[str], device, context_length=None):
    """
    One embedding per class, (num_classes, dim): each template's text embedding L2-normalised, averaged over the
    templates, and renormalised. Templates hold a `{c}` placeholder for the class name.
    """
    weights = []
    for classname in classnames:
        texts = [template.replace("{c}", classname) for template in templates]
        inputs = tokenizer(texts, padding="max_length" if context_length else True, max_length=context_length,
                           truncation=True, return_tensors="pt").to(device)
        embeddings = model.get_text_features(**inputs).pooler_output.float()
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        mean = embeddings.mean(dim=0)
        weights.append(mean / mean.norm())
    return torch.stack(weights)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy and the mean over classes of per-class recall, for (samples, classes) logits."""
    num_classes = logits.shape[1]
    top = logits.topk(min(5, num_classes), dim=1).indices
    correct = top == labels[:, None]
    present = labels.unique()
    recalls = [correct[labels == c, 0].float().mean() for c in present]
    return {
        "acc1": correct[:, 0].float().mean().item(),
        "acc5": correct.any(dim=1).float().mean().item(),
        "mean_per_class_recall": torch.stack(recalls).mean().item(),
    }
