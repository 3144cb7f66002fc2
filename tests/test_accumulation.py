"""Exact gradient accumulation of the contrastive loss (`diffclip_lab.training.contrastive.accumulated_step`): a
global batch taken as micro-batches has the loss and the gradients of one batch of the global size, also across
processes, with dropout, at about the memory of one micro-batch."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from conftest import accelerate_launch, tiny_config_kwargs

from diffclip_lab.benchmarking.harness import peak_memory
from diffclip_lab.training.contrastive import DualEncoderForTraining, accumulated_step, contrastive_loss
from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel


GLOBAL_BATCH, MICRO_BATCH = 32, 8


def make_trainer(seed=0, **config) -> DualEncoderForTraining:
    torch.manual_seed(seed)
    return DualEncoderForTraining(DiffCLIPModel(DiffCLIPConfig(**tiny_config_kwargs(**config))))


def global_batch(rows=GLOBAL_BATCH, seed=1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 1000, (rows, 16), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::3, 10:] = 0  # some padded captions
    pixel_values = torch.randn(rows, 3, 32, 32, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def split(batch: dict, size: int) -> list[dict]:
    return [
        dict(zip(batch, values, strict=True)) for values in zip(*(v.split(size) for v in batch.values()), strict=True)
    ]


def gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def one_batch_step(trainer, batch) -> tuple[float, dict]:
    """The reference: the loss of the whole batch at once, back-propagated."""
    image, text, logit_scale, _ = trainer(**batch)
    loss = contrastive_loss(image, text, logit_scale)
    loss.backward()
    return loss.item(), gradients(trainer)


def accumulated(trainer, micro_batches) -> tuple[float, dict]:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=len(micro_batches))
    loss, _, _ = accumulated_step(accelerator, trainer, micro_batches, lambda batch: batch)
    return loss.item(), gradients(trainer)


def assert_same_gradients(actual: dict, expected: dict) -> None:
    """float32 sums taken in another order: within 1e-4 of each tensor's largest gradient, plus 1e-7 of the largest
    of all (λ's gradients are sums with cancellation, a key bias's is zero in exact arithmetic)."""
    assert actual.keys() == expected.keys()
    largest = max(grad.abs().max().item() for grad in expected.values())
    for name, grad in expected.items():
        atol = 1e-4 * grad.abs().max().item() + 1e-7 * largest
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=atol, msg=name)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "gradient checkpointing"])
def test_four_micro_batches_of_eight_have_the_loss_and_gradients_of_one_batch_of_32(checkpointing):
    batch = global_batch()
    expected_loss, expected = one_batch_step(make_trainer(), batch)
    trainer = make_trainer()
    if checkpointing:
        trainer.model.activation_checkpointing_enable()
    loss, actual = accumulated(trainer, split(batch, MICRO_BATCH))
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert "model.logit_scale" in actual  # the temperature's gradient, counted once
    assert_same_gradients(actual, expected)
    # what accumulating each micro-batch's own loss gave: another objective (ln 8 against ln 32 at the start)
    local = make_trainer()
    local_loss = sum(contrastive_loss(*local(**micro)[:3]).item() for micro in split(batch, MICRO_BATCH)) / 4
    assert local_loss < expected_loss - 1


def test_in_bfloat16_mixed_precision_the_step_follows_one_batch():
    """Accelerate's autocast (bf16 on CPU) in both passes: the features round differently with the batch's shape, so
    the comparison is bf16's: the same loss to 1 %, gradients pointing the same way."""
    batch = global_batch()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True, mixed_precision="bf16", gradient_accumulation_steps=4)
    reference = accelerator.prepare(make_trainer())
    expected_loss, expected = one_batch_step(reference, batch)
    trainer = accelerator.prepare(make_trainer())
    loss, _, _ = accumulated_step(accelerator, trainer, split(batch, MICRO_BATCH), lambda micro: micro)
    actual = gradients(trainer)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-2)
    flat = [torch.cat([g[name].flatten() for name in expected]) for g in (actual, expected)]
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.99999  # measured 0.9999985; fp32 vs bf16: 0.9997


def test_with_dropout_both_passes_of_a_micro_batch_draw_the_same_masks():
    """The reference draws the micro-batches' dropout masks in the order the first pass does; the gradients agree
    only if the second pass of each micro-batch draws that micro-batch's masks again."""
    dropout = {"attention_dropout": 0.3}
    batch, micro_batches = global_batch(), split(global_batch(), MICRO_BATCH)
    reference = make_trainer(text=dropout, vision=dropout)
    torch.manual_seed(5)
    features = [reference(**micro) for micro in micro_batches]
    image, text = (torch.cat([f[i] for f in features]) for i in (0, 1))
    expected_loss = contrastive_loss(image, text, features[0][2])
    expected_loss.backward()
    trainer = make_trainer(text=dropout, vision=dropout)
    torch.manual_seed(5)
    loss, actual = accumulated(trainer, micro_batches)
    assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
    assert_same_gradients(actual, gradients(reference))
    # the masks are random indeed: a full batch draws others
    torch.manual_seed(5)
    assert one_batch_step(make_trainer(text=dropout, vision=dropout), batch)[0] != pytest.approx(loss, rel=1e-3)


TWO_PROCESSES = """
import sys, torch
from accelerate import Accelerator
from diffclip_lab.benchmarking.harness import peak_memory
from diffclip_lab.training.contrastive import DualEncoderForTraining, accumulated_step
from modeling_diffclip import DiffCLIPModel

folder, output = sys.argv[1:3]
accelerator = Accelerator(gradient_accumulation_steps=2)
trainer = accelerator.prepare(DualEncoderForTraining(DiffCLIPModel.from_pretrained(folder)))
batch = torch.load(f"{folder}/batch.pt")
rows = len(batch["input_ids"]) // accelerator.num_processes  # this process's rows, as two micro-batches
start = accelerator.process_index * rows
mine = {key: value[start : start + rows] for key, value in batch.items()}
micro_batches = [dict(zip(mine, values)) for values in zip(*(v.split(rows // 2) for v in mine.values()))]
loss, _, _ = accumulated_step(accelerator, trainer, micro_batches, lambda batch: batch)
grads = {name.removeprefix("module."): p.grad for name, p in trainer.named_parameters()}
if accelerator.is_main_process:
    torch.save({"loss": loss, "grads": grads}, output)
"""


@pytest.mark.slow
def test_two_processes_of_two_micro_batches_of_eight_match_one_batch_of_32(tmp_path):
    """`accelerate launch` of 2 CPU processes, DDP: the gradients every process holds after the step are those of
    the whole global batch."""
    batch = global_batch()
    make_trainer().model.save_pretrained(tmp_path / "model")
    torch.save(batch, tmp_path / "model" / "batch.pt")
    script = tmp_path / "two_processes.py"
    script.write_text(TWO_PROCESSES)
    accelerate_launch(script, tmp_path / "model", tmp_path / "result.pt", processes=2)
    result = torch.load(tmp_path / "result.pt")
    trainer = DualEncoderForTraining(DiffCLIPModel.from_pretrained(tmp_path / "model"))
    expected_loss, expected = one_batch_step(trainer, batch)
    assert result["loss"].item() == pytest.approx(expected_loss, rel=1e-5)
    assert_same_gradients(result["grads"], expected)


def test_accumulated_step_needs_far_less_memory_than_the_whole_batch():
    """Peak bytes of the tensors a step creates (`peak_memory`'s dispatch-mode tracker, on CPU): 8 micro-batches of
    16 against one batch of 128 of 96-px images, whose activations dominate (measured: 21 against 78 MiB)."""
    batch = global_batch(128)
    batch["pixel_values"] = torch.randn(128, 3, 96, 96)
    trainer = make_trainer(vision=dict(image_size=96, patch_size=8))
    accumulated_peak = peak_memory(lambda: accumulated(trainer, split(batch, 16)), "cpu")
    trainer.zero_grad(set_to_none=True)
    full_peak = peak_memory(lambda: one_batch_step(trainer, batch), "cpu")
    assert full_peak > 50 * 2**20  # the measurement sees the activations
    assert accumulated_peak < 0.4 * full_peak, (accumulated_peak / 2**20, full_peak / 2**20)
