# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""The tables of docs/performance.md are what benchmarks/docs_tables.py writes from the committed result files, and
every committed result file says which command wrote it, when, on what machine and with what software."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, load_script

from diffclip_lab.benchmarking.tables import TABLES, render, tables_in, update
from diffclip_lab.core.errors import UserError


PAGE = REPO_ROOT / "docs" / "performance.md"
RESULTS = REPO_ROOT / "docs" / "results"
docs_tables = load_script("benchmarks/docs_tables.py")


def test_the_page_marks_every_table_once():
    assert sorted(tables_in(PAGE.read_text())) == sorted(TABLES)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_table_is_what_the_generator_writes_from_the_committed_results(name):
    assert tables_in(PAGE.read_text())[name] == render(name, RESULTS), (
        f"table {name} of docs/performance.md differs from its results: run python benchmarks/docs_tables.py"
    )


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda path: path.name)
def test_each_committed_result_file_records_its_command_date_machine_and_versions(path):
    payload = json.loads(path.read_text())
    environment = payload["environment"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", environment["date"])
    assert environment["cpu"]
    assert environment["cpu_threads"] >= 1
    assert all(environment[key] for key in ("python", "torch", "transformers"))
    # the command runs a script of the repository, the one the file says wrote it, into this very file
    words = payload["command"].split()
    script = next(word for word in words if word.startswith("benchmarks/"))
    assert (REPO_ROOT / script).is_file()
    assert script == f"benchmarks/{payload['script']}.py"
    if "--output" in words:
        assert words[words.index("--output") + 1] == f"docs/results/{path.name}"
    if "machine" in payload:  # the benchmarks that time things record how busy the machine was
        assert payload["machine"]["cpus"] >= 1
        assert len(payload["machine"]["load_average"]) == 3


def test_every_table_names_the_files_and_commands_it_comes_from():
    page = tables_in(PAGE.read_text())
    for name, (files, _) in TABLES.items():
        for file in files:
            command = json.loads((RESULTS / f"{file}.json").read_text())["command"]
            assert f"[`results/{file}.json`](results/{file}.json): `{command}`" in page[name]


def test_a_hand_edited_number_is_found_and_rewritten(tmp_path, capsys):
    page = tmp_path / "performance.md"
    text = PAGE.read_text()
    body = tables_in(text)["onnx"]
    row = next(line for line in body.splitlines() if line.startswith("| vit-b-16 |"))
    edited_row = re.sub(r"\| (\d+\.\d\d) \(", lambda m: f"| {float(m[1]) + 0.01:.2f} (", row, count=1)
    assert edited_row != row
    page.write_text(text.replace(row, edited_row))
    arguments = ["--page", str(page), "--results", str(RESULTS)]
    assert docs_tables.main([*arguments, "--check"]) == 1
    assert "table onnx differs from its results" in capsys.readouterr().out
    assert docs_tables.main(arguments) == 0
    assert page.read_text() == text
    assert docs_tables.main([*arguments, "--check"]) == 0


def test_a_missing_measurement_is_shown_as_not_available_never_as_zero(tmp_path):
    model = json.loads((RESULTS / "model.json").read_text())
    model["ratios"] = [
        r for r in model["ratios"] if not (r["shape"] == "vit-b-16" and r["denominator"] == "reference")
    ]
    (tmp_path / "model.json").write_text(json.dumps(model))
    rows = [line for line in render("model", tmp_path).splitlines() if line.startswith("| vit-b-16 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        # diffclip-sdpa / reference: time and memory; diffclip-eager / reference
        assert [cells[7], cells[8], cells[10]] == ["n/a", "n/a", "n/a"]
        assert cells[5] != "n/a"


def test_a_result_file_without_its_command_is_refused(tmp_path):
    payload = json.loads((RESULTS / "accumulation.json").read_text())
    del payload["command"]
    (tmp_path / "accumulation.json").write_text(json.dumps(payload))
    with pytest.raises(UserError, match="without command"):
        render("accumulation", tmp_path)
    with pytest.raises(UserError, match="no such table"):
        update("<!-- table: nonsense -->\n<!-- /table -->", RESULTS)


def test_a_benchmark_run_as_a_program_records_its_command_and_machine(tmp_path):
    output = tmp_path / "accumulation.json"
    arguments = ["--shapes", "tiny", "--global_batch_size", "8", "--micro_batches", "2", "--repeats", "1"]
    arguments += ["--warmup", "0", "--output", str(output)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "benchmarks/bench_accumulation.py", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        check=True,
        capture_output=True,
    )
    payload = json.loads(output.read_text())
    assert payload["command"] == "OMP_NUM_THREADS=1 python benchmarks/bench_accumulation.py " + " ".join(arguments)
    assert payload["environment"]["cpu_threads"] == 1
    assert payload["machine"]["cpus"] == os.cpu_count()
    assert len(payload["machine"]["load_average"]) == 3
