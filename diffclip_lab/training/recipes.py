# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Named model sizes and training recipes: the values an option takes when the command line leaves it unset."""

MODEL_CONFIGS = {
    # the demo's model: trains to well above chance on captioned shapes in a few CPU minutes
    "tiny": dict(
        text_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=64,
    ),
    "vit-b-16": {},  # DiffCLIPConfig's defaults are the released ViT-B/16
}
# Pretraining; `paper` is the paper's CC3M/CC12M recipe (SLIP's optimiser and crops).
PRETRAINING_RECIPES = {
    "demo": dict(
        model_config="tiny",
        num_epochs=6,
        per_device_batch_size=128,
        learning_rate=2e-3,
        weight_decay=0.1,
        warmup_ratio=0.1,
        adam_epsilon=1e-6,
        crop_scale=1.0,
    ),
    "paper": dict(
        model_config="vit-b-16",
        num_epochs=40,
        global_batch_size=4096,
        learning_rate=5e-4,
        weight_decay=0.5,
        warmup_epochs=1,
        adam_epsilon=1e-8,
        crop_scale=0.5,
    ),
}


def apply_recipe(args, recipe: dict) -> set[str]:
    """Give the options left unset (None) the recipe's values; returns the options set on the command line. An option
    given beats the recipe's other way of setting the same quantity (a warm-up ratio its warm-up epochs, a per-device
    batch its global batch)."""
    explicit = {key for key, value in vars(args).items() if value is not None}
    for key, value in recipe.items():
        if key not in explicit:
            setattr(args, key, value)
    if "warmup_ratio" in explicit and "warmup_epochs" not in explicit:
        args.warmup_epochs = None
    if "per_device_batch_size" in explicit and "global_batch_size" not in explicit:
        args.global_batch_size = None
    return explicit


# Training a LLaVA-style model, per stage; `llava15` is LLaVA-1.5's (align: the projector on 558k captioned images,
# instruct: projector and language model on 665k conversations), `demo` the vision-language demo's on shapes.
_LLAVA15 = dict(num_epochs=1, warmup_ratio=0.03, weight_decay=0.0, model_max_length=2048, drop_last=False)
_DEMO = dict(warmup_ratio=0.05, weight_decay=0.0, template="chat", drop_last=True, group_by_modality=False)
VLM_RECIPES = {
    # scripts/v1_5/pretrain.sh (--version plain, image_aspect_ratio left at "square": no padding) and finetune.sh
    # (--version v1 --image_aspect_ratio pad --group_by_modality_length True); the Trainer keeps an epoch's last
    # smaller batch; bf16 and gradient checkpointing where CUDA is (train_vlm.py)
    "llava15": {
        "align": dict(
            _LLAVA15,
            learning_rate=1e-3,
            global_batch_size=256,
            template="plain",
            group_by_modality=False,
            pad_to_square=False,
        ),
        "instruct": dict(_LLAVA15, learning_rate=2e-5, global_batch_size=128, template="chat", group_by_modality=True),
    },
    "demo": {
        "align": dict(_DEMO, learning_rate=3e-3, per_device_batch_size=32, num_epochs=3),
        "instruct": dict(_DEMO, learning_rate=3e-3, per_device_batch_size=32, num_epochs=10),
    },
}
