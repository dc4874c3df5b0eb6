"""``cmgan report`` on a real tiny pipeline run (LocalDagRunner; conftest's tiny_pipeline_run,
shared with test_web): the page has every section, the MAP table holds the evaluator's numbers, the embedded figures are PNGs
identical to the files written beside the HTML, and the CLI finds runs through ML Metadata.

Runs: a features-only model and, where the raw-input pipeline exists (issue 5), a model
trained on raw images and texts, whose example queries show thumbnails and text snippets.
"""
from __future__ import annotations

import base64
import dataclasses
import glob
import io
import os
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from models.metrics import retrieval_report
from pipeline import cli
from pipeline.reporting import SECTIONS, collect, write_report

from conftest import (RAW_DEMO_PER_CLASS, TINY_DATASET, TINY_HPARAMS, TINY_RUN_KINDS,
                      TINY_RUN_RAW_HPARAMS)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RAW_PER_CLASS, RAW_CLASSES = RAW_DEMO_PER_CLASS, 8


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children, self.texts = [], []

    def text(self) -> str:
        return "".join(t if isinstance(t, str) else t.text() for t in self.texts).strip()

    def iter(self, tag=None, **attrs):
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                    child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                yield child
            yield from child.iter(tag, **attrs)

    def has_class(self, name: str) -> bool:
        return name in (self.attrs.get("class") or "").split()


class TreeBuilder(HTMLParser):
    """Just enough DOM for the assertions (the report is well-formed, void tags aside)."""

    VOID = {"meta", "img", "br", "link", "input"}

    def __init__(self):
        super().__init__()
        self.root = self.current = Node("root", [])

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        self.current.texts.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.texts.append(data)


def parse(path) -> Node:
    builder = TreeBuilder()
    with open(path, encoding="utf-8") as f:
        builder.feed(f.read())
    return builder.root


@pytest.fixture(scope="module", params=TINY_RUN_KINDS)
def pipeline_run(request, tiny_pipeline_run):
    """(kind, config, result) of the session's tiny pipeline run of that kind."""
    return (request.param, *tiny_pipeline_run(request.param))


@pytest.fixture(scope="module")
def report(pipeline_run, tmp_path_factory):
    """(data, written report, parsed page) of the latest run."""
    _, config, _ = pipeline_run
    data = collect(config.metadata_path, config.pipeline_name)
    written = write_report(data, str(tmp_path_factory.mktemp("html") / "run.html"))
    print(f"report: {written.html_path}")
    return data, written, parse(written.html_path)


def test_every_section_is_there_with_the_blessing_decision(report, pipeline_run):
    _, config, result = pipeline_run
    _, _, page = report
    assert [s.attrs["id"] for s in page.iter("section")] == list(SECTIONS)
    assert next(page.iter(id="blessing")).text().startswith("Decision: BLESSED")
    assert next(page.iter(id="blessing-reason")).text() == result.reason
    run_rows = {r.attrs["data-key"]: r.children[1].text()
                for r in next(page.iter(id="run-table")).iter("tr")}
    assert run_rows["pipeline"] == config.pipeline_name and run_rows["run"].startswith("1 (")


def test_map_table_holds_the_evaluators_numbers(report, pipeline_run):
    _, _, result = pipeline_run
    _, _, page = report
    cells = list(next(page.iter(id="map-table")).iter("td"))
    shown = {(c.attrs["data-method"], c.attrs["data-split"], c.attrs["data-metric"]):
             (float(c.attrs["data-value"]), c.text()) for c in cells if "data-metric" in c.attrs}
    expected = {(m, s, k): v for m, splits in result.evaluation["methods"].items()
                for s, values in splits.items() for k, v in values.items()}
    assert {m for m, _, _ in shown} == {"cmgan", "cca", "classifier"}
    assert set(shown) == set(expected)  # I->T, T->I, mean, all-modal and @50, val and test
    assert {k for _, _, k in shown} >= {"i2t", "t2i", "mean", "all_modal", "mean@50"}
    for key, (value, text) in shown.items():
        assert value == expected[key], key
        assert text == f"{expected[key]:.4f}", key


def test_figures_are_pngs_embedded_and_written_beside_the_html(report):
    _, written, page = report
    assert set(written.png_paths) == {"pr-curves", "training", "common-space"}
    files = {}
    for name, path in written.png_paths.items():
        assert os.path.dirname(path) == os.path.dirname(written.html_path)
        with open(path, "rb") as f:
            files[name] = f.read()
    plots = [i for i in page.iter("img") if i.has_class("plot")]
    assert len(plots) == 3
    embedded = []
    for image in plots:
        prefix = "data:image/png;base64,"
        assert image.attrs["src"].startswith(prefix)
        png = base64.b64decode(image.attrs["src"][len(prefix):], validate=True)
        assert png.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(png)) as picture:
            picture.verify()
            assert picture.format == "PNG" and min(picture.size) > 200
        embedded.append(png)
    assert sorted(embedded) == sorted(files.values())
    assert not [i for i in page.iter("img") if not i.attrs["src"].startswith("data:")]


def test_curves_and_queries_use_the_exported_model_the_evaluator_scored(report, pipeline_run):
    """The report's embeddings (serving_default on the Examples) reproduce the evaluator's
    test MAP, so its PR curves and example rankings are those of the served model."""
    data, _, _ = report
    _, _, result = pipeline_run
    test = data.embeddings["cmgan"]["test"]
    ours = retrieval_report(test.image, test.text, data.examples["test"].labels)
    for key, value in result.evaluation["methods"]["cmgan"]["test"].items():
        assert ours[key] == pytest.approx(value, abs=1e-5), key
    assert np.allclose(np.linalg.norm(test.image, axis=1), 1.0, atol=1e-4)


def test_example_queries_mark_results_of_the_query_class_as_relevant(report, pipeline_run):
    kind = pipeline_run[0]
    data, _, page = report
    queries = list(page.iter("div"))
    queries = [q for q in queries if q.has_class("query")]
    assert len([q for q in queries if q.has_class("i2t")]) == 3
    assert len([q for q in queries if q.has_class("t2i")]) == 3
    for query in queries:
        query_class = next(query.iter("p")).text().rsplit("(", 1)[1].rstrip(")")
        rows = list(next(query.iter("tbody")).iter("tr"))
        assert len(rows) == 5
        scores = [float(r.children[2].text()) for r in rows]
        assert scores == sorted(scores, reverse=True)
        for row in rows:
            result_class = row.children[1].text().rsplit("(", 1)[1].rstrip(")")
            assert row.has_class("relevant") == (result_class == query_class)
            assert ("relevant" in row.children[3].text()) == row.has_class("relevant")
        thumbnails = list(query.iter("img"))
        snippets = [c for c in query.iter("span") if c.has_class("snippet")]
        if kind == "features":  # no pixels or text to show: id and class name instead
            assert not thumbnails and not snippets
            continue
        # Raw data: the image (query or results) as a thumbnail, each text as a snippet.
        assert len(thumbnails) == (1 if query.has_class("i2t") else 5)
        assert len(snippets) == (5 if query.has_class("i2t") else 1)
        for image in thumbnails:
            png = base64.b64decode(image.attrs["src"].split(",", 1)[1], validate=True)
            with Image.open(io.BytesIO(png)) as picture:
                assert picture.format == "PNG" and picture.size == (32, 32)
                assert len(set(picture.getdata())) > 10  # real pixels, not a blank square
        assert all(len(s.text()) > 2 for s in snippets)


def split_sizes(kind: str) -> dict[str, int]:
    if kind == "raw":
        return {s: n * RAW_CLASSES for s, n in RAW_PER_CLASS.items()}
    return {s: TINY_DATASET[f"{s}_per_class"] * TINY_DATASET["num_classes"]
            for s in ("train", "val", "test")}


def test_common_space_shows_what_the_trainer_left(report, pipeline_run):
    data, _, page = report
    panels = next(page.iter(id="space-panels")).text()
    if "image_before" in data.common_space:  # the Trainer wrote common_space.npz
        assert panels == "before training, after training"
    else:
        assert panels == "after training"
    assert len(data.common_space["labels"]) == min(split_sizes(pipeline_run[0])["val"], 1000)


def test_model_card_names_the_data_splits_and_hyperparameters(report, pipeline_run):
    kind = pipeline_run[0]
    _, _, page = report
    rows = {r.attrs["data-key"]: r.children[1].text()
            for r in next(page.iter(id="data-table")).iter("tr")}
    assert rows["dataset"] == kind
    assert rows["pairs per split"] == ", ".join(f"{s} {n}" for s, n in split_sizes(kind).items())
    hparams = {r.attrs["data-key"]: r.children[1].text()
               for r in next(page.iter(id="hparams-table")).iter("tr")}
    for key, value in {**TINY_HPARAMS, **(TINY_RUN_RAW_HPARAMS if kind == "raw" else {})}.items():
        assert hparams[key] == str(value), key
    card = next(page.iter("section", id="model-card")).text()
    for heading in ("Intended use", "Limitations", "Metrics"):
        assert heading in card


def test_tensorboard_command_points_at_the_trainers_event_files(report):
    data, _, page = report
    command = next(next(page.iter("section", id="tensorboard")).iter("code")).text()
    assert command == f".venv/bin/tensorboard --logdir {data.model_run_dir}"
    logdir = command.split("--logdir ", 1)[1]
    assert glob.glob(os.path.join(logdir, "train", "events.out.tfevents.*"))
    assert glob.glob(os.path.join(logdir, "validation", "events.out.tfevents.*"))


def test_cli_finds_the_run_in_ml_metadata(pipeline_run, tmp_path, capsys):
    _, config, result = pipeline_run
    output = tmp_path / "cli" / "report.html"
    flags = ["--pipeline-root", config.pipeline_root, "--pipeline-name", config.pipeline_name]
    assert cli.main(["report", *flags, "--run", "1", "--output", str(output),
                     "--top-k", "2", "--queries", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"report written to {output}" in printed
    page = parse(output)
    assert len([q for q in page.iter("div") if q.has_class("query")]) == 2
    assert next(page.iter(id="blessing-reason")).text() == result.reason
    assert sorted(os.listdir(output.parent)) == [
        "report-common-space.png", "report-pr-curves.png", "report-training.png", "report.html"]

    assert cli.main(["report", *flags, "--run", "7", "--output", str(tmp_path / "x.html")]) == 1
    error = capsys.readouterr().err
    assert f"no run '7' of {config.pipeline_name}; runs: 1: " in error
    assert not (tmp_path / "x.html").exists()


def test_a_refit_model_is_called_so_beside_the_map_table_and_the_common_space(report):
    """The pipeline run here does not refit: no note. A refit model's report says that its
    validation pairs were training data (models/training.py, refit_on_validation)."""
    data, _, page = report
    assert "refit" not in next(page.iter(id="map")).text()
    from pipeline.reporting import _refit_note  # pylint: disable=import-outside-toplevel

    assert _refit_note(data) == ""
    refit = dataclasses.replace(data, training={**data.training, "refit_epochs": 7})
    assert "refit on train + validation for the 7 epochs validation chose" in _refit_note(refit)
