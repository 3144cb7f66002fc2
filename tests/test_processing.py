"""The DiffCLIP processor: official token ids, offline construction, image preprocessing, saving."""

import json

import numpy as np
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from modeling_diffclip import DiffCLIPProcessor, clip_bpe_vocabulary, clip_tokenizer


def test_vocabulary_is_clip_s():
    vocab, merges = clip_bpe_vocabulary()
    assert len(vocab) == 49408
    assert len(merges) == 48894
    assert vocab["!"] == 0
    assert vocab["a</w>"] == 320
    assert vocab["photo</w>"] == 1125
    assert vocab["<|startoftext|>"] == 49406
    assert vocab["<|endoftext|>"] == 49407
    assert merges[0] == ("i", "n")
    assert sorted(vocab.values()) == list(range(49408))


def test_token_ids_equal_the_official_tokenizer(official_tiny):
    reference = json.loads((official_tiny / "reference.json").read_text())
    tokenizer = clip_tokenizer()
    ids = tokenizer(reference["captions"], padding="max_length", max_length=77, truncation=True)["input_ids"]
    for caption, actual, expected in zip(reference["captions"], ids, reference["official_token_ids"], strict=True):
        assert actual == expected, caption


def test_saved_processor_keeps_the_ids(tmp_path):
    captions = ["Crème brûlée & café au lait!!", "it's what we've done", "<|endoftext|> is text here"]
    processor = DiffCLIPProcessor.from_defaults()
    expected = processor(text=captions, padding="max_length")["input_ids"]
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DiffCLIPProcessor
    assert loaded(text=captions, padding="max_length")["input_ids"] == expected
    assert AutoTokenizer.from_pretrained(tmp_path)(captions, padding="max_length")["input_ids"] == expected
    assert all(len(row) == 77 and row[0] == 49406 for row in expected)
    assert expected[0][15:17] == [49407, 0]  # "!!" is one token; padding is id 0


def test_long_captions_are_truncated_to_the_context_ending_with_end_of_text():
    ids = clip_tokenizer()(["word " * 200], truncation=True)["input_ids"][0]
    assert len(ids) == 77
    assert ids[0] == 49406
    assert ids[-1] == 49407


def test_images_are_resized_cropped_and_normalised_as_released():
    processor = DiffCLIPProcessor.from_defaults(image_size=64)
    image = Image.fromarray(np.full((90, 120, 3), (255, 128, 0), dtype=np.uint8))
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 64, 64)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (np.array([255, 128, 0]) / 255 - mean) / std
    np.testing.assert_allclose(pixel_values[0].mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    inputs = processor(text=["a", "b c"], images=[image, image], padding=True, return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}
    assert inputs["input_ids"].shape == (2, 4)
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)


def test_saving_has_no_side_effects_and_round_trips(tmp_path):
    """Transformers' processor round-trip check, and a folder that still loads with trust_remote_code."""
    processor = DiffCLIPProcessor.from_defaults(image_size=32, context_length=16)
    before = processor.to_dict()
    processor.save_pretrained(tmp_path / "first")
    assert processor.to_dict() == before
    assert "auto_map" not in vars(processor)
    assert "auto_map" not in vars(processor.image_processor)
    saved = json.loads((tmp_path / "first" / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "processing_diffclip.DiffCLIPProcessor"}
    assert "auto_map" not in saved["image_processor"]
    loaded = AutoProcessor.from_pretrained(tmp_path / "first")
    assert loaded.to_dict() == before
    loaded.save_pretrained(tmp_path / "second")
    assert AutoProcessor.from_pretrained(tmp_path / "second").to_dict() == before
    assert (tmp_path / "second" / "processing_diffclip.py").is_file()
