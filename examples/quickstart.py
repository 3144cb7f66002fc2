"""Zero-shot classification with DiffCLIP in ten lines (the README's quickstart; runs offline)."""

from PIL import Image
from transformers import pipeline

from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor


model = DiffCLIPModel(DiffCLIPConfig())  # random DiffCLIP ViT-B/16; or AutoModel.from_pretrained(path_or_repo_id)
processor = DiffCLIPProcessor.from_defaults()  # released preprocessing; or AutoProcessor.from_pretrained(...)
classify = pipeline(
    "zero-shot-image-classification",
    model=model,
    tokenizer=processor.tokenizer,
    image_processor=processor.image_processor,
)
image = Image.new("RGB", (320, 240), "red")
print(classify(image, candidate_labels=["a red square", "a blue circle", "a photo of a dog"]))
