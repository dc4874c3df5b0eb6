"""``cmgan report``: one self-contained HTML page about one pipeline run.

``write_report(data, output)`` renders the ``collect.ReportData`` of a run (see
``collect.collect``) to ``output`` and writes each figure as a PNG next to it.
"""
from __future__ import annotations

import dataclasses
import datetime
import glob
import os
from typing import Any

import numpy as np

from models.metrics import METHOD_LABELS, pr_curves
from pipeline.reporting import plots, render
from pipeline.reporting.collect import ReportData, collect  # noqa: F401  (re-exported)
from serving.web_pages import esc

SECTIONS = ("summary", "map", "pr-curves", "training", "common-space", "queries", "model-card",
            "tensorboard")


@dataclasses.dataclass(frozen=True)
class WrittenReport:
    html_path: str
    png_paths: dict[str, str]  # figure name -> file


def _ranked(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows per query by cosine (ties keep gallery order, as models.metrics)."""
    scores = queries @ gallery.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def pick_queries(labels: np.ndarray, count: int) -> list[int]:
    """The first item of each of the first ``count`` classes (then more items, if fewer
    classes), so the examples show different classes and are reproducible."""
    chosen = []
    for label in sorted(set(labels.tolist())):
        chosen.append(int(np.flatnonzero(labels == label)[0]))
        if len(chosen) == count:
            return chosen
    extra = [i for i in range(len(labels)) if i not in chosen]
    return chosen + extra[:count - len(chosen)]


def _summary(data: ReportData) -> str:
    ev = data.evaluation
    verdict = ('<span class="blessed">BLESSED</span>' if ev.get("blessed") else
               '<span class="not-blessed">NOT BLESSED</span>')
    pushed = (f"pushed as version <code>{esc(data.pushed.get('pushed_version'))}</code> to "
              f"<code>{esc(data.pushed.get('pushed_destination'))}</code>"
              if data.pushed.get("pushed") == 1 else "not pushed")
    started = datetime.datetime.fromtimestamp(data.run.started, datetime.timezone.utc)
    search = (f"; search companion <code>{esc(data.search.get('pushed_destination'))}</code>"
              f" ({esc(data.search.get('gallery_size', '?'))} gallery items)"
              if data.search.get("pushed") == 1 else "")
    return (f'<p id="blessing">Decision: {verdict} &mdash; <span id="blessing-reason">'
            f'{esc(ev.get("reason", ""))}</span></p>'
            f"<p>Selection: {esc(ev.get('selection', ''))}, threshold "
            f"{esc(ev.get('map_threshold'))}, margin {esc(ev.get('map_margin'))}. "
            f"Model {pushed}{search}.</p>"
            + render.key_value_table([
                ("pipeline", data.pipeline_name),
                ("run", f"{data.run.number} ({data.run.run_id})"),
                ("started", started.strftime("%Y-%m-%d %H:%M:%S UTC")),
                ("candidate model", data.model_uri),
                ("compared with blessed model", ev.get("baseline_model") or "none yet"),
                ("ML Metadata", data.metadata_path)], "run-table"))


def _model_card(data: ReportData) -> str:
    d, training, ev = data.data, data.training or {}, data.evaluation
    hparams = training.get("hparams", {})
    sizes = ", ".join(f"{s} {n}" for s, n in d["split_sizes"].items() if n is not None)
    features = (f"raw images ({d['image_size']}x{d['image_size']} RGB)" if d.get("image_size")
                else f"{d.get('image_dim')}-d image features")
    texts = ("raw UTF-8 text" if any(data.examples["test"].text_values)
             else f"{d.get('text_dim')}-d text features")
    classes = d.get("class_names") or []
    test = ev["methods"]["cmgan"].get("test", {})
    data_rows = [
        ("dataset", d.get("dataset")), ("data folder", d.get("data_dir") or "-"),
        ("pairs per split", sizes),
        ("classes", f"{d.get('num_classes')}: {', '.join(classes[:30])}"
                    + (" ..." if len(classes) > 30 else "")),
        ("inputs", f"{features}; {texts}"),
    ]
    if d.get("spans"):
        data_rows.append(("spans (trained on / evaluated on)",
                          f"{d['spans']} / {d.get('eval_span')}"))
    model_rows = [
        ("architecture", "CM-GAN (Peng & Qi 2019): per-modality cross-modal autoencoders "
                         "with a shared encoder layer, intra- and inter-modality discriminators"),
        ("common space", f"{hparams.get('common_dim', '?')}-d, L2-normalised; cosine ranking"
                         + ("; retrieval vectors also hold the class posteriors"
                            if hparams.get("retrieval_space") == "common_and_label" else "")
                         + (f"; a seed ensemble of {hparams['ensemble_members']} CM-GANs "
                            "(their unit vectors concatenated: the mean of their cosines)"
                            if hparams.get("ensemble_members", 1) > 1 else "")),
        ("training", f"{training.get('epochs', '?')} epochs, best epoch "
                     f"{training.get('best_epoch', '?')} on validation mean MAP@all, strategy "
                     f"{training.get('strategy', '?')}"
                     + (f", warm started from {training['warm_started_from']}"
                        if training.get("warm_started_from") else "")),
        ("test MAP@all", ", ".join(f"{k} {test[k]:.4f}" for k in render.MAP_KEYS if k in test)),
        ("exported SavedModel", data.model_dir),
    ]
    card = (f"<h3>Model</h3>{render.key_value_table(model_rows)}"
            f"<h3>Data</h3>{render.key_value_table(data_rows, 'data-table')}"
            "<h3>Metrics</h3><p>MAP@all over the whole ranked list and MAP@50 (precision "
            "averaged over the relevant items retrieved in the top 50), relevance = same class "
            "label, for image&rarr;text, text&rarr;image, their mean, and all-modal retrieval "
            "(either modality queries both). The candidate is blessed on the validation "
            "split only; test numbers are reported, never used for a choice.</p>"
            "<h3>Intended use</h3><p>Cross-modal retrieval within the training data's domain "
            "and class vocabulary: find texts for an image and images for a text, ranked by "
            "cosine similarity of the common representations, served by TF Serving "
            "(<code>cmgan serve</code>) with a precomputed gallery.</p>"
            "<h3>Limitations</h3><ul>"
            "<li>Relevance is class-level (same label), so MAP says how well classes are "
            "separated, not whether the exact matching pair is found.</li>"
            "<li>Queries must come from the same input distribution: "
            + ("the same image size and text vocabulary as the training data"
               if d.get("image_size") else
               "the same feature extractors and dimensions as the training data (this model "
               "takes features, not raw images or text)")
            + "; content of other classes or domains gets embeddings of no known quality.</li>"
            f"<li>Figures come from {esc(d['split_sizes'].get('test') or '?')} test pairs; "
            "small splits give noisy MAPs.</li>"
            + ("<li>The demo dataset is synthetic: its numbers say nothing about real data."
               "</li>" if str(d.get("dataset", "")).startswith("demo") else "")
            + "</ul>")
    if hparams:
        card += ("<h3>Hyperparameters</h3>"
                 + render.key_value_table(sorted(hparams.items()), "hparams-table"))
    return card


def _tensorboard(data: ReportData) -> str:
    if not data.model_run_dir:
        return "<p>The Trainer recorded no model_run artifact.</p>"
    events = glob.glob(os.path.join(data.model_run_dir, "*", "events.out.tfevents.*"))
    folders = sorted({os.path.basename(os.path.dirname(e)) for e in events})
    found = (f"{len(events)} event file(s) in {', '.join(folders)}" if events
             else "no event files found")
    return (f"<p>Training logs (Keras TensorBoard callback: losses per epoch, validation MAP): "
            f"{esc(found)}.</p><pre><code>.venv/bin/tensorboard --logdir "
            f"{esc(data.model_run_dir)}</code></pre>")


def _refit_note(data: ReportData) -> str:
    """What a reader must know of a model refit on train + validation (models/training.py)."""
    epochs = (data.training or {}).get("refit_epochs")
    if not epochs:
        return ""
    return (f" The model was refit on train + validation for the {int(epochs)} epochs "
            "validation chose (so were the baselines): its validation pairs were training data, "
            "and its validation rows are the selection run's.")


def write_report(data: ReportData, output: str, top_k: int = 5,
                 num_queries: int = 3) -> WrittenReport:
    """Writes ``output`` (HTML, figures embedded) and ``<stem>-<figure>.png`` beside it."""
    output = os.path.abspath(output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    stem = os.path.splitext(output)[0]
    figures: dict[str, bytes] = {}
    sections: list[tuple[str, str, str]] = []
    methods = data.evaluation["methods"]

    sections.append(("summary", "Run and blessing decision", _summary(data)))
    sections.append(("map", "Mean average precision (MAP)",
                     render.map_table(methods) + "<p class=\"muted\">From the "
                     "RetrievalEvaluator's retrieval_metrics.json: CM-GAN (the candidate), the "
                     "last blessed model when there was one, and the CCA and classifier "
                     "baselines fitted on the same training split." + _refit_note(data)
                     + "</p>"))

    test = data.examples["test"]
    curves = {m: pr_curves(e["test"].image, e["test"].text, test.labels)
              for m, e in data.embeddings.items() if "test" in e}
    maps = {m: methods.get(m, {}).get("test", {}) for m in curves}
    figures["pr-curves"] = plots.pr_curves_png(curves, maps, METHOD_LABELS)
    sections.append(("pr-curves", "Precision-recall curves (test)",
                     render.img(figures["pr-curves"], "precision-recall curves")
                     + f"<p class=\"muted\">Mean precision and recall at ranks 1..N over the "
                       f"{len(test)} test queries of each task.</p>"))

    history = (data.training or {}).get("history") or []
    if history:
        figures["training"] = plots.training_curves_png(history,
                                                        data.training.get("best_epoch"))
        body = render.img(figures["training"], "training curves")
    else:
        body = "<p>No training history (training_report.json) in the Trainer's model_run.</p>"
    sections.append(("training", "Training curves", body))

    space = data.common_space
    panels = [(f"{title} training", space[f"image_{key}"], space[f"text_{key}"])
              for key, title in (("before", "before"), ("after", "after"))
              if f"image_{key}" in space and f"text_{key}" in space]
    figures["common-space"] = plots.common_space_png(
        panels, np.asarray(space["labels"]), data.data.get("class_names") or [])
    sections.append(("common-space", "Common space (PCA, 2-D)",
                     render.img(figures["common-space"], "common space projection")
                     + f"<p class=\"muted\">Panels: <span id=\"space-panels\">"
                       f"{esc(', '.join(p[0] for p in panels))}</span>. "
                       f"{len(space['labels'])} items; colour = class, "
                       f"circle = image, triangle = text. Source: "
                       f"{esc(data.common_space_source)}.{_refit_note(data)}</p>"))

    emb = data.embeddings["cmgan"]["test"]
    queries = pick_queries(test.labels, num_queries)
    html_parts = []
    for direction, q_vectors, g_vectors, title in (
            ("i2t", emb.image, emb.text, "Image &rarr; text"),
            ("t2i", emb.text, emb.image, "Text &rarr; image")):
        ranked, scores = _ranked(q_vectors[queries], g_vectors, top_k)
        pairs = [("test", q, ranked[i], scores[i]) for i, q in enumerate(queries)]
        html_parts.append(f"<h3>{title}</h3>" + render.example_queries(data, pairs, direction))
    sections.append(("queries", "Example queries (test split)",
                     f"<p class=\"muted\">Top {top_k} of the other modality among the "
                     f"{len(test)} test items; a green row has the query's class.</p>"
                     + "".join(html_parts)))
    sections.append(("model-card", "Model card", _model_card(data)))
    sections.append(("tensorboard", "TensorBoard", _tensorboard(data)))

    png_paths = {}
    for name, png in figures.items():
        png_paths[name] = f"{stem}-{name}.png"
        with open(png_paths[name], "wb") as f:
            f.write(png)
    title = f"CM-GAN retrieval report: {data.pipeline_name}, run {data.run.number}"
    with open(output, "w", encoding="utf-8") as f:
        f.write(render.page(title, sections, subtitle=f"dataset {data.data.get('dataset')}"))
    return WrittenReport(html_path=output, png_paths=png_paths)


def build_report(metadata_path: str, pipeline_name: str, output: str, run: str = "LATEST",
                 **options: Any) -> WrittenReport:
    return write_report(collect(metadata_path, pipeline_name, run), output, **options)
